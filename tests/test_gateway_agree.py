"""Agreement cascades in `herd serve`: the first stage is asked together, their final answers are
compared with the policy's grader, and a reply stands only if enough of them agree; else the
strong model answers. Real processes on loopback (fake backends that echo the question, so they
agree, unless the question holds their dissent word)."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

from herd import artifact
from herd.collect.grading import answer_codes, get_grader
from herd.gateway.agree import agreed_model
from herd.gateway.app import build_app
from herd.gateway.chat import parse_chat
from herd.gateway.selection import Selector
from herd.policies import Agree
from herd.pool import PoolConfig, PoolError

QUESTION = "What is 6 times 7? The answer is 42"
CHEAP = {"price_in_per_mtok": 0.1, "price_out_per_mtok": 0.2}
PRICEY = {"price_in_per_mtok": 5, "price_out_per_mtok": 15}
CASCADE = {"name": "agree", "models": ["local-a", "cloud-b", "local-c"], "then": "strong", "need": 2, "grader": "number"}


def _agree(models: list[str], **extra) -> dict:
    return {"name": "agree", "models": models, "then": "strong", "grader": "number", **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("agree")
    # A question with 'dispute' splits local-a and local-c (cloud-b still says 42); with 'odd', cloud-b alone.
    specs = {"local-a": dict(dissent_word="dispute"), "cloud-b": dict(dissent_word="odd"),
             "local-c": dict(dissent_word="dispute"), "strong": {},
             "broken": dict(fail_rate=1.0, status=500), "slow": dict(delay_s=3)}
    backends = {}
    try:
        for name, options in specs.items():
            backends[name] = start_backend(name=name, **options)
        entry = {"local-a": {**CHEAP, "tags": ["on_prem"]}, "cloud-b": CHEAP, "local-c": {**CHEAP, "tags": ["on_prem"]},
                 "strong": PRICEY, "broken": {**CHEAP, "retries": 1}, "slow": {**CHEAP, "timeout_s": 0.3, "retries": 0}}
        models = [{"name": n, "base_url": b.url, **entry[n]} for n, b in backends.items()]
        policies = {"checked-math": CASCADE, "with-broken": _agree(["local-a", "broken"]),
                    "with-slow": _agree(["local-a", "slow"])}
        pool = d / "pool.yaml"
        pool.write_text(pool_yaml(models, policy=_agree(["local-a", "cloud-b"]), policies=policies))
        log = d / "choices.jsonl"
        with start_gateway(pool, "--choice-log", str(log)) as gw:
            yield gw, backends, log
    finally:
        for b in backends.values():
            b.stop()


def _ask(gw, model: str, question: str = QUESTION, **herd) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], **({"herd": herd} if herd else {})}
    r = httpx.post(f"{gw.url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r


def _requests(backends) -> dict[str, int]:
    return {n: b.stats()["requests"] for n, b in backends.items()}


def test_agreeing_answers_stand_and_the_strong_model_is_not_asked(served):
    gw, backends, _ = served
    before = _requests(backends)
    r = _ask(gw, "herd")
    body, agree = r.json(), r.json()["herd"]["agree"]
    after = _requests(backends)
    assert body["model"] == "local-a" and r.headers["x-herd-model"] == "local-a"
    assert body["choices"][0]["message"]["content"] == f"local-a: {QUESTION}"
    assert agree["agreed"] is True and agree["stands"] == "local-a" and agree["need"] == 2
    assert agree["first_stage"] == [{"model": "local-a", "answer": "42"}, {"model": "cloud-b", "answer": "42"}]
    assert after["strong"] == before["strong"] and after["local-a"] == before["local-a"] + 1
    assert r.headers["x-herd-attempts"] == "2" and r.headers["x-herd-agreed"] == "yes"
    assert r.headers["x-herd-answers"] == "local-a=42; cloud-b=42"
    assert body["herd"]["cost_usd"] == pytest.approx(agree["first_stage_cost_usd"]) and body["herd"]["cost_usd"] > 0
    assert float(r.headers["x-herd-cost-usd"]) == pytest.approx(body["herd"]["cost_usd"], rel=1e-5)
    sent = backends["cloud-b"].stats()["last_body"]
    assert sent["stream"] is False and sent["n"] == 1 and "herd" not in sent


def test_two_of_three_agreeing_is_enough(served):
    gw, _, _ = served
    body = _ask(gw, "herd:checked-math", QUESTION + " odd").json()
    answers = {s["model"]: s["answer"] for s in body["herd"]["agree"]["first_stage"]}
    assert answers["local-a"] == answers["local-c"] != answers["cloud-b"]
    assert body["model"] == "local-a" and body["herd"]["agree"]["agreed"] is True


def test_disagreeing_answers_go_to_the_strong_model(served):
    gw, backends, log = served
    before = _requests(backends)
    r = _ask(gw, "herd:checked-math", QUESTION + " dispute")
    body, agree = r.json(), r.json()["herd"]["agree"]
    assert body["model"] == "strong" and body["choices"][0]["message"]["content"].startswith("strong: ")
    assert agree["agreed"] is False and agree["stands"] == "strong"
    assert len({s["answer"] for s in agree["first_stage"]}) == 3
    assert r.headers["x-herd-attempts"] == "4" and r.headers["x-herd-agreed"] == "no"
    assert [a["model"] for a in body["herd"]["attempts"]][-1] == "strong"
    assert _requests(backends)["strong"] == before["strong"] + 1
    assert body["herd"]["cost_usd"] > agree["first_stage_cost_usd"] > 0  # the strong call is paid for too
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["model"] == "strong" and record["calls"] == 4 and record["agree"]["agreed"] is False
    # Which first-stage models answered, never their answers: the log holds no text of the exchange.
    assert record["agree"]["answered"] == record["agree"]["asked"] and len(record["agree"]["asked"]) == 3
    assert "dispute" not in log.read_text() and "answers" not in record["agree"]
    assert record["cost_usd"] == pytest.approx(body["herd"]["cost_usd"])


@pytest.mark.parametrize("policy, failed, error, calls", [("herd:with-broken", "broken", "http 500", 4),
                                                          ("herd:with-slow", "slow", "read timeout", 3)])
def test_a_failed_first_stage_call_counts_as_disagreement(served, policy, failed, error, calls):
    gw, _, _ = served
    started = time.perf_counter()
    r = _ask(gw, policy)
    body = r.json()
    assert time.perf_counter() - started < 2.5  # the slow backend's reply (3 s) is not waited for
    assert body["model"] == "strong" and body["herd"]["agree"]["agreed"] is False
    steps = {s["model"]: s for s in body["herd"]["agree"]["first_stage"]}
    assert steps["local-a"]["answer"] == "42" and steps[failed] == {"model": failed, "error": error}
    assert r.headers["x-herd-attempts"] == str(calls)  # the broken model's retry is a call too
    assert f"{failed} failed: {error}" in r.headers["x-herd-answers"]


def test_a_private_request_never_reaches_a_public_model(served):
    gw, backends, _ = served
    before = _requests(backends)
    agreed = _ask(gw, "herd:checked-math", private=True).json()
    assert agreed["model"] == "local-a" and [s["model"] for s in agreed["herd"]["agree"]["first_stage"]] == \
        ["local-a", "local-c"]
    assert "cloud-b ruled out: lacks tag(s) ['on_prem']" in agreed["herd"]["reason"]
    # They disagree and the strong model is public: the best eligible model stands in, and says so.
    escalated = _ask(gw, "herd:checked-math", QUESTION + " dispute", private=True).json()
    assert escalated["model"] in ("local-a", "local-c") and escalated["herd"]["agree"]["agreed"] is False
    assert "strong cannot take this request" in escalated["herd"]["reason"]
    # Too few eligible first-stage models to agree: straight to the best eligible model.
    direct = _ask(gw, "herd", private=True).json()
    assert direct["model"] == "local-c" and direct["herd"]["attempts"] == [direct["herd"]["attempts"][0]]
    assert "fewer than the 2 that must agree" in direct["herd"]["reason"]
    after = _requests(backends)
    assert after["cloud-b"] == before["cloud-b"] and after["strong"] == before["strong"]
    assert after["local-a"] - before["local-a"] == after["local-c"] - before["local-c"] == 3


def test_excluded_first_stage_models_are_not_asked(served):
    gw, backends, _ = served
    before = _requests(backends)
    body = _ask(gw, "herd:checked-math", exclude=["local-c"]).json()
    assert [s["model"] for s in body["herd"]["agree"]["first_stage"]] == ["local-a", "cloud-b"]
    assert _requests(backends)["local-c"] == before["local-c"]


def test_accepted_and_escalated_answers_stream_to_the_openai_sdk(served):
    gw, _, _ = served
    client = openai.OpenAI(base_url=gw.url, api_key="unused")

    def stream(question: str):
        chunks = list(client.chat.completions.create(model="herd:checked-math", stream=True,
                                                     messages=[{"role": "user", "content": question}]))
        return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    chunks, text = stream(QUESTION)
    assert text == f"local-a: {QUESTION}" and chunks[0].model == "local-a"
    assert chunks[0].model_extra["herd"]["agree"]["agreed"] is True
    chunks, text = stream(QUESTION + " dispute")
    assert text == f"strong: {QUESTION} dispute" and chunks[0].model == "strong"
    herd = chunks[0].model_extra["herd"]
    assert herd["agree"]["agreed"] is False and len(herd["agree"]["first_stage"]) == 3


# ---- the pool file and the plan, without processes ----------------------------------------------------------------

def _pool(**extra) -> PoolConfig:
    models = [{"name": n, "base_url": "http://127.0.0.1:9/v1", **CHEAP} for n in ("a", "b", "c", "strong")]
    return PoolConfig.model_validate(json.loads(pool_yaml(models, **extra)))


@pytest.mark.parametrize("spec, words", [
    ({"name": "agree", "models": ["a", "nope"], "then": "strong", "grader": "number"}, r"\['nope'\] not in the pool"),
    ({"name": "agree", "models": ["a", "b"], "then": "strong", "grader": "vibes"}, "unknown grader 'vibes'"),
    ({"name": "agree", "models": ["a", "b"], "then": "strong", "need": 3, "grader": "number"}, "need must be between 2"),
    ({"name": "agree", "models": ["a", "b"], "then": "strong"}, "compares answers with a grader"),
    ("agree:a,b>strong", "compares answers with a grader"),
    ({"name": "agree", "models": ["a", "strong"], "then": "strong", "grader": "number"}, "both in the first stage"),
    ({"name": "agree", "grader": "number"}, "there is no router"),
])
def test_pool_errors_name_the_policy(spec, words):
    with pytest.raises(PoolError, match=f"policy 'herd:math': .*{words}"):
        Selector.from_config(_pool(policies={"math": spec}), None)


def test_the_gateway_refuses_a_bad_cascade_at_start_up(tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml([{"name": n, "base_url": "http://127.0.0.1:9/v1"} for n in ("a", "b", "strong")],
                              policy={"name": "agree", "models": ["a", "b"], "then": "strong", "grader": "vibes"}))
    with pytest.raises(PoolError, match="policy 'herd': unknown grader 'vibes'"):
        build_app(pool)  # what `herd serve` builds before it listens


def test_an_explicit_cascade_needs_no_router_and_plans_its_first_stage():
    sel = Selector.from_config(_pool(policy={"name": "agree", "models": ["a", "b", "c"], "then": "strong",
                                             "grader": "number"}), None)
    plan = sel.plan(parse_chat(json.dumps({"model": "herd", "messages": [{"role": "user", "content": "2+2?"}]})))
    assert plan.fan_out == ["a", "b", "c"] and plan.candidates[0] == "strong" and plan.first == "a"
    assert sel.policies["herd"].need_ == 2  # a strict majority of three by default
    # A cost ceiling bounds the whole cascade, not each call.
    capped = parse_chat(json.dumps({"model": "herd", "messages": [{"role": "user", "content": "2+2?"}],
                                    "max_tokens": 100, "herd": {"max_cost_usd": 5e-5}}))
    plan = sel.plan(capped)
    assert plan.fan_out == [] and plan.candidates[0] == "strong" and "over the ceiling" in plan.reason


def test_the_gateway_applies_the_offline_rule():
    policy = Agree(["a", "b", "c"], then="strong", need=2, grader="number").bind(["strong", "a", "b", "c"])
    grader = get_grader("number")
    cases = [({"a": "42", "b": "$42.00", "c": "7"}, "a"), ({"a": "1", "b": "7", "c": "7"}, "b"),
             ({"a": "1", "b": None, "c": "2"}, None), ({"b": "5", "c": "5"}, "b"), ({}, None)]
    for answers, stands in cases:
        assert agreed_model(policy, grader, answers) == stands
        recorded = np.array([[None, *(answers.get(m) for m in "abc")]], dtype=object)
        offline = policy.choose(None, None, answer_codes(recorded, "number"))[0]
        assert policy.pool_[offline] == (stands or "strong")


def test_a_trained_cascade_is_served_with_the_grader_the_pool_names(tmp_path):
    trained = train_toy_router(tmp_path / "argmax")
    models = [{"name": n, "base_url": "http://127.0.0.1:9/v1", **CHEAP} for n in ("math-7b", "hist-7b", "big-70b")]
    config = PoolConfig.model_validate(json.loads(pool_yaml(models, policy={"name": "agree", "grader": "number"})))
    with pytest.raises(PoolError, match="trained with 'argmax'"):
        Selector.from_config(config, trained)
    loaded = artifact.load(trained)
    loaded.policy = Agree(["math-7b", "hist-7b"], then="big-70b").bind(loaded.models)
    artifact.save(loaded, tmp_path / "agree")
    sel = Selector.from_config(config, tmp_path / "agree")
    assert sel.policies["herd"].grader == "number" and sel.policies["herd"].first_stage == ["math-7b", "hist-7b"]
    bare = PoolConfig.model_validate(json.loads(pool_yaml(models)))
    with pytest.raises(PoolError, match="policy 'herd': an agreement cascade compares answers with a grader"):
        Selector.from_config(bare, tmp_path / "agree")
