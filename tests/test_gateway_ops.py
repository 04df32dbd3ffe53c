"""`herd serve` as operations run it: JSON logs, backend calls through a proxy, the address from
the environment, and the container files. One gateway on loopback for all of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest
import typer
import yaml
from fake_backend import free_port, start_backend, wait_until_up
from servers import GatewayProcess, pool_yaml

from herd.cli import app

ROOT = Path(__file__).parents[1]
SECRET_PROMPT = "my-private-question-text"


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """Models: 'near' on loopback (never proxied), 'far' behind HTTP_PROXY (the proxy is a fake
    backend named via-proxy, which answers itself), 'skip' in NO_PROXY (reached directly: a host
    that cannot resolve). The port comes from HERD_PORT; --host wins over HERD_HOST=0.0.0.0,
    which without API keys would not start."""
    d = tmp_path_factory.mktemp("ops")
    near, proxy = start_backend(name="near"), start_backend(name="via-proxy")
    models = [{"name": "near", "base_url": near.url, "price_in_per_mtok": 1, "price_out_per_mtok": 2,
               "api_key_env": "HERD_TEST_NEAR_KEY", "api_key_header": "api-key", "extra_headers": {"x-team": "a"},
               "extra_query": {"api-version": "2024-10-21"}, "extra_body": {"chat_template_kwargs": {"think": False}}},
              {"name": "far", "base_url": "http://far.invalid:8080/v1"},
              {"name": "skip", "base_url": "http://skip.invalid:8080/v1", "retries": 0}]
    pool = d / "pool.yaml"
    pool.write_text(pool_yaml(models))
    port = free_port()
    env = {**os.environ, "HERD_PORT": str(port), "HERD_HOST": "0.0.0.0", "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
           "NO_PROXY": "skip.invalid", "HERD_TEST_NEAR_KEY": "near-secret"}
    env.pop("HERD_API_KEYS", None)
    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "herd", "serve", str(pool), "--host", "127.0.0.1", "--log-format", "json"]
    gw = GatewayProcess(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), port, log)
    try:
        wait_until_up(f"{gw.root}/health", gw.proc, gw.log, timeout=120)
        yield gw, near, proxy
    finally:
        gw.stop()
        near.stop()
        proxy.stop()


def test_backend_calls_honour_the_proxy_settings(ops):
    gw, near, proxy = ops
    c = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=30)
    ask = [{"role": "user", "content": "hello"}]
    far = c.chat.completions.create(model="far", messages=ask)
    assert far.choices[0].message.content == "via-proxy: hello" and proxy.stats()["requests"] == 1
    assert c.chat.completions.create(model="near", messages=ask).choices[0].message.content == "near: hello"
    assert near.stats()["requests"] == 1 and proxy.stats()["requests"] == 1  # loopback goes direct
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="skip", messages=ask)
    assert "skip: connection error" in e.value.message and proxy.stats()["requests"] == 1  # NO_PROXY: direct


def test_per_model_headers_query_and_default_body_reach_the_backend(ops):
    """An Azure-style key header and api-version, a team header, vLLM's chat_template_kwargs."""
    gw, near, _ = ops
    r = httpx.post(f"{gw.url}/chat/completions", json={"model": "near", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    seen = near.stats()
    assert seen["last_headers"]["api-key"] == "near-secret" and "authorization" not in seen["last_headers"]
    assert seen["last_headers"]["x-team"] == "a" and seen["last_query"] == "api-version=2024-10-21"
    assert seen["last_body"]["chat_template_kwargs"] == {"think": False}
    own = {"model": "near", "messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"think": True}}
    assert httpx.post(f"{gw.url}/chat/completions", json=own).status_code == 200
    assert near.stats()["last_body"]["chat_template_kwargs"] == {"think": True}  # the request's own wins


def test_json_logs_carry_the_request_id_and_no_prompt_text(ops):
    gw, _, _ = ops
    raw = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0).chat.completions.with_raw_response.create(
        model="herd", messages=[{"role": "user", "content": SECRET_PROMPT}])
    rid = raw.headers["x-herd-request-id"]
    streamed = httpx.post(f"{gw.url}/chat/completions", json={"model": "near", "stream": True, "messages": [
        {"role": "user", "content": SECRET_PROMPT}]})
    assert httpx.get(f"{gw.url}/models?key={SECRET_PROMPT}").status_code == 200
    assert httpx.get(f"{gw.url}/nowhere").status_code == 404
    # An access line is written once its response has ended, just after the client has it.
    deadline = time.monotonic() + 10
    while '"path": "/v1/nowhere"' not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in gw.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, uvicorn's and herd's, is one JSON object
    assert all({"time", "level", "logger"} <= set(r) for r in records)
    assert any(r["logger"] == "herd" and "serving" in r["message"] for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "herd.access" and r["request_id"]}
    assert access[rid]["status"] == 200 and access[rid]["path"] == "/v1/chat/completions" and access[rid]["ms"] > 0
    decision = [r for r in records if r["logger"] == "herd.decision" and r["request_id"] == rid]
    assert len(decision) == 1 and decision[0]["model"] == "near" and decision[0]["status"] == "200"
    assert "session" not in decision[0]
    stream_id = streamed.headers["x-herd-request-id"]
    assert access[stream_id]["status"] == 200
    assert any(r["logger"] == "herd.decision" and r["request_id"] == stream_id for r in records)
    paths = [r["path"] for r in records if r["logger"] == "herd.access"]
    assert "/v1/models" in paths and "/v1/nowhere" in paths
    assert SECRET_PROMPT not in gw.log()


def serve_flags() -> set[str]:
    serve = typer.main.get_command(app).commands["serve"]
    return {opt for p in serve.params for opt in p.opts}


def test_dockerfile_and_compose_use_real_flags_and_a_working_healthcheck(ops):
    """The image cannot be built here; what can be checked is: a slim base, a non-root user,
    `herd serve` as entrypoint, flags herd has, and the health check's own command, run against
    a live gateway and a closed port."""
    gw, _, _ = ops
    text = (ROOT / "Dockerfile").read_text()
    instructions = re.findall(r"^([A-Z]+)\s+(.*?)(?<!\\)$", text.replace("\\\n", " "), re.M)
    found = {k: v for k, v in instructions}
    assert re.fullmatch(r"python:3\.\d+-slim", found["FROM"])
    assert found["USER"] not in ("root", "0") and f"useradd --create-home --uid 10001 {found['USER']}" in text
    assert json.loads(found["ENTRYPOINT"]) == ["herd", "serve"]
    flags = serve_flags()
    assert {a for a in json.loads(found["CMD"]) if a.startswith("-")} <= flags
    env = dict(re.findall(r"(\w+)=(\S+)", found["ENV"]))
    assert env["HERD_HOST"] == "0.0.0.0" and env["HERD_PORT"] == "8000"
    check = json.loads(found["HEALTHCHECK"].split("CMD", 1)[1])
    ok = subprocess.run(check, env={**os.environ, "HERD_PORT": str(gw.port)}, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(check, env={**os.environ, "HERD_PORT": str(free_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    herd = compose["services"]["herd"]
    assert herd["build"] == "." and {a for a in herd["command"] if a.startswith("-")} <= flags
    assert herd["command"][0].startswith("/config/") and any(v.endswith(":/config:ro") for v in herd["volumes"])
    assert "HERD_API_KEYS" in herd["environment"]  # beyond loopback herd needs keys (or --no-auth)
