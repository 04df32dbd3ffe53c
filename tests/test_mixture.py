"""Mixtures of tasks through one pool, on a hand-made table where each of two models owns one task."""

import numpy as np
import pandas as pd
import pytest

from herd import metrics
from herd.data import HerdDataError, Outcomes
from herd.evaluation import evaluate
from herd.policies import ArgMax, SafeArgMax
from herd.routers import make_router

WORDS = {"math": "add subtract multiply number sum", "code": "python function return loop list"}


def _mixture(n_per_task=120, seed=0, with_text=True):
    """Two benchmarks of one source. 'mathy' is right on math 90%, on code 30%; 'cody' the reverse;
    'generalist' 65% on both (the best single model overall, by a little)."""
    rng = np.random.default_rng(seed)
    queries, outcomes = [], []
    rates = {"mathy": {"math": 0.9, "code": 0.3}, "cody": {"math": 0.3, "code": 0.9},
             "generalist": {"math": 0.65, "code": 0.65}}
    for task in ("math", "code"):
        for i in range(n_per_task):
            qid = f"{task}-{i}"
            words = rng.choice(WORDS[task].split(), 3) if with_text else ["question"]
            queries.append({"source": "toy", "benchmark": task, "qid": qid, "text": f"{' '.join(words)} item {i}"})
            for model, r in rates.items():
                outcomes.append({"source": "toy", "benchmark": task, "qid": qid, "model": model,
                                 "correct": float(rng.random() < r[task]), "cost_usd": 1e-3})
    return Outcomes.from_frames(pd.DataFrame(queries), pd.DataFrame(outcomes))


def test_mixtures_pool_a_sources_benchmarks_over_their_shared_models():
    data = _mixture()
    (mix,) = data.mixtures()
    m = mix.matrix()
    assert sorted(set(m.tasks)) == ["code", "math"] and m.n_queries == 240
    with pytest.raises(HerdDataError, match="no mixture"):
        data.filter(benchmark="math").mixtures()


def test_folds_of_a_mixture_are_stratified_by_task():
    m = _mixture().mixtures()[0].matrix()
    for _, te in m.kfold(5, 0):
        counts = pd.Series(m.tasks[te]).value_counts()
        assert counts["math"] == counts["code"] == 24


def test_task_best_and_the_shuffled_control_on_known_figures():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float)
    cost = np.array([[1.0, 3.0]] * 4)
    tasks = np.array(["a", "a", "b", "b"], dtype=object)
    choice = metrics.task_best_choice(y, cost, tasks, np.array(["b", "a", None, "zzz"], dtype=object), fallback=0)
    assert choice.tolist() == [1, 0, 0, 0]
    # routing right: every query to its task's model; shuffled, the same 50/50 split is right half the time
    acc, spent = metrics.shuffled_expected(y, cost, np.array([0, 0, 1, 1]))
    assert acc == pytest.approx(0.5) and spent == pytest.approx(2.0)
    acc, spent = metrics.shuffled_expected(y, cost, np.array([1, 1, 1, 1]))
    assert acc == pytest.approx(0.5) and spent == pytest.approx(3.0)


@pytest.mark.parametrize("router", ["logistic", "logistic-task"])
def test_a_router_learns_which_model_owns_which_task(router):
    ev = evaluate(_mixture(), [router], policy=SafeArgMax(), folds=5, sweep=False, mix=True)
    (b,) = ev.benchmarks
    assert b.benchmark == "mix" and b.tasks == {"code": 120, "math": 120}
    best, task_best = b.row("best-single"), b.row("task-best")
    routed = b.row("router", f"{router} (safe)")
    assert task_best.accuracy > best.accuracy + 0.15
    assert routed.accuracy >= task_best.accuracy - 0.02
    assert routed.gap_closed > 0.3
    shuffled = b.row("random-control", f"{router} (safe), shuffled")
    assert shuffled.accuracy < routed.accuracy - 0.15  # the gain is routing, not mixing
    shares = b.task_shares[f"{router} (safe)"]
    assert shares["math"].get("mathy", 0) > 0.9 and shares["code"].get("cody", 0) > 0.9
    assert set(b.per_task[f"{router} (safe)"]) == {"code", "math"}


def test_the_task_alone_is_enough_for_a_task_aware_router():
    """No words tell the tasks apart: only the task feature can route."""
    ev = evaluate(_mixture(with_text=False), ["logistic", "logistic-task"], policy=ArgMax(), folds=5, sweep=False,
                  mix=True)
    (b,) = ev.benchmarks
    blind, aware = b.row("router", "logistic (argmax)"), b.row("router", "logistic-task (argmax)")
    assert aware.accuracy > blind.accuracy + 0.15
    # and with the task unknown at prediction time, the task-aware router still routes (to the overall best)
    mix = _mixture(with_text=False).mixtures()[0].matrix()
    r = make_router("logistic-task").fit(mix)
    assert r.predict_scores(["question item 1"]).shape == (1, 3)
    with_task = r.predict_scores(["question item 1"], ["math"])
    assert mix.models[int(with_task.argmax())] == "mathy"


def test_safe_keeps_each_tasks_own_best_model_per_task():
    """Scores that point the wrong way: safe must still do as well as each task's best model."""
    y = np.zeros((200, 3))
    tasks = np.array(["math"] * 100 + ["code"] * 100, dtype=object)
    y[:100, 0], y[100:, 1], y[:, 2] = 1, 1, 0.55
    misleading = np.tile([0.1, 0.1, 0.9], (200, 1))
    p = SafeArgMax().fit(misleading, y, None, ["mathy", "cody", "generalist"], tasks=tasks)
    assert p.task_anchors_ == {"math": 0, "code": 1}
    choice = p.choose(misleading, None, tasks)
    assert (y[np.arange(200), choice] == 1).all()
    assert (p.choose(misleading, None) == p.anchor_).all()  # task unknown: the overall anchor
    d = p.decide(misleading[:1], ["mathy", "cody", "generalist"], None, tasks[:1])
    assert "best model for task math mathy" in d.reasons[0]


def test_a_router_trained_on_a_mixture_is_scored_on_mixtures_with_its_tasks(tmp_path):
    from herd import artifact
    from herd.evaluation import evaluate_trained

    train, test = _mixture(with_text=False, seed=0), _mixture(with_text=False, seed=1)
    m = train.mixtures()[0].matrix()
    trained = artifact.train("logistic-task", make_router("logistic-task"), ArgMax(), m)
    (b,) = evaluate_trained(trained, test, sweep=False).benchmarks
    assert b.benchmark == "mix" and set(b.tasks) == {"code", "math"}
    assert b.row("router").accuracy > b.row("best-single").accuracy + 0.15  # the task reached the router


def test_a_task_aware_logistic_router_routes_by_text_when_the_task_is_unknown():
    """Words tell the tasks apart: without the task the router should do what a text-only one does."""
    mix = _mixture(with_text=True).mixtures()[0].matrix()
    aware, blind = make_router("logistic-task").fit(mix), make_router("logistic").fit(mix)
    texts = ["add subtract sum item 7", "python function loop item 8"]
    assert [mix.models[i] for i in aware.predict_scores(texts).argmax(axis=1)] == ["mathy", "cody"]
    assert (aware.predict_scores(texts).argmax(axis=1) == blind.predict_scores(texts).argmax(axis=1)).all()
