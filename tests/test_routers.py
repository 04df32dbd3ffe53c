import numpy as np
import pytest
from sklearn.base import clone

from herd.data import Outcomes
from herd.policies import ArgMax, Budget, CostAware, SafeArgMax, make_policy
from herd.routers import ROUTERS, AutoRouter, KNNRouter, LogisticRouter, make_router

FAST = ["knn-tfidf", "logistic", "mf-tfidf", "cluster-tfidf"]


@pytest.fixture
def toy(dataset_dir):
    return Outcomes.load(dataset_dir)


@pytest.mark.parametrize("name", FAST)
def test_scores_shape_range_and_determinism(toy, name):
    train, test = toy.split(0.25, seed=0)
    texts = test.queries.text.tolist()
    a = make_router(name).fit(train).predict_scores(texts)
    b = make_router(name).fit(train).predict_scores(texts)
    assert a.shape == (len(texts), 3)
    assert np.all((a >= 0) & (a <= 1))
    np.testing.assert_array_equal(a, b)
    assert make_router(name).fit(train).predict_scores([]).shape == (0, 3)


@pytest.mark.parametrize("name", FAST)
def test_router_learns_who_is_right_on_what(toy, name):
    """Each small model is right on its topic only: a router reading the topic beats every single model."""
    train, test = toy.split(0.3, seed=1)
    router = make_router(name).fit(train)
    m = test.matrix(router.models_)
    choice = ArgMax().choose(router.predict_scores(m.texts))
    routed = m.labels[np.arange(m.n_queries), choice].mean()
    assert routed > m.labels.mean(axis=0).max() + 0.1


@pytest.mark.parametrize("name", FAST)
def test_one_live_query_scores_as_a_batch_does(toy, name, tmp_path):
    """The gateway scores one query at a time (``score_one``, quicker for TF-IDF logistic): the
    same scores as ``predict_scores``, for odd texts too, and the router still saves."""
    import pickle

    train, test = toy.split(0.25, seed=0)
    router = make_router(name).fit(train)
    texts = test.queries.text.tolist()[:20] + ["", "?!", "Ünïcödé math math math", "zzqx " * 500]
    one = np.vstack([router.score_one(t) for t in texts])
    np.testing.assert_allclose(one, router.predict_scores(texts), rtol=0, atol=1e-6)  # float32 features: batch sizes round apart
    again = pickle.loads(pickle.dumps(router))
    np.testing.assert_allclose(again.score_one(texts[0]), one[0], rtol=0, atol=1e-12)
    with pytest.raises(TypeError):
        router.score_one(["a list, not a text"])


def test_knn_tunes_on_training_data_only(toy):
    train, _ = toy.split(0.3, seed=0)
    r = KNNRouter(features="tfidf").fit(train)
    assert r.k_ in (5, 10, 20, 40) and r.prior_strength_ >= 0
    fixed = KNNRouter(k=3, prior_strength=0.0, features="tfidf").fit(train)
    assert (fixed.k_, fixed.prior_strength_) == (3, 0.0)
    # no neighbours: every query gets the prior, each model's training rate
    none = KNNRouter(k=0, prior_strength=2.0, features="tfidf").fit(train)
    np.testing.assert_allclose(none.predict_scores(["add the numbers", "a poem"]), np.vstack([none.prior_] * 2))


def test_knn_takes_the_most_similar_queries_most_similar_first(toy):
    train, _ = toy.split(0.3, seed=0)
    r = KNNRouter(k=5, prior_strength=0.0, features="tfidf").fit(train)
    xq = r._featurize(train.queries.text.tolist()[:7])
    sim = (xq @ r.xt_).toarray()
    got = r._neighbours(xq, 5)
    np.testing.assert_array_equal(np.take_along_axis(sim, got, axis=1), -np.sort(-sim, axis=1)[:, :5])


