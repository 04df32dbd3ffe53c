"""Exploration: the epsilon-greedy wrapper offline, in the selector, and through `herd serve`
with the choice log's propensities checked against the frequencies the gateway really drew."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

from herd import artifact
from herd.data import Outcomes
from herd.gateway.chat import parse_chat
from herd.gateway.selection import Selector
from herd.policies import ArgMax, Explore, make_policy, policy_from_config
from herd.pool import PoolConfig, PoolError
from herd.routers import make_router

MATH = "add the numbers math question number 7"
MODELS = ["math-7b", "hist-7b", "big-70b"]


def test_explore_specs_compose_with_policies_and_bad_ones_say_how():
    p = make_policy("cost-aware:0.2+explore:0.05")
    assert isinstance(p, Explore) and p.eps == 0.05 and p.label == "cost-aware:0.2+explore:0.05"
    assert not p.needs_fit and make_policy("safe+explore:0.1").needs_fit
    assert policy_from_config({"name": "argmax", "explore": 0.3}).label == "argmax+explore:0.3"
    for spec, said in [("explore:0.1", "write it after one"), ("safe+explore:x", "between 0 and 1"),
                       ("safe+explore:1.5", "between 0 and 1"), ("cascade-check:a,b+explore:0.1", "several models"),
                       ("agree+explore:0.1", "several models"),
                       ("argmax+explore:0.3+explore:0.2", "one exploration rate")]:
        with pytest.raises(ValueError, match=said):
            make_policy(spec)


def test_offline_draws_are_seeded_and_their_probabilities_are_the_policys():
    scores = np.random.default_rng(1).random((20_000, 4))
    p = make_policy("argmax+explore:0.2")
    own, choice = scores.argmax(axis=1), p.choose(scores)
    assert np.array_equal(choice, p.choose(scores))  # a replay meets the same draws
    # With probability 0.2 a uniform draw among 4, which lands away from the own pick 3 times in 4.
    assert abs(np.mean(choice != own) - 0.2 * 3 / 4) < 0.01
    probs = p.probabilities(scores)
    assert np.allclose(probs.sum(axis=1), 1) and np.allclose(probs[np.arange(len(own)), own], 0.8 + 0.05)
    allowed = np.array([[True, True, False, False]] * len(own))
    assert np.allclose(p.probabilities(scores, allowed=allowed)[:, 2:][~(own[:, None] == [2, 3])], 0)
    reasons = p.decide(scores[:200], list("abcd")).reasons
    assert any(r.startswith("explored (0.2): drew") for r in reasons) and not all(r.startswith("explored") for r in reasons)


def test_draw_never_leaves_the_allowed_models_and_its_propensities_match_the_frequencies():
    p = Explore(ArgMax(), 0.3)
    n = 40_000
    allowed = np.tile([True, False, True, True, False], (n, 1))
    own = np.full(n, 1)  # the own pick is ruled out (e.g. its backend rests): it keeps 1 - eps
    choice, propensity, explored = p.draw(own, allowed, np.random.default_rng(0))
    assert set(np.unique(choice[explored])) == {0, 2, 3} and set(np.unique(choice)) == {0, 1, 2, 3}
    for model in (0, 1, 2, 3):
        logged = propensity[choice == model]
        assert np.allclose(logged, logged[0])  # one probability per model here
        assert abs(np.mean(choice == model) - logged[0]) < 4 * np.sqrt(logged[0] * (1 - logged[0]) / n)
    assert np.allclose(propensity[choice == 1], 0.7) and np.allclose(propensity[choice == 0], 0.1)
    nothing = p.draw(own[:5], np.zeros((5, 5), bool), np.random.default_rng(0))
    assert (nothing[0] == 1).all() and (nothing[1] == 1).all() and not nothing[2].any()


def test_herd_eval_scores_an_exploring_policy_beside_the_plain_one(frames):
    from herd import evaluate

    data = Outcomes.from_frames(*frames)
    ev = evaluate(data, {"logistic": make_router("logistic")}, policy=[make_policy("argmax"),
                                                                      make_policy("argmax+explore:0.5")],
                  folds=3, sweep=False)
    table = ev.benchmarks[0].to_frame().set_index("method")
    plain, exploring = table.loc["logistic (argmax)", "accuracy"], table.loc["logistic (argmax+explore:0.5)", "accuracy"]
    assert exploring < plain  # half the queries drawn at random lose accuracy on this table


def test_herd_train_refuses_an_exploring_policy(dataset_dir, tmp_path):
    from typer.testing import CliRunner

    from herd.cli import app

    out = CliRunner().invoke(app, ["train", str(dataset_dir), "--router", "logistic", "--policy", "safe+explore:0.1",
                                   "-o", str(tmp_path / "r")])
    assert out.exit_code != 0 and "exploration is chosen when serving" in out.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_frames

    m = Outcomes.from_frames(*make_frames()).matrix()
    directory = tmp_path_factory.mktemp("router") / "router"
    artifact.save(artifact.train("logistic", make_router("logistic"), ArgMax(), m), directory)
    return directory


def pool(**overrides) -> PoolConfig:
    models = [{"name": "math-7b", "base_url": "http://127.0.0.1:1/v1", "tags": ["on_prem"]},
              {"name": "hist-7b", "base_url": "http://127.0.0.1:2/v1", "tags": ["on_prem"]},
              {"name": "big-70b", "base_url": "http://127.0.0.1:3/v1"},
              {"name": "extra", "base_url": "http://127.0.0.1:4/v1"}]
    return PoolConfig.model_validate({"models": models, **overrides})


def chat(**fields) -> bytes:
    return json.dumps({"model": "herd", "messages": [{"role": "user", "content": MATH}], **fields}).encode()


def test_the_selector_explores_only_among_allowed_models(trained):
    sel = Selector.from_config(pool(router="router", policies={"wild": "argmax+explore:1"}), trained, seed=3)
    assert "herd" not in sel.explore and sel.explore["herd:wild"] == 1
    seen = set()
    for _ in range(200):
        plan = sel.plan(parse_chat(chat(model="herd:wild", herd={"private": True, "exclude": ["hist-7b"]})))
        assert plan.allowed == ["math-7b"] and plan.candidates == ["math-7b"] and plan.propensity == 1.0
        plan = sel.plan(parse_chat(chat(model="herd:wild", herd={"exclude": ["hist-7b"]})))
        assert plan.allowed == ["math-7b", "big-70b", "extra"] and "hist-7b" not in plan.candidates
        assert plan.explored and plan.policy == "argmax+explore:1"
        assert plan.propensity == pytest.approx(1 / 3)
        seen.add(plan.candidates[0])
    assert seen == {"math-7b", "big-70b", "extra"}  # the unscored model too: exploration is how it gets traffic
    plain = sel.plan(parse_chat(chat()))
    assert plain.propensity == 1.0 and not plain.explored and plain.allowed == ["math-7b", "hist-7b", "big-70b", "extra"]


def test_a_resting_backend_is_not_allowed(trained):
    from herd.backends import Circuit

    sel = Selector.from_config(pool(router="router"), trained, explore=1.0, seed=0)
    sel.circuits = {m: Circuit(1, 60) for m in ["math-7b", "hist-7b", "big-70b", "extra"]}
    sel.circuits["big-70b"].failed()
    for _ in range(50):
        plan = sel.plan(parse_chat(chat()))
        assert "big-70b" not in plan.allowed and plan.candidates[0] != "big-70b"


def test_with_the_policys_pick_resting_the_propensities_are_those_of_the_models_that_answer(trained):
    """The own pick resting: the first candidate a call reaches is the own pick, so each model's
    share of requests matches its logged propensity; a blend draws among its members not resting."""
    from herd.backends import Circuit

    sel = Selector.from_config(pool(router="router"), trained, explore=0.2, seed=0)
    sel.circuits = {m: Circuit(1, 60) for m in ["math-7b", "hist-7b", "big-70b", "extra"]}
    own = sel.plan(parse_chat(chat())).candidates[0]
    sel.circuits[own].failed()
    firsts, propensities = [], {}
    for _ in range(4000):
        plan = sel.plan(parse_chat(chat()))
        firsts.append(plan.candidates[0])
        propensities.setdefault(plan.candidates[0], set()).add(round(plan.propensity, 9))
    assert own not in firsts
    for model, logged in propensities.items():
        (p,) = logged
        share = firsts.count(model) / len(firsts)
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / len(firsts)), (model, share, p)
    blend = Selector.from_config(pool(policies={"mix": "blend"}), None)
    blend.circuits = {m: Circuit(1, 60) for m in ["math-7b", "hist-7b", "big-70b", "extra"]}
    blend.circuits["hist-7b"].failed()
    plan = blend.plan(parse_chat(chat(model="herd:mix")))
    assert plan.candidates[0] != "hist-7b" and plan.propensity == pytest.approx(1 / 3)


def test_serve_explore_fills_routes_without_a_rate_and_refuses_what_cannot_explore(trained):
    sel = Selector.from_config(pool(router="router", policies={"mix": "blend", "own": "argmax+explore:0.2"}), trained,
                               explore=0.05)
    assert sel.explore == {"herd": 0.05, "herd:own": 0.2}  # a blend draws its own models
    assert Selector.from_config(pool(), None, explore=0.1).explore == {"herd": 0.1}  # no router: the pool's order
    assert Selector.from_config(pool(router="router"), trained, explore=0).explore == {}
    with pytest.raises(PoolError, match="policy 'herd:mix': a blend draws"):
        Selector.from_config(pool(router="router", policies={"mix": "blend+explore:0.1"}), trained)
    with pytest.raises(PoolError, match="policy 'herd': .*between 0 and 1"):
        Selector.from_config(pool(router="router", policy="trained+explore:nope"), trained)
    blend = Selector.from_config(pool(policies={"mix": "blend"}), None).plan(parse_chat(chat(model="herd:mix")))
    assert blend.propensity == pytest.approx(1 / 4) and blend.allowed == ["math-7b", "hist-7b", "big-70b", "extra"]


# ---- through `herd serve` ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three backends; big-70b is not on_prem and counts the requests that hold the private word."""
    directory = tmp_path_factory.mktemp("explore")
    router = train_toy_router(directory / "router")
    backends = {name: start_backend(name=name, watch_word="secretword") for name in MODELS}
    models = [{"name": "math-7b", "base_url": backends["math-7b"].url, "tags": ["on_prem"]},
              {"name": "hist-7b", "base_url": backends["hist-7b"].url, "tags": ["on_prem"]},
              {"name": "big-70b", "base_url": backends["big-70b"].url}]
    pool_file = directory / "pool.yaml"
    pool_file.write_text(pool_yaml(models, str(router), policies={"wild": "argmax+explore:1"}))
    yield directory, pool_file, backends
    for b in backends.values():
        b.stop()


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logged_propensities_match_what_the_gateway_drew(served):
    directory, pool_file, backends = served
    log = directory / "choices.jsonl"
    n, eps = 600, 0.3
    with start_gateway(pool_file, "--choice-log", str(log), "--explore", str(eps), "--explore-seed", "11") as gw:
        client = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0)
        for _ in range(n):
            raw = client.chat.completions.with_raw_response.create(model="herd", messages=[{"role": "user", "content": MATH}])
            assert raw.parse().model_extra["herd"]["propensity"] > 0
        private = [client.chat.completions.create(model="herd:wild", messages=[{"role": "user", "content": "secretword"}],
                                                  extra_body={"herd": {"private": True}}) for _ in range(30)]
        excluded = [client.chat.completions.create(model="herd:wild", messages=[{"role": "user", "content": MATH}],
                                                   extra_body={"herd": {"exclude": ["big-70b"]}}) for _ in range(30)]
    records = _records(log)
    routed = [r for r in records if r["route"] == "herd"]
    assert len(routed) == n and all(r["policy"] == f"argmax+explore:{eps:g}" for r in routed)
    assert all(r["allowed"] == MODELS and r["model"] == r["chosen"] and r["status"] == "200" for r in routed)
    # The router's own pick for a math question is math-7b: (1 - eps) + eps/3; the others eps/3.
    expected = {"math-7b": 1 - eps + eps / 3, "hist-7b": eps / 3, "big-70b": eps / 3}
    for model, p in expected.items():
        chosen = [r for r in routed if r["chosen"] == model]
        assert all(r["propensity"] == pytest.approx(p) for r in chosen)
        # Fixed seed, so this is deterministic; 4 standard errors apart, a wrong rate (or no exploration) fails.
        assert abs(len(chosen) / n - p) < 4 * np.sqrt(p * (1 - p) / n), (model, len(chosen))
    assert {r["explored"] for r in routed} == {True, False}
    assert all(not r["explored"] or r["reason"].startswith("explored") for r in routed)
    # Exploration never relaxes a constraint: private requests stay on on_prem models, excluded ones are never asked.
    assert {a.model for a in private} <= {"math-7b", "hist-7b"} and backends["big-70b"].stats()["watched"] == 0
    assert len({a.model for a in private}) == 2 and {a.model for a in excluded} == {"math-7b", "hist-7b"}
    wild = [r for r in records if r["route"] == "herd:wild"]
    assert all(r["allowed"] == ["math-7b", "hist-7b"] and r["propensity"] == pytest.approx(0.5) for r in wild)
    assert all("query" not in r for r in records)  # no prompt text without --log-prompts


def test_prompts_are_logged_only_when_asked_and_never_for_private_requests(served):
    directory, pool_file, _ = served
    log = directory / "prompts.jsonl"
    with start_gateway(pool_file, "--choice-log", str(log), "--log-prompts") as gw:
        client = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0)
        client.chat.completions.create(model="herd", messages=[{"role": "user", "content": MATH}])
        client.chat.completions.create(model="herd", messages=[{"role": "user", "content": "secretword here"}],
                                       extra_body={"herd": {"private": True}})
        client.chat.completions.create(model="herd", messages=[{"role": "user", "content": "secretword again"}],
                                       extra_headers={"x-herd-private": "true"})
    records = _records(log)
    assert len(records) == 3 and records[0]["query"] == MATH
    assert records[0]["propensity"] == 1.0 and records[0]["explored"] is False
    assert "secretword" not in log.read_text() and all("query" not in r for r in records[1:])
