"""The policy contract: every registered policy has a stable repr from its parameters and does
what its declared capabilities say."""

import numpy as np
import pytest

import herd.policies as policies
from herd.policies import REGISTRY, Agree, Explore, Policy, SafeArgMax, make_policy, policy_inputs

MODELS = ["small", "mid", "big"]
COSTS = np.array([0.1, 0.5, 2.0])
# One spec per registered policy: a new policy needs one here, so the contract covers it.
EXAMPLES = {"argmax": "argmax", "safe": "safe", "cost-aware": "cost-aware:0.2", "budget": "budget:0.5",
            "random-likely": "random-likely:0.6", "sorted": "sorted", "prediction": "prediction",
            "cascade": "cascade:small,big", "cascade-check": "cascade-check:small,mid,big",
            "agree": "agree:small,mid>big"}
SPECS = [*EXAMPLES.values(), "safe:0.1", "budget:big:0.3", "agree", "agree:open", "safe+explore:0.1",
         "argmax+explore:0.2"]


def _data(n=300, seed=0):
    """Scores, labels, answer observations and answer codes where small is right on easy
    queries (high score, short answers), big nearly always, mid in between."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.5
    p_right = np.column_stack([np.where(easy, 0.9, 0.2), np.where(easy, 0.95, 0.5), np.full(n, 0.95)])
    labels = (rng.random((n, 3)) < p_right).astype(float)
    scores = np.clip(p_right + rng.normal(0, 0.1, (n, 3)), 0, 1)
    chars = np.where(labels > 0, 200.0, 900.0) + rng.normal(0, 50, (n, 3))
    codes = np.where(labels > 0, 0, 1 + np.arange(3)[None, :] + 3 * rng.integers(0, 5, (n, 1)))
    tasks = np.where(easy, "easy", "hard").astype(object)
    return scores, labels, {"output_chars": chars}, codes, tasks


def _fit(p: Policy, data):
    scores, labels, observed, codes, tasks = data
    owned = np.array([True, True, False])
    return p.fit(scores, labels, COSTS, MODELS, **policy_inputs(p, observed, codes, owned, tasks, fit=True))


def _choose(p: Policy, data):
    scores, _, observed, codes, tasks = data
    return p.choose(scores, COSTS, **policy_inputs(p, observed, codes, tasks=tasks))


def test_every_registered_policy_has_an_example_and_is_a_policy():
    assert set(EXAMPLES) == set(REGISTRY)
    for name, spec in EXAMPLES.items():
        p = make_policy(spec)
        assert isinstance(p, REGISTRY[name][0]) and isinstance(p, Policy) and p.name == name


@pytest.mark.parametrize("spec", SPECS)
def test_repr_is_the_parameters_deterministic_and_makes_the_policy_again(spec):
    p = make_policy(spec)
    text = repr(p)
    assert " at 0x" not in text and text == repr(make_policy(spec))
    assert text.startswith(f"{type(p).__name__}(")
    again = eval(text, vars(policies))  # the repr is the constructor call
    assert repr(again) == text and again.label == p.label
    assert repr(_fit(p, _data())) == text  # fitting changes what ends in '_', never the parameters


def test_get_params_are_the_constructor_parameters():
    assert SafeArgMax(margin=0.1).get_params() == {"margin": 0.1, "min_z": 1.645}
    e = make_policy("safe+explore:0.1")
    assert set(e.get_params()) == {"policy", "eps", "seed"} and e.get_params()["eps"] == 0.1


@pytest.mark.parametrize("spec", SPECS)
def test_declared_fitting_matches_behaviour(spec):
    """A policy that declares nothing to fit chooses at once and its fit changes nothing; one
    that needs fitting refuses to choose before it."""
    data = _data()
    p = make_policy(spec)
    if p.needs_fit:
        with pytest.raises(RuntimeError, match="not fitted"):
            _choose(p, data)
        assert _fit(p, data) is p and _choose(p, data).shape == (300,)
    else:
        before = _choose(p, data)
        assert _fit(p, data) is p and repr(vars(p)) == repr(vars(make_policy(spec)))
        assert (_choose(p, data) == before).all()


@pytest.mark.parametrize("spec", SPECS)
def test_declared_inputs_match_what_the_policy_reads(spec):
    """A policy reads answers, observations or tasks only if it declares so: the others choose
    the same without them, and the declared ones choose differently when they change."""
    data = _data()
    scores, labels, observed, codes, tasks = data
    p = _fit(make_policy(spec), data)
    if not p.uses_scores:
        assert (p.choose(None, COSTS, **policy_inputs(p, answers=codes)) == _choose(p, data)).all()
    if p.post_call:
        flipped = {"output_chars": np.where(labels > 0, 900.0, 200.0)}
        assert (p.choose(scores, COSTS, observed=flipped) != _choose(p, data)).any()
    if p.reads_answers:
        assert (p.choose(None, COSTS, np.zeros_like(codes)) != _choose(p, data)).any()  # all agree
    if not (p.post_call or p.reads_answers or p.reads_tasks):
        assert policy_inputs(p, observed, codes, tasks=tasks) == {}
    # Only policies that call several models say so; the others pay for their choice alone.
    called = p.called(_choose(p, data), len(MODELS))
    assert (called is None) == (p.picks_from_scores and not p.reads_answers)
    if called is not None:
        assert called.shape == (300, 3) and called[np.arange(300), _choose(p, data)].all()


def test_a_task_reading_policy_anchors_each_task_on_its_own_best_model():
    rng = np.random.default_rng(1)
    tasks = np.array(["x"] * 100 + ["y"] * 100, dtype=object)
    labels = np.zeros((200, 3))
    labels[:100, 0] = rng.random(100) < 0.9  # small is best on x
    labels[100:, 2] = rng.random(100) < 0.9  # big on y
    labels[:, 1] = rng.random(200) < 0.5  # mid: half right on both, the best overall
    noise = rng.random((200, 3))
    p = SafeArgMax().fit(noise, labels, COSTS, MODELS, tasks=tasks)
    assert p.reads_tasks and p.anchor("x") == 0 and p.anchor("y") == 2 and p.anchor(None) == 1  # mid: best over both
    assert make_policy("safe+explore:0.1").reads_tasks
    assert make_policy("argmax").anchor("x") is None


def test_exploration_wraps_only_policies_that_pick_one_model_from_scores():
    for spec in SPECS:
        p = make_policy(spec)
        if p.picks_from_scores and not isinstance(p, Explore):
            assert isinstance(Explore(p, 0.1), Explore)
        elif not p.picks_from_scores:
            with pytest.raises(ValueError, match="exploration wraps"):
                Explore(p, 0.1)


def test_fitted_state_is_read_through_declared_properties():
    data = _data()
    c = _fit(make_policy("cascade-check:small,mid,big"), data)
    assert c.columns == [0, 1, 2] and 0 <= c.cutoff <= 1.01 and isinstance(c.direct, bool)
    assert c.reads_agreement is False
    a = _fit(make_policy("agree:small,mid>big"), data)
    assert (a.stage_columns, a.last_column, a.quorum, a.direct) == ([0, 1], 2, 2, False)
    assert a.stands({"small": 0, "mid": 0}) == "small" and a.stands({"small": 0, "mid": 1}) is None
    renamed = a.renamed(["s", "m", "b"])
    assert renamed.first_stage == ["s", "m"] and renamed.last == "b" and a.first_stage == ["small", "mid"]
    with pytest.raises(RuntimeError, match="not fitted"):
        Agree(["small", "mid"], then="big").quorum


def test_policy_help_and_spec_splitting_come_from_the_registry():
    for _, forms in REGISTRY.values():
        assert forms in policies.POLICY_HELP
    assert policies.split_specs(["argmax,safe", "cascade:a,b", "safe,agree:a,b>c@2"]) == [
        "argmax", "safe", "cascade:a,b", "safe", "agree:a,b>c@2"]
