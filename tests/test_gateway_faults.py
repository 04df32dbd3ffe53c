"""Reliability under injected faults: retries, fallbacks, circuit breakers, broken streams,
timeouts, disconnects and shutdown. Every server is a real process on loopback."""

from __future__ import annotations

import re
import signal
import threading
import time

import httpx
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

MATH = "add the numbers math question number 7"


def ask(text: str = MATH) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    return train_toy_router(tmp_path_factory.mktemp("router") / "router")


def serve(tmp_path, router_dir, first: dict, second: dict | None = None, gateway: dict | None = None, **pool_extra):
    """math-7b (the router's first choice for MATH) on a backend with ``first``'s faults, and
    big-70b, the fallback, on one with ``second``'s. Returns (gateway, first, second)."""
    b1 = start_backend(name="math-7b", **first)
    b2 = start_backend(name="big-70b", **(second or {}))
    models = [{"name": "math-7b", "base_url": b1.url, "retries": pool_extra.pop("retries", 2), **pool_extra},
              {"name": "big-70b", "base_url": b2.url}]
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml(models, str(router_dir), gateway=gateway, not_served=["hist-7b"]))
    return start_gateway(pool), b1, b2


@pytest.fixture
def stack(request, tmp_path, router_dir):
    started = []

    def make(*args, **kwargs):
        parts = serve(tmp_path, router_dir, *args, **kwargs)
        started.extend(parts)
        return parts

    yield make
    for part in started:
        part.stop()


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=30)


