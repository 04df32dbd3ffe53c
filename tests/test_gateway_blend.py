"""Blending in `herd serve`: a model drawn per turn, reproducible from the session and the history
alone (no state in the gateway), logged per turn for A/B tests; and the learned blend, the
router reading the running conversation. Real processes on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter

import httpx
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

NAMES = ["math-7b", "hist-7b", "big-70b"]
SECRET = "a-test-secret-of-enough-length"


def session_id(session: str) -> str:
    return hmac.new(SECRET.encode(), session.encode(), hashlib.sha256).hexdigest()[:32]


@pytest.fixture(scope="module")
def blended(tmp_path_factory):
    d = tmp_path_factory.mktemp("blend")
    train_toy_router(d / "router")
    backends = {n: start_backend(name=n) for n in NAMES}
    models = [{"name": n, "base_url": b.url, "price_in_per_mtok": 1, "price_out_per_mtok": 2} for n, b in backends.items()]
    policies = {"mix": "blend", "weighted": {"name": "blend", "models": ["math-7b", "hist-7b"],
                                             "weights": {"math-7b": 3, "hist-7b": 1}}}
    pool = d / "pool.yaml"
    pool.write_text(pool_yaml(models, router="router", policies=policies))
    log = d / "choices.jsonl"
    gw = start_gateway(pool, "--choice-log", str(log), env={"HERD_SESSION_SECRET": SECRET})
    yield gw, log
    gw.stop()
    for b in backends.values():
        b.stop()


def conversation(turns: int, opening: str = "hello there") -> list[dict]:
    messages = [{"role": "user", "content": opening}]
    for t in range(1, turns):
        messages += [{"role": "assistant", "content": f"answer {t}"}, {"role": "user", "content": f"follow-up {t}"}]
    return messages


def chat(gw, model: str, messages: list[dict], session: str | None = None) -> httpx.Response:
    headers = {"x-herd-session": session} if session else {}
    r = httpx.post(f"{gw.url}/chat/completions", headers=headers, timeout=30,
                   json={"model": model, "messages": messages})
    assert r.status_code == 200, r.text
    return r


def test_a_session_replays_to_the_same_models_turn_by_turn(blended):
    gw, _ = blended
    first = [chat(gw, "herd:mix", conversation(t), "s-1").json()["model"] for t in range(1, 7)]
    again = [chat(gw, "herd:mix", conversation(t), "s-1").json()["model"] for t in range(1, 7)]
    assert first == again
    # The same session through the body's herd object draws the same models.
    body = httpx.post(f"{gw.url}/chat/completions", timeout=30,
                      json={"model": "herd:mix", "messages": conversation(3), "herd": {"session": "s-1"}}).json()
    assert body["model"] == first[2] and body["herd"]["policy"] == "blend:uniform"
    assert "turn 3" in body["herd"]["reason"]


def test_draws_cover_the_pool_and_follow_the_weights(blended):
    gw, _ = blended
    uniform = Counter(chat(gw, "herd:mix", conversation(1), f"u-{i}").json()["model"] for i in range(60))
    assert set(uniform) == set(NAMES) and min(uniform.values()) >= 8
    weighted = Counter(chat(gw, "herd:weighted", conversation(2), f"w-{i}").json()["model"] for i in range(60))
    assert set(weighted) == {"math-7b", "hist-7b"} and weighted["math-7b"] > weighted["hist-7b"]


def test_without_a_session_the_opening_keys_the_conversation(blended):
    gw, _ = blended
    a = [chat(gw, "herd:mix", conversation(t, "plan a trip to Lisbon")).json()["model"] for t in (1, 2, 3, 4)]
    b = [chat(gw, "herd:mix", conversation(t, "plan a trip to Lisbon")).json()["model"] for t in (1, 2, 3, 4)]
    assert a == b


def test_every_turn_is_logged_for_an_ab_test(blended):
    gw, log = blended
    r = chat(gw, "herd:mix", conversation(4), "logged-session")
    rid = r.headers["x-herd-request-id"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (mine,) = [x for x in records if x["request_id"] == rid]
    assert mine["session"] == session_id("logged-session") and mine["turn"] == 4 and mine["status"] == "200"
    assert mine["model"] == r.json()["model"] and mine["policy"] == "blend:uniform" and mine["cost_usd"] > 0
    assert all({"time", "session", "turn", "route", "chosen", "model", "reason", "ms"} <= set(x) for x in records)


def test_the_choice_log_keeps_no_prompt_text(blended):
    """The original: without a session the first user message was the session, so a 700 KB prompt
    made a 700 KB log line, private requests included."""
    gw, log = blended
    prompt = "my secret plan " + "x" * 200_000
    for extra in ({}, {"herd": {"private": True}}):
        r = httpx.post(f"{gw.url}/chat/completions", timeout=30,
                       json={"model": "herd:mix", "messages": conversation(1, prompt), **extra})
        assert r.status_code in (200, 400), r.text  # a private request may find no on_prem model
    text = log.read_text()
    assert "my secret plan" not in text and max(map(len, text.splitlines())) < 2000
    assert session_id(prompt) in text


def test_the_learned_blend_reads_the_running_conversation(blended):
    """The router reads the last three user turns: a follow-up that names no topic goes where the
    conversation has been."""
    gw, _ = blended
    for topic_turn, expected in (("add the numbers math question number 7", "math-7b"),
                                 ("which emperor ruled rome history question number 3", "hist-7b")):
        messages = [{"role": "user", "content": topic_turn}, {"role": "assistant", "content": "..."},
                    {"role": "user", "content": "and the next one?"}]
        assert chat(gw, "herd", messages).json()["model"] == expected
