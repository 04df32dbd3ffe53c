import json

import numpy as np
import pandas as pd
import pytest

from herd import metrics
from herd.data import Outcomes
from herd.evaluation import KINDS, evaluate
from herd.report import write_report

CONTRACT = {"source", "benchmark", "method", "kind", "accuracy", "cost_usd", "cost_estimated",
            "latency_s", "n", "gap_closed", "best_single"}


@pytest.fixture
def result(dataset_dir):
    return evaluate(Outcomes.load(dataset_dir), ["knn-tfidf", "logistic"], folds=3, seed=0)


def test_rows_cover_every_baseline(result):
    (b,) = result.benchmarks
    kinds = {r.kind for r in b.rows}
    assert kinds == set(KINDS) - {"vote"}  # no per-model answers in this table
    assert "majority vote and agreement: not computed" in b.notes[0]
    assert sum(r.kind == "single" for r in b.rows) == 3
    assert all(r.n == 90 for r in b.rows)


def test_figures_agree_with_the_metric_functions(dataset_dir, result):
    (b,) = result.benchmarks
    m = Outcomes.load(dataset_dir).matrix(b.models)
    assert b.row("oracle").accuracy == pytest.approx(metrics.oracle_accuracy(m.labels))
    assert b.row("random").accuracy == pytest.approx(m.labels.mean())
    for j, name in enumerate(b.models):
        assert b.row("single", name).accuracy == pytest.approx(m.labels[:, j].mean())
    best = b.row("best-single")
    assert best.best_single == "big-70b" and best.gap_closed == pytest.approx(0.0)
    for r in b.rows:
        if r.kind == "router":
            expected = metrics.gap_closed(r.accuracy, best.accuracy, b.row("oracle").accuracy)
            assert r.gap_closed == pytest.approx(expected)
            assert r.accuracy > best.accuracy  # topic-specialists: routing must pay off here


def test_cost_notes(result):
    (b,) = result.benchmarks
    assert b.unpriced_models == []
    assert set(b.estimated_cost_models) == {"big-70b", "hist-7b", "math-7b"}
    assert all(r.cost_estimated for r in b.rows if r.kind == "single")
    for r in b.rows:
        if r.kind == "router":
            assert r.aiq is not None and len(b.curves[r.method.split(" ")[0]]) > 5


def test_best_single_is_chosen_on_training_folds(frames):
    """A model best overall but not on a fold's training part must not be picked for that fold."""
    q, o, m = frames
    ev = evaluate(Outcomes.from_frames(q, o, m), ["knn-tfidf"], folds=3, seed=0, sweep=False)
    (b,) = ev.benchmarks
    assert len(b.best_single_by_fold) == 3
    assert b.row("best-on-test").accuracy >= b.row("best-single").accuracy


def test_majority_vote_when_answers_exist(frames):
    q, o, m = frames
    o = o.copy()
    o["answer"] = np.where(o.correct == 1, "a", "b")
    ev = evaluate(Outcomes.from_frames(q, o, m), ["knn-tfidf"], folds=3, sweep=False)
    vote = ev.benchmarks[0].row("vote", "majority vote (all models)")
    y = Outcomes.from_frames(q, o, m).matrix().labels
    right, wrong = y.sum(axis=1), (1 - y).sum(axis=1)
    # Every right answer is "a", every wrong one "b": the vote is right where "a" wins (ties go either way).
    assert (right > wrong).mean() <= vote.accuracy <= (right >= wrong).mean()
    assert vote.cost_usd == pytest.approx(np.nansum(Outcomes.from_frames(q, o, m).matrix().cost, axis=1).mean())


def test_metrics_json_contract_and_report(tmp_path, dataset_dir, result):
    written = write_report(result, tmp_path / "out")
    doc = json.loads(written["metrics"].read_text())
    assert doc["folds"] == 3 and doc["seed"] == 0 and doc["dataset"]
    assert doc["results"] and all(CONTRACT <= set(r) for r in doc["results"])
    assert {r["kind"] for r in doc["results"]} <= set(KINDS)
    assert all(r["best_single"] == "big-70b" for r in doc["results"])
    assert all(r["gap_closed"] is not None for r in doc["results"] if r["kind"] == "router")
    assert doc["schema_version"] >= 2 and doc["herd_version"] and doc["created"].endswith("Z")
    assert doc["data_fingerprint"] == result.fingerprint and len(doc["data_fingerprint"]) == 16
    assert doc["benchmarks"][0]["fingerprint"] == Outcomes.load(dataset_dir).matrix().fingerprint()
    html = written["report"].read_text()
    assert "data:image/png;base64," in html and "toy / mix" in html
    assert "<p class='headline'>routing buys" in html
    assert "<th>owned %</th>" in html  # open and closed models in the pool
    assert "ArgMax()" not in html and "policies: argmax." in html
    assert (tmp_path / "out" / "toy-mix-cost-accuracy.png").stat().st_size > 1000
    assert (tmp_path / "out" / "toy-mix-models.png").stat().st_size > 1000