def test_logistic_handles_fractional_and_constant_labels(frames):
    q, o, m = frames
    o = o.copy()
    o.loc[o.model == "math-7b", "correct"] = 0.5
    data = Outcomes.from_frames(q, o, m)
    r = LogisticRouter().fit(data)
    s = r.predict_scores(["add the numbers math"])
    assert s[0, r.models_.index("math-7b")] == pytest.approx(0.5)


def test_registry_and_clone():
    assert set(ROUTERS) >= {"knn", "knn-tfidf", "logistic"}
    for name in ROUTERS:  # `herd train --seed` passes a seed to every router
        assert make_router(name, seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        make_router("nope")
    r = clone(make_router("knn-tfidf", k=7))
    assert r.k == 7 and r.features == "tfidf"
    with pytest.raises(RuntimeError, match="not fitted"):
        r.predict_scores(["x"])


def test_argmax_prefers_cheaper_on_ties_and_explains():
    scores = np.array([[0.9, 0.9, 0.1], [0.2, 0.3, 0.8]])
    d = ArgMax().decide(scores, ["a", "b", "c"], np.array([2.0, 1.0, 5.0]))
    assert d.choice.tolist() == [1, 2]
    assert d.reasons[1] == "highest predicted P(correct): c 0.80 (next b 0.30)"


def test_cost_aware_trades_quality_for_cost():
    scores = np.array([[0.9, 0.8]])
    costs = np.array([10.0, 1.0])
    assert CostAware(0.0).choose(scores, costs).tolist() == [0]
    assert CostAware(0.5).choose(scores, costs).tolist() == [1]
    assert "b (P=0.80" in CostAware(0.5).decide(scores, ["a", "b"], costs).reasons[0]
    # An unpriced model counts as the dearest priced one.
    assert CostAware(0.5).choose(np.array([[0.9, 0.8, 0.1]]), np.array([np.nan, 1.0, 10.0])).tolist() == [1]
    with pytest.raises(ValueError):
        CostAware(-1)


def test_safe_policy_stays_with_best_single_when_scores_are_noise():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 4)) < [0.9, 0.5, 0.5, 0.5]).astype(float)
    noise = rng.random((400, 4))  # scores that know nothing
    policy = SafeArgMax().fit(noise, labels)
    assert policy.anchor_ == 0 and policy.margin_ == float("inf")
    test_scores = rng.random((50, 4))
    assert (policy.choose(test_scores) == 0).all()
    assert "stayed with best single model a" in policy.decide(test_scores, list("abcd")).reasons[0]


def test_safe_policy_leaves_best_single_where_it_pays():
    # Model 1 is right exactly where the anchor (model 0) is wrong, and the scores say so.
    labels = np.array([[1, 0]] * 70 + [[0, 1]] * 30, float)
    scores = np.where(labels == 1, 0.8, 0.3)
    policy = SafeArgMax().fit(scores, labels)
    assert policy.anchor_ == 0 and policy.margin_ < 0.5
    assert policy.choose(np.array([[0.3, 0.8], [0.8, 0.3]])).tolist() == [1, 0]
    chosen = labels[np.arange(100), policy.choose(scores)]
    assert chosen.mean() == 1.0 > labels[:, 0].mean()


def test_safe_policy_fixed_margin_and_unfitted():
    with pytest.raises(RuntimeError, match="not fitted"):
        SafeArgMax().choose(np.zeros((1, 2)))
    p = SafeArgMax(margin=0.25).fit(np.array([[0.5, 0.9]]), np.array([[1.0, 0.0]]))
    assert p.margin_ == 0.25 and p.choose(np.array([[0.5, 0.8], [0.5, 0.7]])).tolist() == [1, 0]


def test_make_policy():
    assert isinstance(make_policy("argmax"), ArgMax)
    assert make_policy("safe:0.1").margin == 0.1
    assert make_policy("cost-aware:0.3").cost_weight == 0.3
    for bad, msg in (("nope", "unknown policy"), ("cost-aware:x", "is not a number"), ("argmax:1", "takes no")):
        with pytest.raises(ValueError, match=msg):
            make_policy(bad)


