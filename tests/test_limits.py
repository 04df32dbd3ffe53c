"""Client keys with limits, in one process (the default store): the keys file, rate limits and
budgets with OpenAI's 429s, model allow-lists, metrics per key name and `herd spend` from the
choice log. The shared store (Redis) is tested in test_gateway_shared.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway

from herd.gateway.keys import ClientKey, read_api_keys
from herd.gateway.state import Charge, LocalState, periods

KEYS_YAML = """\
keys:
  - name: team-a
    key_env: TEAM_A_KEY
    rpm: 3
  - name: team-b
    key: sk-team-b-secret
    models: [m]
    budget_usd_per_day: 0.0
  - name: team-c
    key: sk-team-c-secret
"""


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_keys_file_yaml_and_plain(tmp_path, monkeypatch):
    monkeypatch.setenv("TEAM_A_KEY", "sk-team-a-secret")
    monkeypatch.delenv("HERD_API_KEYS", raising=False)
    f = tmp_path / "keys.yaml"
    f.write_text(KEYS_YAML)
    a, b, c = read_api_keys(f)
    assert (a.name, a.secret, a.rpm, a.limited) == ("team-a", b"sk-team-a-secret", 3, True)
    assert b.models == frozenset({"m"}) and b.day_usd == 0.0 and b.limited
    assert not c.limited and c.models is None
    plain = tmp_path / "keys.txt"
    plain.write_text("# team keys\nsk-one\n\nsk-two\n")
    assert [(k.name, k.secret, k.limited) for k in read_api_keys(plain)] == [("key-1", b"sk-one", False),
                                                                              ("key-2", b"sk-two", False)]


@pytest.mark.parametrize("text, message", [
    ("keys:\n  - name: a\n    key: sk-1\n    rpm: 0\n", "keys.yaml:4: keys[0].rpm: Input should be greater than 0"),
    ("keys:\n  - name: a\n    key: sk-1\n    key_env: X\n", "give exactly one of 'key' and 'key_env'"),
    ("keys:\n  - name: a\n    key_env: HERD_TEST_UNSET_KEY\n", "environment variable HERD_TEST_UNSET_KEY is not set"),
    ("keys:\n  - {name: a, key: sk-1}\n  - {name: a, key: sk-2}\n", "key name 'a' appears twice"),
    ("keys:\n  - {name: a, key: sk-1, rpn: 5}\n", "keys[0].rpn: unknown field"),
    ("keys:\n  - {name: 'a b', key: sk-1}\n", "keys[0].name: String should match pattern"),
])
def test_keys_file_errors_say_where(tmp_path, text, message):
    f = tmp_path / "keys.yaml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        read_api_keys(f)
    assert message in str(e.value)


def test_local_state_windows_and_holds():
    state, day, month = LocalState(), *periods()
    key = ClientKey("k", b"s", rpm=2, tpm=100, day_usd=1.0)

    async def run():
        assert (await state.admit(key, 0.4, "r1", day, month))[0] is None
        assert (await state.admit(key, 0.4, "r2", day, month))[0] is None
        refused, _ = await state.admit(key, 0.0, "r3", day, month)
        assert refused.limit == "rpm" and 59 < refused.retry_after_s <= 60
        state.requests["k"].clear()  # as if a minute passed
        refused, _ = await state.admit(key, 0.4, "r3", day, month)  # 0.8 held: 0.4 more would pass $1
        assert refused.limit == "day" and refused.used == pytest.approx(0.8)
        # The holds give way to what was spent: 0.1 each.
        for rid in ("r1", "r2"):
            state.settle(Charge("k", rid, 0.4, "local", {"m": 0.1}, {"m": 1}, {"m": (30.0, 20.0)}, day, month))
        assert state.budgets[("k", day)] == pytest.approx([0.2, 0.0])
        refused, _ = await state.admit(key, 0.4, "r4", day, month)
        assert refused.limit == "tpm"  # 100 tokens in the last minute

    asyncio.run(run())


def test_limits_in_one_process(tmp_path):
    """rpm 3: the fourth request is a 429 with Retry-After; an allow-list is a 403; a $0 budget
    refuses before any call; /metrics counts per key name, never the key."""
    with start_backend(name="m") as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([{"name": "m", "base_url": b.url, "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0}]))
        keys, log = tmp_path / "keys.yaml", tmp_path / "choices.jsonl"
        keys.write_text(KEYS_YAML)
        with start_gateway(pool, "--api-keys-file", str(keys), "--choice-log", str(log),
                           env={"TEAM_A_KEY": "sk-team-a-secret"}) as gw:
            team_a = openai.OpenAI(base_url=gw.url, api_key="sk-team-a-secret", max_retries=0)
            for i in range(2):
                assert team_a.chat.completions.create(model="herd", messages=ask(f"q{i}")).model == "m"
            stream = team_a.chat.completions.create(model="herd", messages=ask("q2"), stream=True,
                                                    stream_options={"include_usage": True})
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "m: q2"
            with pytest.raises(openai.RateLimitError) as e:
                team_a.chat.completions.create(model="herd", messages=ask("q3"))
            assert e.value.code == "rate_limit_exceeded" and e.value.body["type"] == "rate_limit_error"
            assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
            assert "team-a" in e.value.message and "3 requests per minute" in e.value.message

            team_b = openai.OpenAI(base_url=gw.url, api_key="sk-team-b-secret", max_retries=0)
            with pytest.raises(openai.PermissionDeniedError) as e:
                team_b.chat.completions.create(model="herd", messages=ask("hi"))
            assert e.value.code == "model_not_allowed"
            calls = b.stats()["requests"]
            with pytest.raises(openai.RateLimitError) as e:
                team_b.chat.completions.create(model="m", messages=ask("hi"), max_tokens=10)
            assert e.value.code == "insufficient_quota" and e.value.body["type"] == "insufficient_quota"
            assert int(e.value.response.headers["retry-after"]) <= 86400
            assert b.stats()["requests"] == calls  # refused before any call

            team_c = openai.OpenAI(base_url=gw.url, api_key="sk-team-c-secret", max_retries=0)
            for i in range(5):  # no limits
                team_c.chat.completions.create(model="herd", messages=ask(f"c{i}"))
            metrics = httpx.get(f"{gw.root}/metrics").text
            assert b.stats()["answered"] == 8
        assert 'herd_key_requests_total{key="team-a"} 4.0' in metrics
        assert 'herd_key_refusals_total{key="team-a",limit="rpm"} 1.0' in metrics
        assert 'herd_key_refusals_total{key="team-b",limit="day"} 1.0' in metrics
        assert 'herd_key_requests_total{key="team-c"} 5.0' in metrics
        spent = [line for line in metrics.splitlines() if line.startswith('herd_key_spend_usd_total{key="team-a"}')]
        assert spent and float(spent[0].split()[-1]) > 0
        assert "secret" not in metrics and "secret" not in gw.log()

    # The choice log names each request's key; herd spend rebuilds the ledger from it.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["key"] for r in records} == {"team-a", "team-c"}
    out = subprocess.run([sys.executable, "-m", "herd", "spend", "--choice-log", str(log), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # Streamed or not, every answer of team-a was charged to it.
    assert float(spent[0].split()[-1]) == pytest.approx(sum(r["cost_usd"] for r in records if r["key"] == "team-a"))
    rows = {(r["key"], r["model"]): r for r in json.loads(out.stdout)}
    assert rows[("team-a", "m")]["calls"] == 3 and rows[("team-c", "m")]["calls"] == 5
    assert rows[("team-a", "m")]["usd"] == pytest.approx(sum(r["cost_usd"] for r in records if r["key"] == "team-a"))
    table = subprocess.run([sys.executable, "-m", "herd", "spend", "--choice-log", str(log)], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0 and "team-c" in table.stdout and "total:" in table.stdout


def test_spend_needs_a_ledger(tmp_path):
    r = subprocess.run([sys.executable, "-m", "herd", "spend"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in __import__("os").environ.items() if k != "HERD_STATE_URL"})
    assert r.returncode == 2 and "no ledger to read" in r.stderr and "Traceback" not in r.stderr