def _rows(best, *routed):
    """Method rows on a made-up benchmark: the best single model, then (method, accuracy, cost) routed."""
    from herd.evaluation import MethodResult

    def row(method, kind, acc, cost):
        return MethodResult("s", "b", method, kind, acc, cost, False, None, 100, None, "strong")

    return [row("oracle", "oracle", 0.99, 0.1), row("best single (train): strong", "best-single", *best),
            *(row(m, "router", a, c) for m, a, c in routed)]


@pytest.mark.parametrize("routed, expected", [
    ([("r (argmax)", 0.92, 1.0)], "routing buys: +2.00 pt accuracy with r (argmax) (92.00%) at 100% of its cost "
                                   "vs the best single model strong (90.00%, $1)"),
    ([("r (budget:0.3)", 0.898, 0.3)], "routing buys: 70% lower cost with r (budget:0.3) (-0.20 pt) vs the best"),
    ([("r (argmax)", 0.93, 1.2), ("agree", 0.90, 0.25)],
     "routing buys: +3.00 pt accuracy with r (argmax) (93.00%) at 120% of its cost; 75% lower cost with agree"),
    ([("r (safe)", 0.90, 1.0), ("r (budget:0.3)", 0.885, 0.3)],
     "routing buys nothing here vs the best single model strong (90.00%, $1): no routed method gains over 0.5 pt "
     "or matches it within 0.5 pt for less; the cheapest within 2 pt, r (budget:0.3), -1.50 pt at 30% of its cost"),
    ([("r (safe)", 0.90, 1.0)], "routing buys nothing here vs the best single model strong (90.00%, $1): no routed "
                                "method gains over 0.5 pt or matches it within 0.5 pt for less; the most accurate, "
                                "r (safe), +0.00 pt at 100% of its cost"),
    ([("r (argmax)", 0.90, None)], "routing buys nothing here"),
])
def test_the_headline_says_what_routing_buys_or_nothing(routed, expected):
    from herd.evaluation import BenchmarkResult
    from herd.report import headline

    b = BenchmarkResult("s", "b", 100, ["strong"], _rows((0.90, 1.0), *routed), [], [], ["strong"])
    assert headline(b).startswith(expected), headline(b)


def test_results_convert_to_frames_and_reprs_stay_short(result):
    frame = result.to_frame()
    (b,) = result.benchmarks
    assert len(frame) == len(b.rows) and CONTRACT <= set(frame.columns)
    assert frame.loc[frame["kind"] == "best-single", "best_single"].item() == "big-70b"
    assert b.to_frame()["method"].tolist() == [r.method for r in b.rows]
    assert repr(b) == f"BenchmarkResult(toy/mix: 90 queries, 3 models, {len(b.rows)} methods)"
    assert repr(result).startswith("Evaluation(") and len(repr(result)) < 200 and "0x" not in repr(result)
    assert result.policy == "argmax"


def test_safe_with_an_infinite_margin_says_so_in_words():
    from herd.policies import SafeArgMax

    labels = np.tile([[1.0, 0.0]], (50, 1))
    p = SafeArgMax().fit(np.full((50, 2), 0.5), labels)
    assert p.margin_ == np.inf
    assert p.summary() == "margin=inf: every query stays with the best single model, no margin paid off on validation data"


def test_evaluation_is_deterministic(dataset_dir):
    a = evaluate(Outcomes.load(dataset_dir), ["logistic"], folds=3, seed=1, sweep=False).to_json()
    b = evaluate(Outcomes.load(dataset_dir), ["logistic"], folds=3, seed=1, sweep=False).to_json()
    strip = lambda d: [{k: v for k, v in r.items() if k != "router_ms"} for r in d["results"]]  # noqa: E731
    assert strip(a) == strip(b)


def test_several_benchmarks_are_evaluated_separately(frames):
    q, o, m = frames
    q2, o2 = q.copy(), o.copy()
    q2["benchmark"] = o2["benchmark"] = "other"
    data = Outcomes.from_frames(pd.concat([q, q2]), pd.concat([o, o2]), m)
    ev = evaluate(data, ["knn-tfidf"], folds=2, sweep=False)
    assert [(b.source, b.benchmark) for b in ev.benchmarks] == [("toy", "mix"), ("toy", "other")]


