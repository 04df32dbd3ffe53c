"""Two gateway processes sharing one real redis-server on loopback: one rate limit and one budget
across both, backend health learned by one and used by the other, and Redis killed under load
(fail open and fail closed) with the ledger checked against the backends' own records."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fake_backend import start_backend
from servers import pool_yaml, redis_missing, start_gateway

pytestmark = pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))

PRICE = 20.0  # USD per million tokens, in and out
STARTUP_S = 90  # two gateways and several backends start on a shared machine


def priced(name: str, backend, **extra) -> dict:
    return {"name": name, "base_url": backend.url, "price_in_per_mtok": PRICE, "price_out_per_mtok": PRICE,
            "retries": 0, **extra}


def chat(gw, key: str, text: str, model: str = "herd", client=httpx, **extra) -> httpx.Response:
    """``client``: an httpx.Client for many requests (each bare httpx.post costs ~40 ms of CPU)."""
    return client.post(f"{gw.url}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": model, "messages": [{"role": "user", "content": text}], **extra})


def two_gateways(pool, redis_server, *args, pools=None):
    env = {"HERD_STATE_URL": redis_server.url}
    first = start_gateway((pools or [pool])[0], *args, env=env, timeout=STARTUP_S)
    try:
        second = start_gateway((pools or [pool, pool])[1], *args, env=env, timeout=STARTUP_S)
    except Exception:
        first.stop()
        raise
    return first, second


def ledger(url: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "herd", "spend", "--state", url, "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def metric(gw, name: str) -> float | None:
    for line in httpx.get(f"{gw.root}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


def test_one_rate_limit_across_two_processes(tmp_path, redis_server):
    """rpm 60, 200 requests spread over both processes: 60 answered, not 120; the rest 429."""
    with start_backend(name="m") as b:
        pool, keys = tmp_path / "pool.yaml", tmp_path / "keys.yaml"
        pool.write_text(pool_yaml([priced("m", b)]))
        keys.write_text("keys:\n  - {name: team-a, key: sk-team-a, rpm: 60}\n")
        a, c = two_gateways(pool, redis_server, "--api-keys-file", str(keys))
        with a, c:
            results: list[httpx.Response] = []

            def send(gw, n):  # the 200 requests must fit in the rate limit's minute, on a busy machine too
                with httpx.Client() as client:
                    for i in range(n):
                        results.append(chat(gw, "sk-team-a", f"question {i}", client=client))

            threads = [threading.Thread(target=send, args=(gw, 50)) for gw in (a, c, a, c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            by_status = {}
            for r in results:
                by_status.setdefault(r.status_code, []).append(r)
            assert len(results) == 200 and set(by_status) == {200, 429}
            assert len(by_status[200]) == 60
            for r in by_status[429]:
                assert r.json()["error"]["code"] == "rate_limit_exceeded" and 1 <= int(r.headers["retry-after"]) <= 60
            served = [metric(gw, 'herd_requests_total{route="herd",status="200"}') or 0 for gw in (a, c)]
            assert sum(served) == 60 and min(served) > 0  # both processes answered part of the 60
            assert metric(a, 'herd_key_requests_total{key="team-a"}') + metric(c, 'herd_key_requests_total{key="team-a"}') == 200
        assert b.stats()["answered"] == 60


def test_one_budget_across_two_processes(tmp_path, redis_server):
    """$0.01 a day, requests alternating between the processes, plain and fanned out: spend stops
    within one request's worst case of the budget, and every call is in the ledger."""
    with start_backend(name="a") as ba, start_backend(name="b") as bb, start_backend(name="c") as bc:
        pool, keys = tmp_path / "pool.yaml", tmp_path / "keys.yaml"
        # An agreement cascade: a and b asked together, c if they disagree.
        pool.write_text(pool_yaml([priced("a", ba), priced("b", bb), priced("c", bc)],
                                  policies={"both": {"name": "agree", "models": ["a", "b"], "then": "c",
                                                     "grader": "number"}}))
        keys.write_text("keys:\n  - {name: team-a, key: sk-team-a, budget_usd_per_day: 0.01}\n")
        g1, g2 = two_gateways(pool, redis_server, "--api-keys-file", str(keys))
        with g1, g2:
            text, max_tokens, answered, refused = "what is 2 + 3? answer 5", 40, 0, None
            for i in range(200):
                r = chat((g1, g2)[i % 2], "sk-team-a", text, model=("herd", "herd:both")[i // 2 % 2],
                         max_tokens=max_tokens)
                if r.status_code != 200:
                    refused = r
                    break
                answered += 1
            assert refused is not None and refused.status_code == 429, refused and refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"
            assert refused.json()["error"]["type"] == "insufficient_quota" and int(refused.headers["retry-after"]) > 0
            calls = {name: b.stats()["answered"] for name, b in (("a", ba), ("b", bb), ("c", bc))}
            # Refused before any call: no backend heard of the refused request.
            assert calls == {name: b.stats()["requests"] for name, b in (("a", ba), ("b", bb), ("c", bc))}
            assert calls["b"] > 0 and answered > 5
        rows = ledger(redis_server.url)
        assert {r["model"]: r["calls"] for r in rows} == {m: n for m, n in calls.items() if n}
        tokens = {n: b.stats() for n, b in (("a", ba), ("b", bb), ("c", bc))}
        spent = sum(r["usd"] for r in rows)
        assert spent == pytest.approx(sum((s["prompt_tokens"] + s["completion_tokens"]) * PRICE / 1e6
                                          for s in tokens.values()))
        # The worst case of a fanned-out request: three calls at max_tokens, the prompt counted high.
        worst = 3 * (len(text) + 4 + max_tokens) * PRICE / 1e6
        assert 0.01 - worst < spent <= 0.01


def test_backend_health_is_shared(tmp_path, redis_server):
    """A backend that fails in front of process A is skipped by process B without B calling it."""
    with start_backend(name="bad", fail_rate=1.0) as bad, start_backend(name="good") as good:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([priced("bad", bad), priced("good", good)],
                                  gateway={"circuit_failures": 2, "circuit_cooldown_s": 60}))
        a, b = two_gateways(pool, redis_server)
        with a, b:
            for i in range(2):
                r = chat(a, "unused", f"q{i}")
                assert r.status_code == 200 and r.json()["herd"]["attempts"][0]["outcome"] == "http 500"
            assert httpx.get(f"{a.root}/health").json()["status"] == "degraded"
            deadline = time.monotonic() + 10
            while httpx.get(f"{b.root}/health").json()["status"] != "degraded" and time.monotonic() < deadline:
                time.sleep(0.1)
            r = chat(b, "unused", "q3")
            assert r.status_code == 200 and r.headers["x-herd-model"] == "good"
            assert r.json()["herd"]["attempts"][0] == {"model": "bad", "outcome": "skipped: circuit open"}
            assert bad.stats()["requests"] == 2  # only A's calls


