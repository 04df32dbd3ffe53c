"""`herd serve` as users run it: a real uvicorn process on loopback, real backend processes, and the
official openai SDK as the client (sync, async, streaming). Fake backends only inject faults."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import openai
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway, train_toy_router

MATH = "add the numbers math question number 7"
HISTORY = "which emperor ruled rome history question number 3"
MODELS = ["math-7b", "hist-7b", "big-70b"]


def model_entry(name: str, backend, **extra) -> dict:
    return {"name": name, "base_url": backend.url, "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0, **extra}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    return train_toy_router(tmp_path_factory.mktemp("router") / "router")


@pytest.fixture(scope="module")
def healthy(router_dir, tmp_path_factory):
    """Three healthy backends behind one gateway; big-70b has a backend id of its own."""
    backends = {name: start_backend(name=name) for name in MODELS}
    models = [model_entry("math-7b", backends["math-7b"], tags=["open", "on_prem"]),
              model_entry("hist-7b", backends["hist-7b"], tags=["open", "on_prem"], context_window=512),
              model_entry("big-70b", backends["big-70b"], model="vendor/big-70b-instruct",
                          price_in_per_mtok=5.0, price_out_per_mtok=15.0)]
    pool = tmp_path_factory.mktemp("pool") / "pool.yaml"
    pool.write_text(pool_yaml(models, str(router_dir), policies={"cheap": "cost-aware:5"}, gateway={"max_body_mb": 0.05}))
    gw = start_gateway(pool)
    yield gw, backends
    gw.stop()
    for b in backends.values():
        b.stop()


def client(gw, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def test_routes_by_topic_and_says_why(healthy):
    gw, backends = healthy
    raw = client(gw).chat.completions.with_raw_response.create(model="herd", messages=ask(MATH))
    answer = raw.parse()
    assert answer.model == "math-7b" and answer.choices[0].message.content == f"math-7b: {MATH}"
    assert raw.headers["x-herd-model"] == "math-7b" and raw.headers["x-herd-attempts"] == "1"
    assert "highest predicted P(correct)" in raw.headers["x-herd-reason"] and "x-herd-fallback" not in raw.headers
    herd = answer.model_extra["herd"]
    assert herd["chosen"] == "math-7b" and herd["attempts"] == [{"model": "math-7b", "outcome": "ok", "ms": herd["attempts"][0]["ms"]}]
    assert set(herd["scores"]) == set(MODELS) and max(herd["scores"], key=herd["scores"].get) == "math-7b"
    assert herd["cost_usd"] > 0
    history = client(gw).chat.completions.create(model="herd", messages=ask(HISTORY))
    assert history.model == "hist-7b"


def test_fields_pass_through_untouched_and_backend_ids_are_used(healthy):
    gw, backends = healthy
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    answer = client(gw).chat.completions.create(
        model="big-70b", messages=ask("hello"), n=2, temperature=0.3, max_tokens=20, stop=["\n\n"], tools=tools,
        extra_body={"herd": {"exclude": ["math-7b"]}, "top_k": 5})
    assert answer.model == "big-70b" and len(answer.choices) == 2
    sent = backends["big-70b"].stats()["last_body"]
    assert sent["model"] == "vendor/big-70b-instruct" and "herd" not in sent
    assert sent["tools"] == tools and sent["stop"] == ["\n\n"] and sent["n"] == 2 and sent["top_k"] == 5
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 20


def test_streaming_relays_chunks_with_herd_metadata_first(healthy):
    gw, _ = healthy
    chunks = list(client(gw).chat.completions.create(model="herd", messages=ask(MATH), stream=True,
                                                      stream_options={"include_usage": True}))
    assert chunks[0].model_extra["herd"]["chosen"] == "math-7b"
    assert all(c.model == "math-7b" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"math-7b: {MATH}"
    assert chunks[-1].usage.completion_tokens > 0


def test_streams_are_costed_from_the_backends_usage_which_the_client_sees_only_if_asked(healthy):
    """The original: a stream's cost came from its length (4 characters a token) unless the
    client happened to ask for usage."""
    gw, backends = healthy
    question = "how long is this stream, in tokens??"
    text = f"big-70b: {question}"
    assert len(text) % 4  # so the length's estimate and the backend's count differ

    def completion_tokens() -> float:
        found = re.search(r'^herd_tokens_total\{kind="completion",model="big-70b"\} (\S+)$', httpx.get(f"{gw.root}/metrics").text, re.M)
        return float(found[1]) if found else 0.0

    before = completion_tokens()
    chunks = list(client(gw).chat.completions.create(model="big-70b", messages=ask(question), stream=True))
    assert backends["big-70b"].stats()["last_body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices and c.usage is None for c in chunks)  # the usage herd asked for is not relayed
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert completion_tokens() - before == len(text) // 4  # the fake backend's count, not len / 4


def test_models_retrieve_and_completions_pass_through(healthy):
    gw, backends = healthy
    c = client(gw)
    assert c.models.retrieve("herd").id == "herd" and c.models.retrieve("herd:cheap").owned_by == "herd"
    big = c.models.retrieve("big-70b")
    assert big.owned_by == "pool" and big.model_extra["tags"] == []
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-9")
    assert e.value.code == "model_not_found" and "big-70b" in e.value.message
    # A base model's prompt goes to the pool model named, with herd's metadata.
    raw = c.completions.with_raw_response.create(model="math-7b", prompt="Q: 2 + 2?\nA:", max_tokens=5)
    done = raw.parse()
    assert done.model == "math-7b" and done.choices[0].text == "math-7b: A:" and raw.headers["x-herd-model"] == "math-7b"
    assert done.model_extra["herd"]["reason"] == "requested by name" and done.usage.completion_tokens > 0
    assert backends["math-7b"].stats()["last_body"] == {"model": "math-7b", "prompt": "Q: 2 + 2?\nA:", "max_tokens": 5}
    streamed = list(c.completions.create(model="big-70b", prompt="Once upon a time", stream=True))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == "big-70b: Once upon a time"
    assert backends["big-70b"].stats()["last_body"]["model"] == "vendor/big-70b-instruct"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="herd", prompt="Once upon a time")
    assert "passes a prompt to the pool model it names" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="math-7b", prompt=[1, 2, 3])
    assert e.value.param == "prompt"
    r = httpx.post(f"{gw.url}/completions", json={"model": "math-7b", "prompt": "x", "stream_options": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_async_clients_in_parallel(healthy):
    gw, _ = healthy

    async def run():
        async with openai.AsyncOpenAI(base_url=gw.url, api_key="unused", max_retries=0) as c:
            plain = [c.chat.completions.create(model="herd", messages=ask(q)) for q in [MATH, HISTORY] * 10]
            answers = await asyncio.gather(*plain)
            stream = await c.chat.completions.create(model="herd:cheap", messages=ask(HISTORY), stream=True)
            parts = [chunk async for chunk in stream]
        return answers, parts

    answers, parts = asyncio.run(run())
    assert [a.model for a in answers] == ["math-7b", "hist-7b"] * 10
    assert parts[0].model_extra["herd"]["policy"] == "cost-aware:5"


def test_constraints_from_the_request(healthy):
    gw, _ = healthy
    c = client(gw)
    private = c.chat.completions.create(model="herd", messages=ask("write a python function code question"),
                                        extra_body={"herd": {"private": True}})
    assert private.model in {"math-7b", "hist-7b"}
    assert "lacks tag(s) ['on_prem']" in private.model_extra["herd"]["ineligible"]["big-70b"]
    long = c.chat.completions.create(model="herd", messages=ask(HISTORY + " " + "word " * 500))
    assert long.model != "hist-7b" and "context window is 512" in long.model_extra["herd"]["ineligible"]["hist-7b"]
    short = c.chat.completions.create(model="herd", messages=ask(HISTORY))
    assert short.model == "hist-7b"  # the same topic fits: the window, not the topic, ruled it out
    via_metadata = c.chat.completions.create(model="herd", messages=ask(MATH), metadata={"herd_exclude": "math-7b"})
    assert via_metadata.model != "math-7b"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="herd", messages=ask(MATH), extra_body={"herd": {"tags": ["gpu-free"]}})
    assert e.value.code == "no_eligible_model"


def test_private_flag_fails_closed(healthy):
    """The original requests: "on" was read as false and answered by a public model; "Herd" was ignored."""
    gw, backends = healthy
    code = ask("write a python function code question")
    before = backends["big-70b"].stats()["requests"]
    r = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": code, "metadata": {"herd_private": "on"}})
    assert r.status_code == 200 and r.json()["model"] in {"math-7b", "hist-7b"}
    for bad, param in (({"metadata": {"herd_private": "sure"}}, "metadata.herd_private"),
                       ({"Herd": {"private": True}}, "Herd"), ({"metadata": {"HERD_PRIVATE": "1"}}, "metadata.HERD_PRIVATE")):
        r = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": code, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert backends["big-70b"].stats()["requests"] == before


def test_discovery_health_and_metrics(healthy):
    gw, _ = healthy
    ids = [m.id for m in client(gw).models.list()]
    assert ids == ["herd", "herd:cheap", *MODELS]
    health = httpx.get(f"{gw.root}/health").json()
    assert health["status"] == "ok" and set(health["models"]) == set(MODELS) and health["router"] == "logistic"
    client(gw).chat.completions.create(model="herd", messages=ask(MATH))
    text = httpx.get(f"{gw.root}/metrics").text
    for series in ('herd_requests_total{route="herd",status="200"}', 'herd_choices_total{model="math-7b"}',
                   'herd_answers_total{model="math-7b"}', 'herd_tokens_total{kind="completion",model="math-7b"}',
                   'herd_cost_usd_total{model="math-7b"}', "herd_request_seconds_bucket", "herd_backend_seconds_bucket"):
        assert series in text


@pytest.mark.parametrize("send, status, words", [
    (dict(content=b"{nope"), 400, "not valid JSON"),
    (dict(json={"model": "herd", "messages": "hi"}), 400, "'messages' must be a non-empty list"),
    (dict(json={"model": "gpt-9", "messages": ask("x")}), 404, "is not served here"),
    (dict(json={"model": "herd", "messages": ask("x" * 60_000)}), 413, "larger than 0.05 MB"),
    (dict(json={"model": "herd", "messages": ask("x"), "stream": "yes"}), 400, "'stream' must be a boolean"),
    # The originals: a 500 with two tracebacks, and no answer at all for n = 10**400.
    (dict(json={"model": "herd", "messages": ask("x"), "n": 10**400}), 400, "'n' must be an integer from 1 to 128"),
    (dict(json={"model": "herd", "messages": ask("x"), "max_tokens": 10**400}), 400, "'max_tokens' must be a positive"),
    (dict(content=b'{"model": "herd", "temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}'), 400,
     "1e999 is not a finite number"),
])
def test_bad_input_gets_openai_errors_not_500s(healthy, send, status, words):
    gw, _ = healthy
    r = httpx.post(f"{gw.url}/chat/completions", timeout=10, **send)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_routes_and_methods(healthy):
    gw, _ = healthy
    assert httpx.get(f"{gw.url}/chat/completions").status_code == 405
    r = httpx.get(f"{gw.url}/embeddings")
    assert r.status_code == 404 and "herd serves /v1/chat/completions" in r.json()["error"]["message"]
    assert "Traceback" not in gw.log()


def test_api_keys(router_dir, tmp_path):
    with start_backend(name="math-7b") as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([model_entry("math-7b", b)], gateway={"metrics_need_key": True}))
        keys = tmp_path / "keys.txt"
        keys.write_text("# team keys\nsk-file-key\n")
        with start_gateway(pool, "--api-keys-file", str(keys), env={"HERD_API_KEYS": "sk-env-one,sk-env-two"}) as gw:
            for key in ("sk-env-two", "sk-file-key"):
                assert client(gw, api_key=key).chat.completions.create(model="herd", messages=ask("hi")).model == "math-7b"
            with pytest.raises(openai.AuthenticationError) as e:
                client(gw, api_key="sk-wrong").chat.completions.create(model="herd", messages=ask("hi"))
            assert e.value.code == "invalid_api_key"
            r = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": ask("hi")})
            assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
            assert httpx.get(f"{gw.url}/models").status_code == 401
            assert httpx.get(f"{gw.url}/models?api_key=sk-in-query").status_code == 401  # herd reads no query keys
            auth = {"authorization": "Bearer sk-file-key"}
            # Probes need no key; the pool's names, errors and spend do.
            assert httpx.get(f"{gw.root}/health").json() == {"status": "ok"}
            assert "math-7b" in httpx.get(f"{gw.root}/health", headers=auth).json()["models"]
            assert httpx.get(f"{gw.root}/metrics").status_code == 401
            assert httpx.get(f"{gw.root}/openapi.json").status_code == 404
            # Chat requests only: the /v1/models 401s are not.
            metrics = httpx.get(f"{gw.root}/metrics", headers=auth).text
            assert 'herd_requests_total{route="rejected",status="401"} 2.0' in metrics
            log = gw.log()
        assert "sk-env-one" not in log and "sk-file-key" not in log and "sk-wrong" not in log
        assert "sk-in-query" not in log and "GET /v1/models HTTP/1.1" in log


@pytest.mark.parametrize("args, env, message", [
    (["--api-keys-file", "EMPTY"], {}, "API keys were asked for"),
    ([], {"HERD_API_KEYS": " , "}, "API keys were asked for (HERD_API_KEYS) but none were read"),
    (["--host", "0.0.0.0"], {}, "serving on 0.0.0.0 without API keys"),
    (["--no-auth"], {"HERD_API_KEYS": "sk-1"}, "--no-auth, but API keys were given"),
])
def test_no_auth_is_never_an_accident(tmp_path, args, env, message):
    import os
    import subprocess
    import sys

    pool, empty = tmp_path / "pool.yaml", tmp_path / "keys.txt"
    pool.write_text(pool_yaml([{"name": "a", "base_url": "http://127.0.0.1:9/v1"}]))
    empty.write_text("# no keys yet\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "herd", "serve", str(pool), "--port", "9", *args], capture_output=True,
                       text=True, timeout=60, env={**os.environ, **env})
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_backend_error_bodies_are_relayed_without_credentials(router_dir, tmp_path):
    """The original: a backend that echoes request headers showed the client herd's backend key."""
    with start_backend(name="math-7b", fail_rate=1.0, status=400, echo_headers=True) as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([model_entry("math-7b", b, api_key_env="HERD_TEST_BACKEND_KEY")]))
        with start_gateway(pool, env={"HERD_TEST_BACKEND_KEY": "sk-backend-secret"}) as gw:
            r = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": ask("hi")})
            assert r.status_code == 400 and "injected failure" in r.json()["error"]["message"]
            assert "sk-backend-secret" not in r.text and "request" not in r.json(), r.text


