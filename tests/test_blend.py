"""Per-turn blending: seeded draws keyed by (session, turn), conversations chained from benchmark
questions, and the offline replay of blends beside single models and the learned blend."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import make_frames

from herd.blend import (
    Blend, BlendResult, blend_pick, build_conversations, conversation_texts, evaluate_blends, running_text,
)
from herd.data import Outcomes
from herd.policies import ArgMax
from herd.routers import Router, make_router

MODELS = ["always", "half", "never"]
COSTS = {"always": 0.01, "half": 0.001, "never": 0.0001}
BLENDS = ("uniform blend", "weighted blend", "learned blend (history)", "learned blend (turn only)")


def row(result: BlendResult, method: str) -> dict:
    (r,) = [r for r in result.rows if r["method"] == method]
    return r


def known_table(n: int = 240):
    """'always' is right on every question, 'half' on even ones, 'never' on none; real costs."""
    queries = pd.DataFrame({"source": "toy", "benchmark": "known", "qid": [f"q{i}" for i in range(n)],
                            "text": [f"question {i} about item {i % 7}" for i in range(n)]})
    right = {"always": lambda i: 1.0, "half": lambda i: float(i % 2 == 0), "never": lambda i: 0.0}
    outcomes = pd.DataFrame([{"source": "toy", "benchmark": "known", "qid": f"q{i}", "model": mo,
                              "correct": right[mo](i), "cost_usd": COSTS[mo]} for i in range(n) for mo in MODELS])
    return Outcomes.from_frames(queries, outcomes).matrix(MODELS)


class KeywordRouter(Router):
    """Sends any text mentioning 'alpha' to the first model, everything else to the second."""

    def _fit(self, texts, y):
        pass

    def _predict(self, texts):
        hit = np.array([["alpha" in t] for t in texts], float)
        return np.hstack([0.2 + 0.6 * hit, 0.8 - 0.6 * hit, np.full_like(hit, 0.1)])


# ---- draws --------------------------------------------------------------------------------
def test_a_draw_is_fixed_by_session_and_turn():
    assert [blend_pick(MODELS, None, "s-1", t) for t in range(20)] == [blend_pick(MODELS, None, "s-1", t) for t in range(20)]
    assert blend_pick(MODELS, None, 7, 3) == blend_pick(MODELS, None, "7", 3)
    by_session = [tuple(blend_pick(MODELS, None, f"s-{i}", t) for t in range(5)) for i in range(50)]
    assert len(set(by_session)) > 30
    assert Counter(blend_pick(MODELS, None, f"s-{i}", 1) for i in range(600)).keys() == {0, 1, 2}


def test_weighted_draws_follow_the_weights():
    counts = Counter(blend_pick(MODELS, np.array([3.0, 1.0, 0.0]), f"w-{i}", 2) for i in range(4000))
    assert counts[2] == 0
    assert counts[0] / 4000 == pytest.approx(0.75, abs=0.03)
    for bad in ([0, 0, 0], [1, -1, 1], [1, 1]):
        with pytest.raises(ValueError):
            blend_pick(MODELS, np.array(bad, float), "s", 0)


def test_gateway_blend_config_and_pick():
    assert Blend.is_spec("blend") and Blend.is_spec({"name": "blend"}) and not Blend.is_spec("argmax")
    assert Blend.from_config("blend").label == "blend:uniform"
    b = Blend.from_config({"name": "blend", "weights": {"always": 1, "never": 0}})
    assert b.models == ["always", "never"] and b.label == "blend:weighted"
    name, reason = b.pick(["always", "never"], "s", 3)
    assert name == "always" and "turn 3" in reason
    assert b.pick(["never"], "s", 3)[0] == "never"  # the only eligible model, though weighted zero
    for bad in ({"name": "blend", "model": ["a"]}, {"name": "blend", "models": ["a", "b"], "weights": {"a": 1}},
                {"name": "blend", "weights": {"a": -1}}):
        with pytest.raises(ValueError):
            Blend.from_config(bad)


# ---- conversations ------------------------------------------------------------------------
def test_conversations_are_disjoint_chunks_of_a_permutation():
    c = build_conversations(103, 4, seed=1)
    assert c.shape == (25, 4) and len(set(c.ravel())) == 100 and c.max() < 103
    np.testing.assert_array_equal(c, build_conversations(103, 4, seed=1))
    assert not np.array_equal(c, build_conversations(103, 4, seed=2))
    assert build_conversations(3, 4, seed=0).shape == (0, 4)


def test_the_router_text_carries_the_last_three_user_turns():
    assert running_text(["a", "b", "c", "d"]) == "b\nc\nd"
    texts = ["alpha one", "beta two", "gamma three", "delta four", "and next?"]
    out = conversation_texts(texts, np.array([[0, 1, 2, 3], [1, 4, 2, 0]]))
    assert out[0].tolist() == ["alpha one", "alpha one\nbeta two", "alpha one\nbeta two\ngamma three",
                               "beta two\ngamma three\ndelta four"]
    assert out[1, 1] == "beta two\nand next?"


def test_the_history_changes_the_learned_choice():
    """The same follow-up goes where the conversation has been."""
    texts = ["tell me about alpha", "tell me about beta", "and next?"]
    convs = np.array([[0, 2], [1, 2]])
    running = conversation_texts(texts, convs)
    assert running[0, 1] != running[1, 1]
    router = KeywordRouter().fit(known_table(20))
    choice = ArgMax().choose(router.predict_scores(list(running[:, 1])))
    assert choice.tolist() == [0, 1]
    alone = ArgMax().choose(router.predict_scores([texts[2]] * 2))
    assert alone.tolist() == [1, 1]


# ---- offline replay -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def replay() -> BlendResult:
    return evaluate_blends(known_table(), make_router("logistic"), turns=4, folds=3, seed=0)


def test_replay_figures_on_a_table_with_known_answers(replay):
    assert replay.n_conversations == 60 and replay.models == MODELS
    assert row(replay, "always")["per_turn_accuracy"] == [1.0] * 4
    assert row(replay, "never")["per_turn_accuracy"] == [0.0] * 4
    assert row(replay, "half")["accuracy"] == pytest.approx(0.5)
    assert row(replay, "always")["cost_usd"] == pytest.approx(0.01) and row(replay, "always")["cost_coverage"] == 1.0
    assert row(replay, "best single (train)")["accuracy"] == 1.0
    for learned in ("learned blend (history)", "learned blend (turn only)"):
        assert row(replay, learned)["accuracy"] == 1.0 and row(replay, learned)["switch_rate"] == 0.0
    assert row(replay, "uniform blend")["accuracy"] == pytest.approx(0.5, abs=0.1)
    assert row(replay, "uniform blend")["switch_rate"] == pytest.approx(2 / 3, abs=0.1)
    weighted = [r for r in replay.log_rows if r["method"] == "weighted blend"]
    assert "never" not in {r["model"] for r in weighted}  # no training accuracy, (next to) no weight
    assert {r["kind"] for r in replay.rows} == {"single", "best-single", "blend"}


def test_the_log_has_every_turn_of_every_blend(replay):
    assert len(replay.log_rows) == 60 * 4 * len(BLENDS)
    assert {r["method"] for r in replay.log_rows} == set(BLENDS)
    first = replay.log_rows[0]
    assert set(first) == {"fold", "conversation", "turn", "qid", "method", "model", "correct", "cost_usd"}
    assert first["turn"] == 1 and first["cost_usd"] == COSTS[first["model"]]
    uniform = [r for r in replay.log_rows if r["method"] == "uniform blend"]
    # A logged turn replays to its draw, numbered from 1 as the gateway counts user turns.
    assert all(MODELS[blend_pick(MODELS, None, r["conversation"], r["turn"])] == r["model"] for r in uniform)
    json.dumps(replay.to_json())


def test_replay_is_reproducible(replay):
    again = evaluate_blends(known_table(), make_router("logistic"), turns=4, folds=3, seed=0)
    assert again.to_json() == replay.to_json() and again.log_rows == replay.log_rows
    other = evaluate_blends(known_table(), make_router("logistic"), turns=4, folds=3, seed=1)
    assert other.log_rows != replay.log_rows


def test_given_weights_and_a_learned_blend_on_topics():
    m = Outcomes.from_frames(*make_frames()).matrix()
    r = evaluate_blends(m, make_router("logistic"), turns=3, folds=3, weights={"math-7b": 1.0})
    assert {x["model"] for x in r.log_rows if x["method"] == "weighted blend"} == {"math-7b"}
    # Topic specialists: reading the question beats the best single model.
    assert row(r, "learned blend (turn only)")["accuracy"] > row(r, "best single (train)")["accuracy"]
    with pytest.raises(ValueError):
        evaluate_blends(m, make_router("logistic"), weights={"nobody": 1.0})


def test_a_policy_that_needs_tuning_is_tuned_inside_the_training_fold():
    from herd.policies import SafeArgMax

    r = evaluate_blends(known_table(), make_router("logistic"), turns=2, folds=3, policy=SafeArgMax())
    assert row(r, "learned blend (history)")["accuracy"] == 1.0  # the safe policy's anchor is 'always'
    assert row(evaluate_blends(known_table(), make_router("logistic"), turns=1, folds=3), "uniform blend")[
        "switch_rate"] is None  # one turn: nothing to switch


def test_eval_replays_conversations_into_the_report(tmp_path, dataset_dir):
    from typer.testing import CliRunner

    from herd.cli import app

    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["eval", str(dataset_dir), "--router", "logistic", "--policy", "argmax", "--no-sweep",
                                 "--folds", "3", "--conversations", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "conversations of 3 turns" in r.output and "learned blend (history)" in r.output
    assert (out / "toy-mix-blends.png").exists() and "Conversations: 30 of 3 turns" in (out / "report.html").read_text()
    turns = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    assert len(turns) == 30 * 3 * len(BLENDS) and turns[0]["source"] == "toy"
    bench = json.loads((out / "metrics.json").read_text())["benchmarks"][0]
    assert bench["blends"]["router"] == "logistic" and bench["blends"]["turns"] == 3
