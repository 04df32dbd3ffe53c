"""The gateway through create_app in this process: its backends are fake ASGI apps reached through
an injected session factory (tests/inprocess.py), and the client is httpx on the app itself.
The same behaviours run over real sockets in test_gateway.py and test_gateway_faults.py."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import pytest
from fake_backend import make_app
from inprocess import AppSession
from servers import train_toy_router

from herd.backends import Outcome
from herd.gateway.app import create_app
from herd.gateway.selection import Selector
from herd.pool import GatewaySettings, ModelConfig, PoolConfig
from herd.retry import RetryPolicy

MATH = "add the numbers math question number 7"
HISTORY = "which emperor ruled rome history question number 3"
MODELS = ["math-7b", "hist-7b", "big-70b"]


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    return train_toy_router(tmp_path_factory.mktemp("router") / "router")


@asynccontextmanager
async def herd(apps: dict, router_dir=None, **model_fields):
    """A gateway over ``apps`` (model name -> fake backend app), each model at http://NAME/v1,
    and an httpx client on it; its lifespan runs, so it warms up and closes its backends."""
    pool = PoolConfig.model_validate({
        **({"router": str(router_dir)} if router_dir else {}),
        "models": [{"name": name, "base_url": f"http://{name}/v1", "price_in_per_mtok": 1.0,
                    "price_out_per_mtok": 2.0, **model_fields} for name in apps],
        "gateway": {"backoff_s": 0.01, "max_backoff_s": 0.05}})
    app = create_app(pool, Selector.from_config(pool, router_dir), session_factory=lambda: AppSession(apps))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://herd/v1") as client:
            yield client


def chat(client: httpx.AsyncClient, text: str, model: str = "herd", **fields):
    return client.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}],
                                                  **fields})


def run(work) -> None:
    asyncio.run(asyncio.wait_for(work, 60))


def test_routes_by_name_and_by_router(router_dir):
    apps = {name: make_app(name) for name in MODELS}

    async def main():
        async with herd(apps, router_dir, extra_headers={"x-team": "herd"}) as client:
            by_name = await chat(client, MATH, model="big-70b")
            math, history = await chat(client, MATH), await chat(client, HISTORY)
        assert by_name.status_code == 200 and by_name.json()["model"] == "big-70b"
        assert by_name.headers["x-herd-model"] == "big-70b" and by_name.json()["herd"]["scores"] == {}
        assert math.json()["model"] == "math-7b" and history.json()["model"] == "hist-7b"
        assert math.json()["choices"][0]["message"]["content"] == f"math-7b: {MATH}"
        assert "highest predicted P(correct)" in math.headers["x-herd-reason"]
        assert math.json()["herd"]["cost_usd"] > 0 and math.headers["x-herd-attempts"] == "1"
        assert [apps[m].stats["requests"] for m in MODELS] == [1, 1, 1]
        assert apps["big-70b"].stats["last_headers"]["x-team"] == "herd"  # the pool's headers reach the backend

    run(main())


def test_a_backend_error_falls_back_to_the_next_model():
    apps = {"math-7b": make_app("math-7b", fail_rate=1.0, status=500), "big-70b": make_app("big-70b")}

    async def main():
        async with herd(apps, retries=0) as client:
            r = await chat(client, MATH)
        assert r.status_code == 200 and r.json()["model"] == "big-70b"
        assert r.headers["x-herd-fallback"] == "from math-7b: http 500" and r.headers["x-herd-attempts"] == "2"
        herd_ = r.json()["herd"]
        assert herd_["chosen"] == "math-7b" and [a["outcome"] for a in herd_["attempts"]] == ["http 500", "ok"]
        assert apps["math-7b"].stats["requests"] == apps["big-70b"].stats["requests"] == 1

    run(main())


def test_a_stream_is_relayed_with_the_pool_name_and_herd_metadata_first():
    apps = {"math-7b": make_app("math-7b", chunks=4), "big-70b": make_app("big-70b")}

    async def main():
        async with herd(apps) as client:
            r = await chat(client, MATH, stream=True)
            asked = await chat(client, MATH, stream=True, stream_options={"include_usage": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["herd"]["model"] == "math-7b" and all("herd" not in c for c in chunks[1:])
        assert all(c["model"] == "math-7b" for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == f"math-7b: {MATH}"
        assert not any("usage" in c for c in chunks)  # herd asked the backend for it; the client did not
        # The backend was asked for usage either way, and a client that asks for it gets it.
        assert apps["math-7b"].stats["last_body"]["stream_options"] == {"include_usage": True}
        assert json.loads(asked.text.split("\n\n")[-3][6:])["usage"]["completion_tokens"] > 0

    run(main())


def test_transient_failures_are_retried_on_the_same_model_and_refusals_are_not():
    apps = {"math-7b": make_app("math-7b", fail_first=2, status=503), "big-70b": make_app("big-70b")}

    async def main():
        async with herd(apps, retries=2) as client:
            retried = await chat(client, MATH)
        assert retried.json()["model"] == "math-7b" and retried.headers["x-herd-attempts"] == "3"
        assert [a["outcome"] for a in retried.json()["herd"]["attempts"]] == ["http 503", "http 503", "ok"]
        assert apps["big-70b"].stats["requests"] == 0

        refusing = {"math-7b": make_app("math-7b", fail_first=1, status=401), "big-70b": make_app("big-70b")}
        async with herd(refusing, retries=2) as client:
            refused = await chat(client, MATH)
        assert refused.json()["model"] == "big-70b" and refusing["math-7b"].stats["requests"] == 1

    run(main())


def test_one_retry_rule_for_the_gateway_and_collection():
    """Both retry transient failures and neither a refusal or a bad request; only collection,
    with no other model to ask and nobody waiting, retries a timeout and waits out a long
    Retry-After."""
    settings = GatewaySettings(backoff_s=0.2, max_backoff_s=5.0)
    gateway, collection = RetryPolicy.gateway(ModelConfig(name="m", base_url="http://m/v1"), settings), \
        RetryPolicy.collection(5, settings)
    assert (gateway.attempts, collection.attempts) == (3, 6)

    def again(policy, kind, attempt=0, retry_after=None) -> bool:
        return policy.pause(Outcome(kind, "", retry_after=retry_after), attempt) is not None

    for policy in (gateway, collection):
        assert again(policy, "transient") and not again(policy, "transient", attempt=policy.attempts - 1)
        assert not any(again(policy, kind) for kind in ("refused", "client", "too_long", "ok"))
        assert 0 <= policy.delay(3, None) <= 5.0 and policy.delay(0, 3.0) == 3.0
    assert again(collection, "timeout") and not again(gateway, "timeout")
    assert again(collection, "transient", retry_after=30) and not again(gateway, "transient", retry_after=30)
    assert not again(collection, "transient", retry_after=1e6)  # a closed door: recorded, asked next run


def test_with_no_wait_for_a_slot_a_free_slot_is_still_taken():
    """``slot_wait_s: 0`` passes over a backend at its max_concurrency, and only such a one: a
    free slot is taken at once, not timed out before it is asked for."""
    from herd.backends import Backend

    body = {"messages": [{"role": "user", "content": "2+2?"}]}

    async def go():
        config = ModelConfig(name="m", base_url="http://m/v1", max_concurrency=1)
        backend = Backend(config, GatewaySettings(slot_wait_s=0), lambda: AppSession({"m": make_app("m", delay_s=0.3)}))
        first = asyncio.ensure_future(backend.call(body, slot_wait_s=0))
        for _ in range(100):
            if backend.in_flight or first.done():
                break
            await asyncio.sleep(0.01)
        busy = await backend.call(body, slot_wait_s=0)  # the only slot is the first call's
        answered = await first
        await backend.close()
        return answered, busy

    answered, busy = asyncio.run(go())
    assert answered.kind == "ok" and busy.kind == "busy"


def test_what_the_json_encoder_cannot_write_still_reaches_the_backend_and_the_client():
    """Bodies go out through orjson, which refuses integers beyond 64 bits and lone surrogates;
    such a request is still forwarded as written, and its echoed answer returned."""
    apps = {"m": make_app("m")}
    text, big = "odd \ud800 text", 10**30

    async def main():
        async with herd(apps) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": text}], "logit_bias": {"50256": big}}
            r = await client.post("/chat/completions", content=json.dumps(body).encode(),
                                  headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert apps["m"].stats["last_body"]["logit_bias"] == {"50256": big}
        assert apps["m"].stats["last_body"]["messages"][0]["content"] == text
        assert r.json()["choices"][0]["message"]["content"] == f"m: {text}"

    run(main())


def test_a_served_gateway_sets_its_start_up_heap_aside_from_garbage_collection():
    """`herd serve` builds its app with freeze_heap: a full collection no longer scans the router
    and libraries loaded at start-up. An app built for tests leaves the collector alone."""
    import gc

    pool = PoolConfig.model_validate({"models": [{"name": "m", "base_url": "http://m/v1"}]})

    async def start(freeze_heap: bool) -> int:
        app = create_app(pool, Selector.from_config(pool, None), session_factory=lambda: AppSession({}),
                         freeze_heap=freeze_heap)
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    assert gc.get_freeze_count() == 0
    try:
        assert asyncio.run(start(False)) == 0
        assert asyncio.run(start(True)) > 1000
    finally:
        gc.unfreeze()
