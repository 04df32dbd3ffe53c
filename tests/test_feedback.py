"""POST /v1/feedback through `herd serve` as users run it: real processes on loopback, httpx and
the openai SDK as clients; the feedback log's lines after a SIGKILL; ids shared through Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from fake_backend import start_backend
from servers import RedisProcess, pool_yaml, redis_missing, start_gateway

KEYS = "keys:\n  - {name: alice, key: sk-alice}\n  - {name: bob, key: sk-bob}\n"
ALICE, BOB = {"authorization": "Bearer sk-alice"}, {"authorization": "Bearer sk-bob"}
STARTUP_S = 90  # several processes start on a shared machine


def models(*backends) -> list[dict]:
    return [{"name": b.name, "base_url": b.url, "retries": 0} for b in backends]


@pytest.fixture(scope="module")
def backends():
    started = [start_backend(name="small"), start_backend(name="large")]
    yield started
    for b in started:
        b.stop()


@pytest.fixture(scope="module")
def served(backends, tmp_path_factory):
    directory = tmp_path_factory.mktemp("feedback")
    pool, keys = directory / "pool.yaml", directory / "keys.yaml"
    pool.write_text(pool_yaml(models(*backends), gateway={"max_body_mb": 0.01}))
    keys.write_text(KEYS)
    log, choices = directory / "feedback.jsonl", directory / "choices.jsonl"
    gw = start_gateway(pool, "--api-keys-file", str(keys), "--feedback-log", str(log), "--choice-log", str(choices))
    yield gw, log, choices
    gw.stop()


def answer(gw, headers=ALICE, client=httpx, **extra) -> httpx.Response:
    """``client``: an httpx.Client for many requests (each bare httpx.post costs ~40 ms of CPU)."""
    return client.post(f"{gw.url}/chat/completions", headers=headers, timeout=30,
                       json={"model": "herd", "messages": [{"role": "user", "content": "what is 2 + 2?"}], **extra})


def feedback(gw, body, headers=ALICE) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{gw.url}/feedback", headers={**headers, "content-type": "application/json"}, content=body,
                          timeout=30)
    return httpx.post(f"{gw.url}/feedback", headers=headers, json=body, timeout=30)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_feedback_on_an_answer_is_logged_with_the_key_that_sent_it(served):
    gw, log, choices = served
    client = openai.OpenAI(base_url=gw.url, api_key="sk-alice", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="herd", messages=[{"role": "user", "content": "hi"}])
    rid = raw.headers["x-herd-request-id"]
    assert raw.parse().model_extra["herd"]["request_id"] == rid
    got = feedback(gw, {"request_id": rid, "score": 1, "label": "thumbs-up", "comment": "right first time"}, BOB)
    assert got.status_code == 200, got.text
    assert got.json() == {"object": "feedback", "request_id": rid, "score": 1.0, "label": "thumbs-up"}
    streamed = list(client.chat.completions.create(model="herd", messages=[{"role": "user", "content": "hi"}],
                                                   stream=True))
    sid = streamed[0].model_extra["herd"]["request_id"]
    assert feedback(gw, {"request_id": sid, "score": 0.25}).status_code == 200
    mine = {r["request_id"]: r for r in lines(log)}
    assert set(mine[rid]) == {"time", "request_id", "score", "label", "comment", "key"}
    assert mine[rid]["key"] == "bob" and mine[rid]["score"] == 1.0 and mine[rid]["comment"] == "right first time"
    assert mine[sid] == {**mine[sid], "score": 0.25, "label": None, "comment": None, "key": "alice"}
    assert {r["request_id"] for r in lines(choices)} >= {rid, sid}  # the choice log joins on the same id
    metrics = httpx.get(f"{gw.root}/metrics", timeout=10).text
    assert 'herd_feedback_total{key="bob",result="accepted"} 1.0' in metrics


@pytest.mark.parametrize("body, status, said", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"score": 1}, 422, "'request_id' is required"),
    ({"request_id": 7, "score": 1}, 422, "'request_id' is required"),
    ({"request_id": "x" * 129, "score": 1}, 422, "at most 128"),
    ({"request_id": "0" * 32, "score": 1}, 404, "not one this gateway answered"),
    ({"request_id": "RID"}, 422, "'score' must be a number"),
    ({"request_id": "RID", "score": 1.5}, 422, "from 0 (wrong) to 1 (right); got 1.5"),
    ({"request_id": "RID", "score": -0.1}, 422, "got -0.1"),
    ({"request_id": "RID", "score": "1"}, 422, 'got "1"'),
    ({"request_id": "RID", "score": True}, 422, "got true"),
    ('{"request_id": "RID", "score": NaN}', 422, "got NaN"),
    ({"request_id": "RID", "score": 1, "label": 5}, 422, "'label' must be a string"),
    ({"request_id": "RID", "score": 1, "label": "x" * 65}, 422, "'label' is 65 characters; at most 64"),
    ({"request_id": "RID", "score": 1, "comment": "x" * 2001}, 422, "'comment' is 2001 characters; at most 2000"),
    ({"request_id": "RID", "score": 1, "rating": 5}, 422, "unknown field(s) ['rating']"),
    ({"request_id": "RID", "score": 1, "comment": "x" * 20_000}, 413, "larger than"),
])
def test_bad_feedback_gets_a_clear_4xx_in_openais_shape(served, body, status, said):
    gw, log, _ = served
    rid = answer(gw).headers["x-herd-request-id"]
    if isinstance(body, dict):
        body = {k: rid if v == "RID" else v for k, v in body.items()}
    elif isinstance(body, str):
        body = body.replace("RID", rid)
    got = feedback(gw, body)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert said in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert rid not in log.read_text()
    assert feedback(gw, {"request_id": rid, "score": 0}).status_code == 200  # refused feedback claims nothing


def test_repeats_unanswered_requests_and_strangers_are_refused(served):
    gw, log, _ = served
    rid = answer(gw).headers["x-herd-request-id"]
    assert feedback(gw, {"request_id": rid, "score": 1}).status_code == 200
    again = feedback(gw, {"request_id": rid, "score": 0}, BOB)
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_exists"
    assert [r["score"] for r in lines(log) if r["request_id"] == rid] == [1.0]
    refused = answer(gw, herd={"exclude": ["small", "large"]})  # a 400: nothing was answered
    assert refused.status_code == 400
    unanswered = feedback(gw, {"request_id": refused.headers["x-herd-request-id"], "score": 1})
    assert unanswered.status_code == 404 and unanswered.json()["error"]["code"] == "request_not_found"
    assert feedback(gw, {"request_id": rid, "score": 1}, {}).status_code == 401
    assert feedback(gw, {"request_id": rid, "score": 1}, {"authorization": "Bearer sk-eve"}).status_code == 401
    assert httpx.get(f"{gw.url}/feedback", headers=ALICE, timeout=10).status_code == 405
    metrics = httpx.get(f"{gw.root}/metrics", timeout=10).text
    assert 'herd_feedback_total{key="bob",result="repeat"} 1.0' in metrics
    assert 'herd_feedback_total{key="alice",result="unknown"}' in metrics


def test_without_a_feedback_log_the_endpoint_says_it_is_off(backends, tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml(models(*backends)))
    with start_gateway(pool) as gw:
        rid = answer(gw, headers={}).headers["x-herd-request-id"]
        got = feedback(gw, {"request_id": rid, "score": 1}, {})
    assert got.status_code == 404 and got.json()["error"]["code"] == "feedback_off"
    assert "--feedback-log" in got.json()["error"]["message"]


def test_serve_refuses_workers_without_shared_state_for_feedback(backends, tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml(models(*backends)))
    out = subprocess.run([sys.executable, "-m", "herd", "serve", str(pool), "--workers", "2", "--feedback-log",
                          str(tmp_path / "fb.jsonl")], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "HERD_STATE_URL"})
    assert out.returncode != 0 and "HERD_STATE_URL" in out.stderr and "--workers 1" in out.stderr


def test_acknowledged_feedback_survives_a_sigkill_whole(backends, tmp_path):
    """Feedback sent from 8 threads while the server is killed: every acknowledged line is in
    the log, every line is whole JSON, and no request has two."""
    pool, log = tmp_path / "pool.yaml", tmp_path / "feedback.jsonl"
    pool.write_text(pool_yaml(models(*backends)))
    gw = start_gateway(pool, "--feedback-log", str(log))
    try:
        with httpx.Client() as client:
            ids = [answer(gw, headers={}, client=client).headers["x-herd-request-id"] for _ in range(400)]
        acknowledged, lock, started = [], threading.Lock(), threading.Event()

        def send(share: list[str]) -> None:
            with httpx.Client(timeout=10) as c:
                for rid in share:
                    try:
                        r = c.post(f"{gw.url}/feedback", json={"request_id": rid, "score": 0.5, "comment": "é" * 500})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acknowledged.append(rid)
                            if len(acknowledged) >= 50:
                                started.set()

        threads = [threading.Thread(target=send, args=(ids[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        assert started.wait(timeout=60)
        gw.proc.kill()  # SIGKILL: no shutdown, no flush
        gw.proc.wait(timeout=10)
        for t in threads:
            t.join(timeout=30)
    finally:
        gw.stop()
    written = lines(log)  # raises if any line is cut
    assert len(acknowledged) < len(ids)  # killed mid-flight, not after the last
    assert set(acknowledged) <= {r["request_id"] for r in written}
    assert len({r["request_id"] for r in written}) == len(written)
    assert all(r["comment"] == "é" * 500 for r in written)


@pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))
def test_ids_are_shared_through_redis_by_workers_and_replicas_until_the_window_ends(backends, tmp_path):
    import time

    pool, log = tmp_path / "pool.yaml", tmp_path / "feedback.jsonl"
    window_s = 8
    pool.write_text(pool_yaml(models(*backends), gateway={"feedback_window_days": window_s / 86400}))
    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisProcess(directory) as redis_server:
        env = {"HERD_STATE_URL": redis_server.url}
        with start_gateway(pool, "--workers", "2", "--feedback-log", str(log), env=env, timeout=STARTUP_S) as a, \
                start_gateway(pool, "--feedback-log", str(log), env=env, timeout=STARTUP_S) as b:
            sent = []
            for i in range(20):  # answered by one, fed back to the other; fresh connections reach either worker
                first, second = (a, b) if i % 2 else (b, a)
                rid = answer(first, headers={}).headers["x-herd-request-id"]
                got = feedback(second, {"request_id": rid, "score": i / 19}, {})
                assert got.status_code == 200, got.text
                assert feedback(first, {"request_id": rid, "score": 1}, {}).status_code == 409
                sent.append(rid)
            late = answer(a, headers={}).headers["x-herd-request-id"]
            time.sleep(window_s + 1.5)
            expired = feedback(b, {"request_id": late, "score": 1}, {})
            assert expired.status_code == 404 and "in the last 8 s" in expired.json()["error"]["message"]
    assert [r["request_id"] for r in lines(log)] == sent


def test_in_process_ids_expire_and_the_oldest_go_first_beyond_the_cap(monkeypatch):
    import asyncio
    import time

    from herd.gateway import state as st

    async def run():
        local = st.LocalState()
        await local.remember_answered("old", 0.05)
        await local.remember_answered("new", 60)
        assert await local.claim_feedback("new") == "ok" and await local.claim_feedback("new") == "repeat"
        await local.release_feedback("new")
        assert await local.claim_feedback("new") == "ok"
        time.sleep(0.06)
        assert await local.claim_feedback("old") == "unknown"
        monkeypatch.setattr(st, "LOCAL_ANSWERED", 3)
        for i in range(5):
            await local.remember_answered(f"id{i}", 60)
        assert len(local.answered) == 3 and await local.claim_feedback("id1") == "unknown"
        assert await local.claim_feedback("id4") == "ok"

    asyncio.run(run())


@pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))
def test_while_redis_is_down_an_id_is_never_called_unknown(tmp_path):
    import asyncio

    from herd.gateway.state import RedisState, StateDown

    with RedisProcess(tmp_path) as redis_server:
        async def run():
            state = RedisState(redis_server.url)
            await state.remember_answered("seen", 60)
            assert await state.claim_feedback("seen") == "ok" and await state.claim_feedback("seen") == "repeat"
            await state.release_feedback("seen")
            assert await state.redis.call("TTL", "herd:answered:seen") > 0  # the release keeps the expiry
            assert await state.claim_feedback("never") == "unknown"
            redis_server.kill()
            await state.remember_answered("during", 60)  # kept in this process meanwhile
            assert await state.claim_feedback("during") == "ok"
            with pytest.raises(StateDown):
                await state.claim_feedback("seen")
            await state.close()

        asyncio.run(run())
