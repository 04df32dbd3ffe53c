"""Fitting inside a training fold, the one way evaluation, selection, blends and training fit;
and a matrix's model columns."""

from dataclasses import replace

import numpy as np
import pytest

from herd import metrics, select
from herd.data import Outcomes
from herd.evaluation import evaluate
from herd.policies import ArgMax, CheckedCascade, SafeArgMax, make_policy
from herd.routers import make_router
from herd.routers.base import out_of_fold_scores
from herd.tuning import fit_in_fold

POOL = ["hist-7b", "big-70b"]


@pytest.fixture
def observed_outcomes(frames):
    """The toy table where an answer's length tells whether it is right (long answers are wrong)."""
    q, o, models = frames
    return Outcomes.from_frames(q, o.assign(output_chars=np.where(o["correct"] > 0, 200, 900)), models)


def test_columns_keep_every_per_model_array(observed_outcomes):
    m = observed_outcomes.matrix()
    m = replace(m, propensity=np.random.default_rng(0).random(m.correct.shape))
    sub = m.columns(["big-70b", "math-7b"])
    idx = [m.models.index("big-70b"), m.models.index("math-7b")]
    assert sub.models == ["big-70b", "math-7b"] and sub.texts == m.texts
    for name in ("correct", "cost", "latency", "propensity"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(m, name)[:, idx])
    np.testing.assert_array_equal(sub.observed["output_chars"], m.observed["output_chars"][:, idx])
    np.testing.assert_array_equal(sub.owned, m.owned[idx])
    np.testing.assert_array_equal(sub.cost_estimated, m.cost_estimated[idx])
    with pytest.raises(ValueError, match=r"model\(s\) \['gpt-9'\] are not in the data's models"):
        m.columns(["gpt-9"])


def test_fit_in_fold_fits_the_router_on_the_fold_and_tunes_on_its_held_out_scores(observed_outcomes):
    m = observed_outcomes.matrix()
    train = m.take(np.arange(0, 90, 2))
    argmax = ArgMax()
    fold = fit_in_fold(make_router("logistic"), [SafeArgMax(), argmax], train, seed=3)
    safe, kept = fold.policies
    assert kept is argmax  # nothing to tune: the policy itself
    assert fold.tuned_on is train and fold.router.models_ == train.models
    held = out_of_fold_scores(make_router("logistic"), train, 3)
    np.testing.assert_allclose(fold.validation, held)
    by_hand = SafeArgMax().fit(held, train.labels, metrics.mean_cost_per_model(train.cost), train.models,
                               tasks=train.tasks)
    assert (safe.margin_, safe.anchor_, safe.task_anchors_) == (by_hand.margin_, by_hand.anchor_, by_hand.task_anchors_)
    with pytest.raises(ValueError, match="read .policies"):
        fold.policy


def test_fit_in_fold_fits_no_router_where_the_answers_decide_unless_asked_to_validate(observed_outcomes):
    m = observed_outcomes.matrix()
    agree = make_policy("agree:math-7b,hist-7b>big-70b")
    fold = fit_in_fold(None, agree, m)
    assert fold.router is None and fold.validation is None and fold.policy.quorum == 2
    assert agree is not fold.policy and not hasattr(agree, "stage_")  # tuned on a copy
    fold = fit_in_fold(make_router("logistic"), agree, m, validate=True)
    assert fold.router is not None and fold.validation.shape == m.correct.shape
    with pytest.raises(ValueError, match="need a router"):
        fit_in_fold(None, SafeArgMax(), m)


def test_fit_in_fold_tunes_on_the_queries_with_every_outcome_when_weighted(observed_outcomes):
    m = observed_outcomes.matrix()
    w = np.ones(m.correct.shape)
    w[:30, 1:] = 0  # the first 30 queries: one model's outcome only
    fold = fit_in_fold(make_router("logistic"), SafeArgMax(), m, seed=0, sample_weight=w, validate=True)
    assert fold.tuned_on.n_queries == m.n_queries - 30 and len(fold.validation) == m.n_queries - 30
    assert fold.tuned_on.texts == m.texts[30:]
    with pytest.raises(ValueError, match="no training query has every model's outcome"):
        partial = np.ones(m.correct.shape)
        partial[np.arange(m.n_queries), np.arange(m.n_queries) % 3] = 0  # each query misses one model
        fit_in_fold(make_router("logistic"), SafeArgMax(), m, sample_weight=partial)


def test_select_scores_a_checked_cascade_with_the_answers_observations(observed_outcomes):
    """`herd select --policy cascade-check:A,B` re-scores a pool with the answer observations
    of its models, exactly as `herd eval` scores the same cascade on the same folds."""
    m = observed_outcomes.matrix()
    spec = "cascade-check:" + ",".join(POOL)
    routed, best = select.routed_accuracy(m, POOL, make_router("logistic"), make_policy(spec), 3, 0)
    ev = evaluate(observed_outcomes.filter(models=POOL), {"logistic": make_router("logistic")},
                  policy=make_policy(spec), folds=3, seed=0, sweep=False)
    assert routed == pytest.approx(ev.benchmarks[0].row("router", f"logistic ({spec})").accuracy)
    assert routed > best + 0.1  # short answers of the history model stand, the rest go to the big one
    # Without the observations there is nothing to read an answer by: the pool cannot be scored so.
    assert select.routed_accuracy(replace(m, observed=None), POOL, make_router("logistic"), make_policy(spec),
                                  3, 0)[0] is None