@pytest.mark.parametrize("spec, message", [
    ("cost-aware", "needs a number: cost-aware:WEIGHT"),
    ("cost-aware:-0.5", "cost weight must be 0 or more"),
    ("sorted:2", "threshold is a probability, between 0 and 1; got 2"),
    ("random-likely:-0.1", "threshold is a probability"),
    ("safe:-0.1", "margin is a difference of P(correct), 0 or more"),
    ("budget:-1", "USD per query must be 0 or more"),
    ("budget:gpt-4:1.5", "share between 0 and 1"),
    ("cascade:a,b@2", "threshold is a probability"),
    ("cascade-check:a,b@-1", "threshold is a probability"),
    ("prediction:0", "must be above 0"),
    ("agree:a,b>c@1", "need must be between 2 and 2"),
])
def test_bad_policy_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError) as e:
        make_policy(spec)
    assert message in str(e.value) and str(e.value).startswith(f"policy {spec!r}")


def test_policy_reprs_are_short_and_say_their_parameters():
    for spec, text in (("sorted:0.7", "CheapestLikely(threshold=0.7)"), ("random-likely", "RandomLikely(threshold=0.5"),
                       ("safe", "SafeArgMax(margin=None)"), ("budget:0.001", "Budget(max_cost=0.001)")):
        assert repr(make_policy(spec)).startswith(text) and " at 0x" not in repr(make_policy(spec))


def test_auto_picks_a_candidate_by_inner_cv(toy):
    train, test = toy.split(0.3, seed=0)
    r = AutoRouter(candidates=("knn-tfidf", "logistic")).fit(train)
    assert r.chosen_ in ("knn-tfidf", "logistic", "logistic-task", "ensemble")
    # the toy queries carry a category, so the task-aware variant of logistic competes too
    assert set(r.cv_results_) == {"knn-tfidf", "logistic", "logistic-task", "ensemble"}
    assert r.validation_scores_.shape == (len(train.queries), 3)
    best = max(r.cv_results_.values(), key=lambda v: v["accuracy"])["accuracy"]
    assert r.cv_results_[r.chosen_]["accuracy"] == best
    s = r.predict_scores(test.queries.text.tolist())
    np.testing.assert_array_equal(s, r.router_.predict_scores(test.queries.text.tolist()))


def test_ensemble_is_the_mean_of_its_members(toy):
    from herd.routers import EnsembleRouter

    train, test = toy.split(0.3, seed=0)
    texts = test.queries.text.tolist()
    e = EnsembleRouter(("knn-tfidf", "logistic")).fit(train)
    expected = (make_router("knn-tfidf").fit(train).predict_scores(texts)
                + make_router("logistic").fit(train).predict_scores(texts)) / 2
    np.testing.assert_allclose(e.predict_scores(texts), expected)


def test_auto_skips_embedding_candidates_without_the_extra(toy, monkeypatch):
    from herd import features

    def unavailable(*a, **k):
        raise features.EmbeddingsUnavailable("no extra")

    monkeypatch.setattr(features.SentenceEmbedder, "embed", unavailable)
    r = AutoRouter(candidates=("knn", "logistic")).fit(toy)
    assert r.chosen_ in ("logistic", "logistic-task")
    assert "skipped" in r.cv_results_["knn"] and "skipped" in r.cv_results_["knn-task"]


def _budget_table(seed=0, n=2000):
    """Two models: a dear one right 90% of the time, a cheap one right 60%; scores are informative."""
    rng = np.random.default_rng(seed)
    labels = np.column_stack([rng.random(n) < 0.9, rng.random(n) < 0.6]).astype(float)
    scores = np.clip(labels * 0.5 + rng.random((n, 2)) * 0.5, 0, 1)
    return scores, labels, np.array([10.0, 1.0])


