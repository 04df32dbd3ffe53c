import json

import numpy as np
import pandas as pd
import pytest

from herd import metrics
from herd.data import Outcomes
from herd.evaluate import KINDS, evaluate
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
    assert "majority vote: not computed" in b.notes[0]
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
    vote = ev.benchmarks[0].row("vote")
    mat = Outcomes.from_frames(q, o, m).matrix()
    assert vote.accuracy == pytest.approx(metrics.majority_vote(mat.answers, mat.gold).mean())


def test_metrics_json_contract_and_report(tmp_path, result):
    written = write_report(result, tmp_path / "out")
    doc = json.loads(written["metrics"].read_text())
    assert doc["folds"] == 3 and doc["seed"] == 0 and doc["dataset"]
    assert doc["results"] and all(CONTRACT <= set(r) for r in doc["results"])
    assert {r["kind"] for r in doc["results"]} <= set(KINDS)
    assert all(r["best_single"] == "big-70b" for r in doc["results"])
    assert all(r["gap_closed"] is not None for r in doc["results"] if r["kind"] == "router")
    html = written["report"].read_text()
    assert "data:image/png;base64," in html and "toy / mix" in html
    assert (tmp_path / "out" / "toy-mix-cost-accuracy.png").stat().st_size > 1000
    assert (tmp_path / "out" / "toy-mix-models.png").stat().st_size > 1000


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
    assert note.count("margin=") == 3
    # On topic specialists routing pays off in validation too, so the safe policy routes.
    assert b.row("router", "logistic (safe)").accuracy > b.row("best-single").accuracy
