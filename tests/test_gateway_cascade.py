"""A checked cascade in `herd serve`: the first model's sampled answers are read (maj@k
agreement) before they stand; every step is in the `herd` metadata. Real processes on loopback."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway

from herd import artifact
from herd.data import Outcomes
from herd.gateway.selection import Selector
from herd.policies import ArgMax
from herd.pool import PoolConfig, PoolError
from herd.routers import make_router

HISTORY_Q = "the old kingdom and its war history question number 4"
# A fixed threshold: the tuned one is tested offline; here the online steps are.
CHECKED = {"name": "cascade-check", "models": ["hist-7b", "big-70b"], "samples": 3, "threshold": 0.5}


def _router_with_agreement(directory, rename: dict[str, str] | None = None):
    """The toy router, trained on outcomes where hist-7b is wrong on a third of its own topic too,
    and its three samples agreed exactly when it was right. ``rename`` gives models other names."""
    from conftest import make_frames

    q, o, models = make_frames()
    if rename:
        o["model"], models["model"] = o["model"].replace(rename), models["model"].replace(rename)
    number = o["qid"].str.rsplit("-", n=1).str[1].astype(int)
    slips = (o["model"] == "hist-7b") & o["qid"].str.startswith("history") & (number % 3 == 0)
    o.loc[slips, "correct"] = 0.0
    o["agreement"] = np.where(o["correct"] > 0, 1.0, 1 / 3)
    m = Outcomes.from_frames(q, o, models).matrix()
    return artifact.save(artifact.train("logistic", make_router("logistic"), ArgMax(), m), directory)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    d = tmp_path_factory.mktemp("cascade")
    _router_with_agreement(d / "router")
    with start_backend(name="hist-7b", vary_word="puzzle") as hist, start_backend(name="big-70b") as big:
        models = [{"name": "hist-7b", "base_url": hist.url, "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.2},
                  {"name": "big-70b", "base_url": big.url, "price_in_per_mtok": 5, "price_out_per_mtok": 15}]
        pool = d / "pool.yaml"
        pool.write_text(pool_yaml(models, router="router", policies={"checked": CHECKED}, not_served=["math-7b"]))
        with start_gateway(pool) as gw:
            yield gw, hist, big


def _ask(gw, question: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/chat/completions", timeout=30,
                      json={"model": "herd:checked", "messages": [{"role": "user", "content": question}]})


def test_agreeing_samples_stand_and_every_step_is_reported(gateway):
    gw, hist, big = gateway
    before = big.stats()["requests"]
    r = _ask(gw, HISTORY_Q)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "hist-7b" and r.headers["x-herd-model"] == "hist-7b"
    assert r.headers["x-herd-attempts"] == "3" and big.stats()["requests"] == before
    (step,) = body["herd"]["cascade"]
    assert step["model"] == "hist-7b" and step["samples"] == 3 and step["agreement"] == 1.0
    assert step["accepted"] is True and step["p_right"] >= step["threshold"]
    assert body["choices"][0]["message"]["content"].startswith("hist-7b: ")
    assert body["herd"]["cost_usd"] > 0 and "cascade-check" in body["herd"]["reason"]
    sent = hist.stats()["last_body"]
    assert sent["temperature"] == 0.7 and sent["seed"] in (0, 1, 2) and sent["stream"] is False


def test_disagreeing_samples_go_on_to_the_next_model(gateway):
    gw, hist, big = gateway
    r = _ask(gw, HISTORY_Q + " puzzle")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "big-70b" and r.headers["x-herd-attempts"] == "4"
    (step,) = body["herd"]["cascade"]
    assert step["agreement"] == pytest.approx(1 / 3, abs=1e-3) and step["accepted"] is False
    assert sorted(step["answers"]) == ["0", "1", "2"]
    assert [a["model"] for a in body["herd"]["attempts"]] == ["hist-7b"] * 3 + ["big-70b"]


def test_a_checked_answer_streams_to_the_openai_sdk(gateway):
    gw, _, _ = gateway
    client = openai.OpenAI(base_url=gw.url, api_key="unused")
    chunks = list(client.chat.completions.create(model="herd:checked", stream=True,
                                                 messages=[{"role": "user", "content": HISTORY_Q}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("hist-7b: ") and chunks[0].model == "hist-7b"
    herd = chunks[0].model_extra["herd"]
    assert herd["cascade"][0]["accepted"] is True
    escalated = list(client.chat.completions.create(model="herd:checked", stream=True,
                                                    messages=[{"role": "user", "content": HISTORY_Q + " puzzle"}]))
    assert escalated[0].model == "big-70b" and escalated[0].model_extra["herd"]["cascade"][0]["accepted"] is False


def test_a_scorer_trained_on_agreement_needs_samples(tmp_path):
    _router_with_agreement(tmp_path / "router")
    models = [{"name": n, "base_url": "http://127.0.0.1:9/v1"} for n in ("hist-7b", "big-70b", "math-7b")]
    for policy, words in (({**CHECKED, "samples": 1}, "set 'samples'"),
                          ({**CHECKED, "grader": "vibes"}, "unknown grader 'vibes'")):
        config = PoolConfig.model_validate(json.loads(pool_yaml(models, router="router", policies={"c": policy})))
        with pytest.raises(PoolError, match=words):
            Selector.from_config(config, tmp_path / "router")


def test_a_seed_herd_cannot_read_is_a_400(gateway):
    """The original: seed "abc", [1] or 1e999 made herd:checked fail with a 500 and two tracebacks."""
    gw, _, _ = gateway
    for seed in ("abc", [1]):
        r = httpx.post(f"{gw.url}/chat/completions", timeout=30, json={
            "model": "herd:checked", "seed": seed, "messages": [{"role": "user", "content": HISTORY_Q}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert "Traceback" not in gw.log()


def test_a_checked_503_counts_every_call_made(tmp_path):
    """The original: x-herd-attempts was 0 when the stubs had seen 6 calls."""
    _router_with_agreement(tmp_path / "router")
    with start_backend(name="hist-7b", fail_rate=1.0) as hist, start_backend(name="big-70b", fail_rate=1.0) as big:
        models = [{"name": "hist-7b", "base_url": hist.url, "retries": 0}, {"name": "big-70b", "base_url": big.url, "retries": 0}]
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml(models, router="router", policies={"checked": CHECKED}, not_served=["math-7b"]))
        with start_gateway(pool) as gw:
            r = _ask(gw, HISTORY_Q)
            assert r.status_code == 503
            assert int(r.headers["x-herd-attempts"]) == hist.stats()["requests"] + big.stats()["requests"] == 4