def test_backend_api_key_is_sent_but_never_shown(router_dir, tmp_path):
    with start_backend(name="math-7b") as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([model_entry("math-7b", b, api_key_env="HERD_TEST_BACKEND_KEY")]))
        with start_gateway(pool, env={"HERD_TEST_BACKEND_KEY": "sk-backend-secret"}) as gw:
            raw = client(gw).chat.completions.with_raw_response.create(model="herd", messages=ask("hi"))
            assert b.stats()["last_headers"]["authorization"] == "Bearer sk-backend-secret"
            shown = raw.text + json.dumps(dict(raw.headers)) + httpx.get(f"{gw.root}/health").text
            assert "sk-backend-secret" not in shown + httpx.get(f"{gw.root}/metrics").text
        assert "sk-backend-secret" not in gw.log()


def test_non_finite_backend_usage_counts_as_missing(router_dir, tmp_path):
    """The original: usage.prompt_tokens = 1e999 made the token and spend counters +Inf for good."""
    with start_backend(name="math-7b", inf_usage=True) as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([model_entry("math-7b", b)]))
        with start_gateway(pool) as gw:
            r = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": ask("hi")})
            assert r.status_code == 200 and "Infinity" not in r.text and r.json()["usage"]["prompt_tokens"] is None
            chunks = httpx.post(f"{gw.url}/chat/completions", json={"model": "herd", "messages": ask("hi"), "stream": True,
                                                                    "stream_options": {"include_usage": True}}).text
            assert "Infinity" not in chunks and "1e999" not in chunks
            metrics = httpx.get(f"{gw.root}/metrics").text
            assert "+Inf" not in metrics.replace('le="+Inf"', "") and 'herd_cost_usd_total{model="math-7b"}' in metrics


def test_bad_pool_file_fails_at_start_with_line_and_field(tmp_path):
    import subprocess
    import sys

    pool = tmp_path / "pool.yaml"
    pool.write_text("models:\n  - name: a\n    base_url: http://127.0.0.1:9/v1\n    timeout_s: soon\n")
    r = subprocess.run([sys.executable, "-m", "herd", "serve", str(pool)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pool.yaml:4: models[0].timeout_s: Input should be a valid number" in r.stderr
    assert "Traceback" not in r.stderr


def test_workers_share_the_port_and_metrics_add_up(router_dir, tmp_path):
    with start_backend(name="math-7b") as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([model_entry("math-7b", b)], str(router_dir), not_served=["hist-7b", "big-70b"]))
        # Each worker imports the stack and loads the router itself: give a busy machine time.
        with start_gateway(pool, "--workers", "2", timeout=90) as gw:
            c = client(gw)
            for _ in range(40):
                assert c.chat.completions.create(model="herd", messages=ask(MATH)).model == "math-7b"
            for _ in range(4):  # whichever worker answers the scrape, it counts every worker's requests
                text = httpx.get(f"{gw.root}/metrics").text
                assert 'herd_requests_total{route="herd",status="200"} 40.0' in text