def test_budget_hits_a_mean_cost_target_on_new_data():
    scores, labels, costs = _budget_table(0)
    p = Budget(max_cost=4.0).fit(scores, labels, costs, ["dear", "cheap"])
    assert p.met_ and p.validation_spent_ <= 4.0
    test_scores, _, _ = _budget_table(1)
    realized = costs[p.choose(test_scores, costs)].mean()
    assert 3.0 <= realized <= 4.5  # calibrated on other data: close to, not exactly at, the target
    assert "calibrated to $4/query" in p.decide(test_scores[:1], ["dear", "cheap"], costs).reasons[0]


def test_budget_hits_a_share_target_for_a_named_model():
    scores, labels, costs = _budget_table(0)
    p = Budget(max_share=0.3, model="dear").fit(scores, labels, costs, ["dear", "cheap"])
    share = np.mean(p.choose(_budget_table(2)[0], costs) == 0)
    assert p.met_ and 0.22 <= share <= 0.36


def test_budget_unreachable_and_bad_specs():
    scores, labels, costs = _budget_table(0)
    p = Budget(max_cost=0.5).fit(scores, labels, costs, ["dear", "cheap"])
    assert not p.met_ and "not reachable" in p.summary()
    assert make_policy("budget:0.002").max_cost == 0.002
    b = make_policy("budget:gpt-4-1106-preview:0.3")
    assert (b.model, b.max_share) == ("gpt-4-1106-preview", 0.3)
    with pytest.raises(ValueError, match="exactly one"):
        Budget()
    with pytest.raises(ValueError, match="not in the pool"):
        Budget(max_share=0.3, model="x").fit(scores, labels, costs, ["dear", "cheap"])
    with pytest.raises(ValueError, match="budget:USD_PER_QUERY"):
        make_policy("budget:lots")


def test_random_likely_picks_among_predicted_correct_with_a_seed():
    from herd.policies import RandomLikely

    scores = np.array([[0.9, 0.8, 0.1]] * 200 + [[0.2, 0.3, 0.1]])
    a, b = RandomLikely(seed=1).choose(scores), RandomLikely(seed=1).choose(scores)
    np.testing.assert_array_equal(a, b)
    assert set(a[:200]) == {0, 1} and a[200] == 1  # none likely: argmax
    assert "random pick among 2 model(s)" in RandomLikely().decide(scores[:1], list("abc")).reasons[0]


def test_sorted_takes_the_cheapest_predicted_correct():
    from herd.policies import CheapestLikely

    scores = np.array([[0.9, 0.6, 0.4], [0.9, 0.4, 0.3], [0.2, 0.3, 0.1]])
    costs = np.array([10.0, 2.0, 1.0])
    assert CheapestLikely().choose(scores, costs).tolist() == [1, 0, 1]
    assert CheapestLikely(0.35).choose(scores, costs).tolist() == [2, 1, 1]
    assert make_policy("sorted:0.7").threshold == 0.7 and make_policy("random-likely").threshold == 0.5
    d = CheapestLikely().decide(scores, list("abc"), costs)
    assert d.reasons[0] == "cheapest model with P >= 0.5: b (P=0.60)" and d.reasons[2].startswith("no model has P >= 0.5")


def test_tfidf_features_match_their_reference_computations(toy):
    """The kept SVD basis and transposed kNN matrix are speed-ups only: same numbers as
    scikit-learn's TruncatedSVD and a direct similarity product."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.preprocessing import normalize

    from herd.features import Featurizer

    texts = toy.queries.text.tolist()
    f = Featurizer("tfidf-svd", seed=0).fit(texts)
    x = f.tfidf_.transform(texts)
    svd = TruncatedSVD(f.svd_basis_.shape[1], random_state=0).fit(x)
    np.testing.assert_allclose(f.transform(texts), normalize(svd.transform(x)), atol=1e-5)

    knn = KNNRouter(features="tfidf").fit(toy)
    q = knn.featurizer_.transform(texts[:5])
    sim = (q @ knn.featurizer_.transform(texts).T).toarray()
    found = np.take_along_axis(sim, knn._neighbours(q, 3), axis=1)  # ties may pick either neighbour
    np.testing.assert_allclose(found, -np.sort(-sim, axis=1)[:, :3], atol=1e-6)
