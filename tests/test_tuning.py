"""Fitting inside a training fold, the one way evaluation, selection, blends and training fit;
and a matrix's model columns."""

from collections import Counter
from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from herd import metrics, select
from herd.data import Outcomes
from herd.evaluation import evaluate
from herd.foldfits import FoldFits
from herd.policies import ArgMax, CheckedCascade, Prediction, SafeArgMax, make_policy
from herd.routers import make_router
from herd.routers.base import out_of_fold_scores
from herd.routers.logistic import LogisticRouter
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


@pytest.mark.parametrize("folds", [3, 5])  # inner folds of each fold's own; shared between folds
def test_select_scores_a_checked_cascade_with_the_answers_observations(observed_outcomes, folds):
    """`herd select --policy cascade-check:A,B` re-scores a pool with the answer observations
    of its models, exactly as `herd eval` scores the same cascade on the same folds."""
    m = observed_outcomes.matrix()
    spec = "cascade-check:" + ",".join(POOL)
    routed, best = select.routed_accuracy(m, POOL, make_router("logistic"), make_policy(spec), folds, 0)
    ev = evaluate(observed_outcomes.filter(models=POOL), {"logistic": make_router("logistic")},
                  policy=make_policy(spec), folds=folds, seed=0, sweep=False)
    assert routed == pytest.approx(ev.benchmarks[0].row("router", f"logistic ({spec})").accuracy)
    assert routed > best + 0.1  # short answers of the history model stand, the rest go to the big one
    # Without the observations there is nothing to read an answer by: the pool cannot be scored so.
    assert select.routed_accuracy(replace(m, observed=None), POOL, make_router("logistic"), make_policy(spec),
                                  folds, 0)[0] is None


FITTED: list[frozenset] = []


class RecordingRouter(LogisticRouter):
    """The logistic router, noting the queries of every fit."""

    def fit(self, data, sample_weight=None):
        FITTED.append(frozenset(data.keys.itertuples(index=False, name=None)))
        return super().fit(data, sample_weight)


@pytest.mark.parametrize("folds", [5, 3])
def test_a_cross_validation_shares_its_inner_fits_where_that_costs_no_more(observed_outcomes, folds):
    """With 5 folds the inner folds of fold f are the other folds, each fitted once without the
    two folds it serves (10 fits, not 15); with 3, each fold has three inner folds of its own. No
    fit serving fold f's tuning has seen fold f, and the policies are tuned on those scores."""
    m = observed_outcomes.matrix()
    splits = m.kfold(folds, 0)
    held = [frozenset(m.take(te).keys.itertuples(index=False, name=None)) for _, te in splits]
    everything = frozenset().union(*held)
    FITTED.clear()
    policies = [SafeArgMax(), ArgMax(), Prediction()]
    fits = dict(FoldFits(m, splits, {"r": RecordingRouter()}, policies, seed=0, workers=1))
    left_out = Counter(tuple(f for f, h in enumerate(held) if not h & seen) for seen in FITTED)
    for seen, out in zip(FITTED, left_out):
        assert seen | frozenset().union(*(held[f] for f in out)) == everything or folds == 3
    if folds == 5:
        assert left_out == Counter([(f,) for f in range(5)] + list(combinations(range(5), 2)))
    else:  # three inner fits inside every fold, which leave out that fold and a third of the rest
        assert len(FITTED) == 3 + 3 * 3 and all(left_out[(f,)] == 4 for f in range(3))
    for f, (tr, te) in enumerate(splits):
        train = m.take(tr)
        if folds == 5:
            validation = np.empty(m.labels.shape)
            for j, (_, other) in enumerate(splits):
                if j != f:
                    rest = m.take(np.setdiff1d(np.arange(m.n_queries), np.r_[te, other]))
                    validation[other] = LogisticRouter().fit(rest).predict_scores(m.take(other).texts)
            validation = validation[tr]
        else:
            validation = out_of_fold_scores(LogisticRouter(), train, 0)
        costs = metrics.mean_cost_per_model(train.cost)
        by_hand = SafeArgMax().fit(validation, train.labels, costs, train.models, tasks=train.tasks)
        safe, argmax, learned = fits[f, "r"].policies
        assert argmax is policies[1]  # nothing to tune
        assert (safe.margin_, safe.validation_accuracy_) == (by_hand.margin_, by_hand.validation_accuracy_)
        # a classifier over the whole score vector: equal only where the scores are
        np.testing.assert_array_equal(learned.model_.coef_, Prediction().fit(validation, train.labels, costs).model_.coef_)


class KeepsNoScores(LogisticRouter):
    """Says it keeps its own held-out scores, as auto does, but has none."""

    keeps_validation_scores = True


def test_folds_that_cannot_share_inner_fits_have_their_own(observed_outcomes):
    """A router that says it keeps held-out scores and has none, and folds that do not split the
    queries between them (here a subset of them), still get an inner cross-validation: their own."""
    m = observed_outcomes.matrix()
    splits = m.kfold(5, 0)
    subset = [(tr[: len(tr) // 2], te) for tr, te in splits]
    for router, folds in ((KeepsNoScores(), splits), (LogisticRouter(), subset)):
        fits = FoldFits(m, folds, {"r": router}, [SafeArgMax()], seed=0, workers=1)
        assert [kind for kind, _, _ in fits.tasks] == ["fold"] * 5
        for (f, _), fit in fits:
            train = m.take(folds[f][0])
            held = out_of_fold_scores(LogisticRouter(), train, 0)
            by_hand = SafeArgMax().fit(held, train.labels, metrics.mean_cost_per_model(train.cost), train.models,
                                       tasks=train.tasks)
            assert fit.policies[0].validation_accuracy_ == by_hand.validation_accuracy_
