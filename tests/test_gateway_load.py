"""A bounded load test on loopback: 2,000 requests at concurrency 64 while one backend fails 30% of
its calls and another is killed mid-run. No request may be lost, and every response must report
the calls that were really made."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

REQUESTS, CONCURRENCY, KILL_AFTER = 2000, 64, 600
QUESTIONS = ["add the numbers math question number {i}", "which emperor ruled rome history question number {i}",
             "write a python function code question number {i}"]


async def run_load(url: str, kill) -> list[tuple[int, dict, dict]]:
    results: list[tuple[int, dict, dict]] = []
    todo = iter(range(REQUESTS))

    async def worker(session):
        for i in todo:
            body = {"model": "herd", "messages": [{"role": "user", "content": QUESTIONS[i % 3].format(i=i)}]}
            async with session.post(url, json=body) as r:
                results.append((r.status, dict(r.headers), await r.json()))
            if len(results) == KILL_AFTER:
                kill()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(CONCURRENCY))), timeout=240)
    return results


@pytest.fixture
def backends():
    started = {"math-7b": start_backend(name="math-7b"),  # killed mid-run
               "hist-7b": start_backend(name="hist-7b", fail_rate=0.3, seed=1),
               "big-70b": start_backend(name="big-70b")}
    yield started
    for b in started.values():
        b.stop()


def test_no_request_is_lost_and_attempt_chains_are_true(tmp_path, backends):
    router = train_toy_router(tmp_path / "router")
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml([{"name": n, "base_url": b.url} for n, b in backends.items()], str(router),
                              gateway={"circuit_failures": 5, "circuit_cooldown_s": 1.0}))
    with start_gateway(pool) as gw:
        results = asyncio.run(run_load(f"{gw.url}/chat/completions", backends["math-7b"].kill))

    assert len(results) == REQUESTS
    assert [s for s, _, _ in results if s != 200] == []
    calls = {name: 0 for name in backends}
    kinds = {name: set() for name in backends}
    for _, headers, body in results:
        attempts = body["herd"]["attempts"]
        made = [a for a in attempts if "ms" in a]
        assert attempts[0]["model"] == body["herd"]["chosen"]
        assert attempts[-1] == {"model": body["model"], "outcome": "ok", "ms": attempts[-1]["ms"]}
        assert all(a["outcome"] != "ok" for a in attempts[:-1])
        order = [a["model"] for a in attempts]
        assert order == sorted(order, key=order.index)  # each model's tries are together: no going back
        assert headers["x-herd-model"] == body["model"] and int(headers["x-herd-attempts"]) == len(made)
        assert body["choices"][0]["message"]["content"].startswith(body["model"] + ": ")
        for a in made:
            calls[a["model"]] += 1
            kinds[a["model"]].add(a["outcome"].split(" (")[0])
    # Every call a backend received is in some response's chain (the killed one lost its counter).
    for name in ("hist-7b", "big-70b"):
        assert calls[name] == backends[name].stats()["requests"]
    assert kinds["hist-7b"] == {"ok", "http 500"} and "connection error" in kinds["math-7b"]
    answered_by = {name: sum(b["model"] == name for _, _, b in results) for name in backends}
    assert all(answered_by.values()), answered_by