def wait_for(check, what: str, timeout: float = 30) -> None:
    """Poll ``check`` until it holds: a sleep would guess how long a busy machine takes."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout:g} s"
        time.sleep(0.02)


def test_5xx_is_retried_then_falls_back(stack):
    gw, b1, b2 = stack({"fail_rate": 1.0, "status": 503})
    raw = sdk(gw).chat.completions.with_raw_response.create(model="herd", messages=ask())
    answer = raw.parse()
    assert answer.model == "big-70b"
    # The original: x-herd-model said big-70b while x-herd-reason still told the plan for math-7b.
    assert raw.headers["x-herd-model"] == "big-70b"
    assert raw.headers["x-herd-fallback"] == "from math-7b: http 503 (3 calls)"
    assert raw.headers["x-herd-reason"].startswith("fell back to big-70b (math-7b: http 503 (3 calls)); the plan was: ")
    assert answer.model_extra["herd"]["reason"] == raw.headers["x-herd-reason"]
    assert answer.model_extra["herd"]["fallback"] == raw.headers["x-herd-fallback"]
    attempts = answer.model_extra["herd"]["attempts"]
    assert [(a["model"], a["outcome"]) for a in attempts] == [("math-7b", "http 503")] * 3 + [("big-70b", "ok")]
    assert b1.stats()["requests"] == 3  # one call and two retries
    assert 'herd_fallbacks_total{from_model="math-7b"} 1.0' in httpx.get(f"{gw.root}/metrics").text


def test_429_is_retried_on_the_same_model(stack):
    gw, b1, _ = stack({"rate_limit_rate": 0.5, "seed": 3}, retries=6)
    models = set()
    for _ in range(6):
        answer = sdk(gw).chat.completions.create(model="herd", messages=ask())
        outcomes = [a["outcome"] for a in answer.model_extra["herd"]["attempts"]]
        models.add(answer.model)
        assert outcomes[-1] == "ok" and set(outcomes[:-1]) <= {"http 429"}
    assert models == {"math-7b"} and b1.stats()["requests"] > 6  # some calls were retried


def test_4xx_is_not_retried_and_reaches_the_client(stack):
    gw, b1, b2 = stack({"fail_rate": 1.0, "status": 422})
    with pytest.raises(openai.UnprocessableEntityError):
        sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert b1.stats()["requests"] == 1 and b2.stats()["requests"] == 0


def test_dead_backend_falls_back_and_its_circuit_opens(stack):
    gw, b1, _ = stack({}, gateway={"circuit_failures": 3, "circuit_cooldown_s": 60}, retries=0)
    b1.kill()
    first = sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert first.model == "big-70b" and first.model_extra["herd"]["attempts"][0]["outcome"].startswith("connection error")
    for _ in range(3):
        last = sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert last.model_extra["herd"]["attempts"][0] == {"model": "math-7b", "outcome": "skipped: circuit open"}
    health = httpx.get(f"{gw.root}/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["models"]["math-7b"]["state"] == "open"


def test_named_model_that_is_down_is_a_clear_503(stack):
    gw, b1, _ = stack({"fail_rate": 1.0})
    with pytest.raises(openai.InternalServerError) as e:
        sdk(gw).chat.completions.create(model="math-7b", messages=ask())
    assert e.value.status_code == 503 and "no eligible model answered (math-7b: http 500" in e.value.message
    assert e.value.response.headers["x-herd-attempts"] == "3"


def test_read_timeout_falls_back(stack):
    gw, _, _ = stack({"delay_s": 6.0}, timeout_s=0.3)
    started = time.perf_counter()
    answer = sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert answer.model == "big-70b" and answer.model_extra["herd"]["attempts"][0]["outcome"] == "read timeout"
    assert time.perf_counter() - started < 4.5  # not held for math-7b's 6 s


def test_stream_dropped_before_first_byte_falls_back(stack):
    gw, _, _ = stack({"drop_before_first_byte": True}, retries=0)
    chunks = list(sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True))
    herd = chunks[0].model_extra["herd"]
    assert herd["model"] == "big-70b" and herd["attempts"][0]["outcome"].startswith("connection error")
    assert herd["fallback"].startswith("from math-7b: connection error") and herd["reason"].startswith("fell back to big-70b")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"big-70b: {MATH}"


def test_stream_broken_midway_ends_with_an_error_not_a_silent_cut(stack):
    gw, _, b2 = stack({"drop_mid_stream": True})
    stream = sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True)
    first = next(stream)
    assert first.model == "math-7b"
    with pytest.raises(openai.APIError, match="broke the stream"):
        list(stream)
    assert b2.stats()["requests"] == 0  # bytes had reached the client: no fallback


def test_a_stream_closed_without_an_end_is_an_error_not_a_silent_cut(stack):
    """The original: a backend that closed the connection mid-stream (no [DONE], no finish_reason)
    gave the client a 200 with partial text and no error, counted as a success."""
    gw, _, _ = stack({"cut_stream": True})
    stream = sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True)
    assert next(stream).model == "math-7b"
    with pytest.raises(openai.APIError, match="broke the stream"):
        list(stream)
    metrics = httpx.get(f"{gw.root}/metrics").text
    assert 'herd_requests_total{route="herd",status="502"} 1.0' in metrics
    assert 'herd_attempt_errors_total{kind="stream broken",model="math-7b"} 1.0' in metrics


def test_a_close_delimited_stream_with_an_end_is_whole(stack):
    gw, _, _ = stack({"close_delimited": True})
    chunks = list(sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"math-7b: {MATH}"
    assert 'herd_requests_total{route="herd",status="200"} 1.0' in httpx.get(f"{gw.root}/metrics").text


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_the_backend_call(stack, stream):
    gw, b1, _ = stack({"first_byte_delay_s": 5.0} if stream else {"delay_s": 5.0})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": ask(), "stream": stream}, timeout=0.5)
    deadline = time.monotonic() + 30
    while httpx.get(f"{gw.root}/health").json()["models"]["math-7b"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    health = httpx.get(f"{gw.root}/health").json()["models"]["math-7b"]
    assert health["in_flight"] == 0 and health["state"] == "closed"  # cancelled, not counted as a failure


def test_graceful_shutdown_lets_in_flight_requests_finish(stack):
    gw, b1, _ = stack({"delay_s": 2.0})
    result = {}

    def call():
        result["answer"] = sdk(gw).chat.completions.create(model="herd", messages=ask())

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: b1.stats()["requests"] == 1, "asked math-7b")
    assert "answer" not in result  # in flight: math-7b takes 2 s
    gw.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert result["answer"].model == "math-7b"
    # uvicorn re-raises the signal once shutdown is complete, so the exit status says SIGTERM.
    assert gw.proc.wait(timeout=10) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in gw.log() and "Traceback" not in gw.log()


def test_streams_hold_their_backend_slot_until_they_end(stack):
    # Each stream takes ~1.2 s (four paced events after the first, usage included): the third
    # waits for two, within the slot wait.
    gw, b1, _ = stack({"chunk_delay_s": 0.3}, max_concurrency=1, gateway={"slot_wait_s": 10})
    results = []

    def call():
        chunks = list(sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True))
        results.append(chunks[0].model_extra["herd"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: requests_in_flight(gw) >= 2, "two streams at the gateway")
    assert httpx.get(f"{gw.root}/health").json()["models"]["math-7b"]["in_flight"] == 1  # bounded, and counted
    for t in threads:
        t.join(timeout=20)
    assert [h["model"] for h in results] == ["math-7b"] * 3  # queued for the slot, not failed over
    assert all(len(h["attempts"]) == 1 for h in results)
    assert httpx.get(f"{gw.root}/health").json()["models"]["math-7b"] | {"in_flight": 0, "state": "closed"} == \
        httpx.get(f"{gw.root}/health").json()["models"]["math-7b"]


def requests_in_flight(gw) -> float:
    """Chat requests the gateway is answering, those waiting for a backend slot included."""
    metrics = httpx.get(f"{gw.root}/metrics").text
    return float(re.search(r"^herd_requests_in_flight (\S+)$", metrics, re.M)[1])


def test_odd_backend_json_is_relayed_without_errors(stack):
    gw, _, _ = stack({"odd_json": True})
    answer = sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert answer.model == "math-7b" and answer.choices[0].message.content == f"math-7b: {MATH}"
    chunks = list(sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if isinstance(c.choices, list) and c.choices) \
        == f"math-7b: {MATH}"
    assert "Traceback" not in gw.log()


def test_keepalive_comments_do_not_commit_a_stream(stack):
    gw, _, _ = stack({"keepalive_first": True})
    chunks = list(sdk(gw).chat.completions.create(model="herd", messages=ask(), stream=True))
    assert chunks[0].model_extra["herd"]["model"] == "math-7b"


def test_too_long_for_one_model_goes_to_the_next_and_else_reaches_the_client(stack):
    gw, b1, b2 = stack({"context_tokens": 50}, {"context_tokens": 500})
    long = MATH + " " + "word " * 200  # ~260 tokens: too long for math-7b's backend only
    answer = sdk(gw).chat.completions.create(model="herd", messages=ask(long))
    assert answer.model == "big-70b"
    assert answer.model_extra["herd"]["attempts"][0]["outcome"] == "http 400 (too long for this model)"
    assert b1.stats()["requests"] == 1  # not retried
    with pytest.raises(openai.BadRequestError) as e:
        sdk(gw).chat.completions.create(model="herd", messages=ask(MATH + " " + "word " * 3000))
    assert e.value.code == "context_length_exceeded"
    assert httpx.get(f"{gw.root}/health").json()["models"]["math-7b"]["state"] == "closed"


def test_a_model_at_max_concurrency_falls_back_after_a_bounded_wait(stack):
    """The original: requests waited 23 s for a busy model instead of going to another eligible one."""
    gw, b1, b2 = stack({"delay_s": 6.0}, gateway={"slot_wait_s": 0.3}, max_concurrency=1)

    def ask_herd(out: list):
        out.append(sdk(gw).chat.completions.create(model="herd", messages=ask()))

    first: list = []
    holder = threading.Thread(target=ask_herd, args=(first,))
    holder.start()
    wait_for(lambda: b1.stats()["requests"] == 1, "asked math-7b")  # the first request holds its only slot, 6 s
    started = time.perf_counter()
    second = sdk(gw).chat.completions.create(model="herd", messages=ask())
    assert second.model == "big-70b" and time.perf_counter() - started < 4.5
    assert second.model_extra["herd"]["attempts"][0]["outcome"].startswith("skipped: busy")
    holder.join(30)
    assert first[0].model == "math-7b" and b1.stats()["requests"] == 1