def test_redis_killed_under_load(tmp_path, redis_server):
    """fail open keeps answering (no 5xx) and says so in /metrics; fail closed answers 503; both
    recover when Redis is back, and the ledger holds every answered call once."""
    with start_backend(name="m") as backend:
        keys = tmp_path / "keys.yaml"
        keys.write_text("keys:\n  - {name: team-a, key: sk-team-a, rpm: 100000, budget_usd_per_day: 100}\n")
        pools = []
        for fail in ("open", "closed"):
            pools.append(tmp_path / f"pool-{fail}.yaml")
            pools[-1].write_text(pool_yaml([priced("m", backend)], gateway={"state_fail": fail}))
        opened, closed = two_gateways(None, redis_server, "--api-keys-file", str(keys), pools=pools)
        with opened, closed:
            log: list[tuple[str, str, int, str]] = []  # (phase, gateway, status, error code)
            phase, stop = ["before"], threading.Event()

            def load(gw, label):
                i = 0
                while not stop.is_set():
                    i += 1
                    r = chat(gw, "sk-team-a", f"{label} question {i}")
                    code = r.json().get("error", {}).get("code") if r.status_code != 200 else ""
                    log.append((phase[0], label, r.status_code, code))

            threads = [threading.Thread(target=load, args=(gw, label)) for gw, label in
                       ((opened, "open"), (opened, "open"), (closed, "closed"), (closed, "closed"))]
            for t in threads:
                t.start()
            try:
                time.sleep(1.5)
                redis_server.kill()
                phase[0] = "down"
                time.sleep(2.5)
                assert metric(opened, 'herd_state_up{store="redis"}') == 0.0
                assert metric(opened, "herd_state_errors_total") >= 1
                assert metric(opened, "herd_state_pending_charges") > 0  # charges wait for Redis
                phase[0] = "restart"
                redis_server.start()
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not (metric(opened, 'herd_state_up{store="redis"}') == 1.0
                                                           and metric(closed, 'herd_state_up{store="redis"}') == 1.0):
                    time.sleep(0.1)
                phase[0] = "after"
                time.sleep(1.5)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            # Every charge is written once Redis is back. A lease's return is queued up to 0.1 s
            # after the lease's last request, so "none pending" must hold for longer than that.
            deadline, clear_since = time.monotonic() + 10, None
            while time.monotonic() < deadline:
                pending = metric(opened, "herd_state_pending_charges") + metric(closed, "herd_state_pending_charges")
                clear_since = None if pending else clear_since or time.monotonic()
                if clear_since is not None and time.monotonic() - clear_since >= 0.5:
                    break
                time.sleep(0.05)
            assert clear_since is not None and time.monotonic() - clear_since >= 0.5, f"{pending} charge(s) pending"

        def count(phase_=None, label=None, status=None):
            return sum(1 for p, g, s, _ in log if phase_ in (None, p) and label in (None, g) and status in (None, s))

        assert {s for _, g, s, _ in log if g == "open"} == {200}  # fail open: never a 5xx
        assert count("down", "open", 200) > 0
        assert count("down", "closed", 503) > 0  # fail closed: 503s in OpenAI's shape
        assert {c for p, g, s, c in log if s == 503} == {"limits_unavailable"}
        assert count("after", "open", 200) > 0 and count("after", "closed", 200) > 0
        assert count("after", "closed", 503) == 0  # recovered
        # Nothing answered is lost or counted twice: the ledger equals the backend's own record.
        answered = count(status=200)
        stats = backend.stats()
        assert stats["answered"] == answered
        (row,) = ledger(redis_server.url)
        assert (row["key"], row["model"], row["calls"]) == ("team-a", "m", answered)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (stats["prompt_tokens"], stats["completion_tokens"])