def test_tuned_policy_is_fitted_inside_training_folds(dataset_dir):
    from herd.policies import ArgMax, SafeArgMax

    ev = evaluate(Outcomes.load(dataset_dir), ["logistic"], policy=[ArgMax(), SafeArgMax()], folds=3, sweep=False)
    (b,) = ev.benchmarks
    assert {r.method for r in b.rows if r.kind == "router"} == {"logistic (argmax)", "logistic (safe)"}
    note = next(n for n in b.notes if n.startswith("logistic (safe)"))
    assert note.count("margin=") == 3 or note.endswith("(all 3 folds)")
    # On topic specialists routing pays off in validation too, so the safe policy routes.
    assert b.row("router", "logistic (safe)").accuracy > b.row("best-single").accuracy


def test_cascade_on_a_hand_made_table():
    from herd.policies import Cascade, make_policy

    models = ["small", "big"]
    # P(correct) for small is high on the first four queries, where small is indeed right.
    scores = np.array([[0.9, 0.9]] * 4 + [[0.2, 0.9]] * 4)
    labels = np.array([[1, 1]] * 4 + [[0, 1]] * 4, dtype=float)
    c = Cascade(models).fit(scores, labels, np.array([0.001, 0.01]), models)
    assert c.choose(scores).tolist() == [0] * 4 + [1] * 4  # keeps the strong model's accuracy, half owned
    assert c.validation_accuracy_ == 1.0 and 0.2 < c.threshold_ <= 0.9
    reasons = c.decide(scores, models).reasons
    assert "small answers (P=0.90" in reasons[0] and "small P=0.20 below" in reasons[-1] and "big answers" in reasons[-1]
    fixed = make_policy("cascade:small,big@0.95").fit(scores, labels, None, models)
    assert fixed.choose(scores).tolist() == [1] * 8 and fixed.label == "cascade:small,big@0.95"
    with pytest.raises(ValueError, match=r"cascade: model\(s\) \['huge'\] not in the pool"):
        Cascade(["small", "huge"]).fit(scores, labels, None, models)


def test_cascade_in_evaluation_reports_ownership_and_a_threshold_sweep(frames):
    from herd.policies import Cascade

    q, o, m = frames
    data = Outcomes.from_frames(q, o, m)
    ev = evaluate(data, ["logistic"], policy=[Cascade(["hist-7b", "big-70b"])], folds=3, seed=0, sweep=False)
    b = ev.benchmarks[0]
    row = b.row("router")
    assert row.ownership is not None and 0 <= row.ownership <= 1
    assert b.row("single", "hist-7b").ownership == 1.0 and b.row("single", "big-70b").ownership == 0.0
    curve = b.cascade_curves["logistic (cascade:hist-7b,big-70b)"]
    assert curve[-1]["first_model_share"] == 0.0 and curve[0]["first_model_share"] > 0.9
    assert curve[-1]["accuracy"] == pytest.approx(b.row("single", "big-70b").accuracy)
    assert "cascade_curves" in ev.to_json()["benchmarks"][0]


def test_cli_keeps_a_cascade_whole(tmp_path, dataset_dir):
    from typer.testing import CliRunner

    from herd.cli import _split_policies, app

    assert _split_policies(["argmax,safe", "cascade:a@x,b@0.5"]) == ["argmax", "safe", "cascade:a@x,b@0.5"]
    assert _split_policies(["safe,cascade-check:a,b"]) == ["safe", "cascade-check:a,b"]
    r = CliRunner().invoke(app, ["eval", str(dataset_dir), "--router", "logistic", "--policy",
                                 "cascade:hist-7b,big-70b", "--no-sweep", "--folds", "3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "cascade:hist-7b,big-70b" in r.output and (tmp_path / "o" / "toy-mix-cascades.png").exists()


def _agreeing_small_model_table(n: int = 120, seed: int = 0) -> Outcomes:
    """'small' is right on 70% of queries, always when its samples agree and never otherwise;
    'big' is right on 90%. The router's scores carry no signal (all texts look alike)."""
    rng = np.random.default_rng(seed)
    small = rng.random(n) < 0.7
    big = rng.random(n) < 0.9
    q = pd.DataFrame({"source": "t", "benchmark": "b", "qid": [f"q{i}" for i in range(n)], "text": ["what is it?"] * n})
    rows = []
    for i in range(n):
        rows.append({"qid": f"q{i}", "model": "small", "correct": float(small[i]), "cost_usd": 0.001,
                     "agreement": 1.0 if small[i] else 1 / 3, "output_chars": 300})
        rows.append({"qid": f"q{i}", "model": "big", "correct": float(big[i]), "cost_usd": 0.01,
                     "agreement": 1.0, "output_chars": 300})
    o = pd.DataFrame(rows).assign(source="t", benchmark="b")
    models = pd.DataFrame({"model": ["small", "big"], "source": "t", "open_weights": [True, False]})
    return Outcomes.from_frames(q, o, models)


def test_a_checked_cascade_reads_the_answers_and_pays_for_every_call():
    from herd.policies import CheckedCascade, make_policy

    m = _agreeing_small_model_table().matrix(["small", "big"])
    y, scores = m.labels, np.full(m.labels.shape, 0.8)
    c = make_policy("cascade-check:small,big")
    assert isinstance(c, CheckedCascade) and c.label == "cascade-check:small,big"
    c.fit(scores, y, np.array([0.001, 0.01]), m.models, observed=m.observed)
    choice = c.choose(scores, None, m.observed)
    # Agreement says exactly when small is right: keep those, send the rest to big.
    assert choice.tolist() == np.where(y[:, 0] == 1, 0, 1).tolist()
    assert metrics.picked(y, choice).mean() > y[:, 1].mean()
    called = c.called(choice, 2)
    assert called[:, 0].all() and (called[:, 1] == (choice == 1)).all()
    assert metrics.summed(m.cost, called)[choice == 1] == pytest.approx(0.011)
    reasons = c.decide(scores, m.models, observed=m.observed).reasons
    assert "small's answer P(right)=" in reasons[int(np.argmax(choice))] and "big answers" in reasons[int(np.argmax(choice))]
    assert "small answers first" in c.decide(scores[:1], m.models).reasons[0]  # before any call
    with pytest.raises(ValueError, match="no answer observations that vary for 'small'"):
        CheckedCascade(["small", "big"]).fit(scores, y, None, m.models, observed=None)


def test_checked_cascade_in_evaluation_charges_both_calls():
    from herd.policies import Cascade, CheckedCascade

    data = _agreeing_small_model_table(150)
    ev = evaluate(data, ["logistic"], policy=[Cascade(["small", "big"]), CheckedCascade(["small", "big"])],
                  folds=3, seed=0, sweep=False)
    b = ev.benchmarks[0]
    checked = b.row("router", "logistic (cascade-check:small,big)")
    m = data.matrix(b.models)
    small = b.models.index("small")
    assert checked.accuracy >= b.row("single", "big").accuracy
    # Owned answers are exactly those small got right; every query paid small, the rest big too.
    assert checked.ownership == pytest.approx(m.labels[:, small].mean())
    expected_cost = 0.001 + 0.01 * (1 - m.labels[:, small].mean())
    assert checked.cost_usd == pytest.approx(expected_cost)
    pre = b.row("router", "logistic (cascade:small,big)")
    assert checked.ownership > pre.ownership  # the router's scores alone cannot tell these queries apart
    curve = b.cascade_curves["logistic (cascade-check:small,big)"]
    assert curve[-1]["cost_usd"] == pytest.approx(0.011) and curve[-1]["first_model_share"] == 0.0


def test_a_checked_cascade_whose_first_answers_never_pay_skips_the_check():
    from herd.policies import CheckedCascade

    m = _agreeing_small_model_table(90).matrix(["small", "big"])
    y = m.labels.copy()
    y[:, 1] = 1.0  # big is always right: small may keep only the odd answer, and the check costs more than it saves
    noise = {"output_chars": np.random.default_rng(1).integers(100, 900, (90, 2)).astype(float)}
    c = CheckedCascade(["small", "big"]).fit(np.full(y.shape, 0.5), y, np.array([0.001, 0.01]), m.models,
                                             observed=noise)
    assert c.direct_ and c.choose(np.full(y.shape, 0.5), None, noise).tolist() == [1] * 90
    assert c.called(np.array([1, 1]), 2).tolist() == [[False, True]] * 2  # small is never called, never paid
    assert "straight to big" in c.decide(np.full((1, 2), 0.5), m.models).reasons[0]


def test_prediction_learns_from_the_whole_score_vector():
    from herd.policies import Prediction, make_policy

    rng = np.random.default_rng(0)
    n = 400
    b_right = rng.random(n) < 0.3
    labels = np.column_stack([~b_right, b_right]).astype(float)  # A is right exactly when B is not
    # A's own score says nothing; B's is higher where B is right, yet still below A's (B is miscalibrated).
    scores = np.column_stack([np.full(n, 0.7), np.where(b_right, 0.6, 0.3) + rng.normal(0, 0.03, n)])
    p = make_policy("prediction").fit(scores, labels, np.array([0.01, 0.001]), ["a", "b"])
    assert isinstance(p, Prediction) and (metrics.picked(labels, p.choose(scores)) == 1).mean() > 0.95
    assert argmax_accuracy(scores, labels) < 0.8  # read one score at a time, A's flat 0.7 always wins
    assert "learned from the score vector: b" in p.decide(scores[b_right][:1], ["a", "b"]).reasons[0]
    one = Prediction().fit(scores, np.ones((n, 2)), None, ["a", "b"])  # nothing to learn: the best single
    assert one.choose(scores).tolist() == [0] * n


def argmax_accuracy(scores, labels) -> float:
    from herd.policies import ArgMax

    return float(metrics.picked(labels, ArgMax().choose(scores)).mean())
