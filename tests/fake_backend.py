"""A small, fast fake OpenAI-compatible backend for fault injection in tests and benchmarks.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` (plain or streamed) with "NAME: <last user message>" and can
fail on purpose: error statuses, 429s, delays, and connections dropped before or in the middle of a
stream. ``GET /stats`` tells what it received. Use ``make_app`` in-process, or ``start_backend`` to run
it as a real subprocess::

    with start_backend(name="small", fail_rate=0.5) as b:
        openai.OpenAI(base_url=b.url, api_key="x").chat.completions.create(...)
        b.stats()["requests"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib


def _text(content) -> str:
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _error(message: str, type_: str = "server_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


async def _drop(send) -> None:
    """Close the connection without a (complete) response. Under uvicorn the transport is closed and
    the app returns once uvicorn has noticed, so it neither sends a 500 nor logs an error; under
    another server this raises, which at least breaks the response."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("fake backend: dropping the connection")
    transport.close()
    for _ in range(3):  # let connection_lost run, so uvicorn marks the request as disconnected
        await asyncio.sleep(0)


def make_app(name: str, fail_rate=0.0, status=500, rate_limit_rate=0.0, delay_s=0.0, first_byte_delay_s=0.0,
             drop_mid_stream=False, drop_before_first_byte=False, chunks=3, seed=0, chunk_delay_s=0.0,
             keepalive_first=False, odd_json=False, context_tokens=0, vary_word="", dissent_word="",
             inf_usage=False, close_delimited=False, cut_stream=False, echo_headers=False, delay_rate=1.0,
             watch_word="", fail_first=0):
    """The raw ASGI app of one fake backend serving the model ``name``. ``chunk_delay_s`` paces
    stream chunks; ``keepalive_first`` starts streams with an SSE comment; ``odd_json`` sends
    valid answers with oddly typed extras (usage as a list, a chunk whose choices are an object);
    ``context_tokens`` > 0 refuses longer prompts with OpenAI's context_length_exceeded 400;
    ``vary_word``: a question holding it gets "the answer is <the request's seed>", so samples disagree;
    ``dissent_word``: a question holding it gets "the answer is <a number of this backend's own>", so
    backends disagree (otherwise they echo the question and give the same final answer);
    ``inf_usage`` reports ``prompt_tokens: 1e999``; ``close_delimited`` sends streams as HTTP/1.0
    did, ended by closing the connection; ``cut_stream`` closes such a stream after its first chunk
    (no finish_reason, no [DONE]): a cut a client cannot tell from an end; ``echo_headers`` quotes
    the request's headers in injected failures, as some servers' error pages do; ``delay_rate`` is
    the share of requests that wait ``delay_s`` (drawn only when below 1, so seeds keep their
    failures); ``watch_word``: ``stats()["watched"]`` counts the requests whose body holds it, the
    backend's own record of, e.g., which private requests reached it; ``fail_first``: the first
    that many requests fail with ``status``, then it answers."""
    rng = random.Random(seed)
    # answered and the token sums: the backend's own record of what a ledger should have charged.
    stats = {"requests": 0, "last_body": None, "last_headers": {}, "watched": 0, "answered": 0, "prompt_tokens": 0,
             "completion_tokens": 0}

    def answered(usage: dict) -> None:
        stats["answered"] += 1
        stats["prompt_tokens"] += usage["prompt_tokens"]
        stats["completion_tokens"] += usage["completion_tokens"]

    async def reply(send, code: int, obj, headers=()) -> None:
        body = json.dumps(obj).encode().replace(b'"1e999"', b"1e999")  # inf_usage: a number no float holds
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})

    async def chat(receive, send, headers: dict, completion: bool = False) -> None:
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        stats["requests"] += 1
        stats["last_headers"] = headers
        if watch_word and watch_word.encode() in raw:
            stats["watched"] += 1
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except Exception:
            return await reply(send, 400, _error("request body is not a JSON object", "invalid_request_error"))
        stats["last_body"] = body
        if delay_s and (delay_rate >= 1 or rng.random() < delay_rate):
            await asyncio.sleep(delay_s)
        if stats["requests"] <= fail_first or rng.random() < fail_rate:
            echo = f"; you sent {json.dumps(headers)}" if echo_headers else ""
            return await reply(send, status, {**_error(f"{name}: injected failure{echo}"),
                                               **({"request": headers} if echo_headers else {})})
        if rng.random() < rate_limit_rate:
            return await reply(send, 429, _error(f"{name}: injected rate limit", "rate_limit_error"),
                               [(b"retry-after", b"0")])

        messages = body.get("messages") or []
        user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = f"{name}: {_text(user[-1].get('content')) if user else ''}"
        if vary_word and vary_word in text:
            text = f"{name}: the answer is {body.get('seed', 0)}"
        if dissent_word and dissent_word in text:
            text = f"{name}: the answer is {zlib.crc32(name.encode())}"
        prompt_chars = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))
        if completion:  # a base model continuing the prompt: echo its last line
            prompt = str(body.get("prompt", ""))
            text, prompt_chars = f"{name}: {prompt.rstrip().splitlines()[-1] if prompt.strip() else ''}", len(prompt)
        usage = {"prompt_tokens": prompt_chars // 4, "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if context_tokens and usage["prompt_tokens"] > context_tokens:
            error = _error(f"{name}: this model's maximum context length is {context_tokens} tokens",
                           "invalid_request_error")
            error["error"]["code"] = "context_length_exceeded"
            return await reply(send, 400, error)
        if odd_json:
            usage = [usage["prompt_tokens"], "many"]
        if inf_usage:
            usage["prompt_tokens"] = "1e999"
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": body.get("model", name)}

        if completion and not body.get("stream"):
            choices = [{"index": 0, "text": text, "finish_reason": "stop"}]
            return await reply(send, 200, {**base, "object": "text_completion", "choices": choices, "usage": usage})
        if not body.get("stream"):
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                       for i in range(int(body.get("n") or 1))]
            if isinstance(usage, dict) and not inf_usage:
                answered(usage)
            return await reply(send, 200, {**base, "object": "chat.completion", "choices": choices, "usage": usage})

        if drop_before_first_byte:
            return await _drop(send)
        if close_delimited or cut_stream:
            return await _raw_stream(send, text, base, cut_stream)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        if keepalive_first:
            await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        if first_byte_delay_s:
            await asyncio.sleep(first_byte_delay_s)
        k = max(1, int(chunks))
        step = -(-len(text) // k)  # ceil
        pieces = [text[i * step:(i + 1) * step] for i in range(k)]
        if completion:
            events = [{"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces]
            events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        else:
            events = [{"choices": [{"index": 0, "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": p},
                                    "finish_reason": None}]} for i, p in enumerate(pieces)]
            events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"choices": [], "usage": usage})
        if odd_json:
            events.insert(1, {"choices": {"index": 0}, "usage": "none"})
        for i, ev in enumerate(events):
            if i == 1 and drop_mid_stream:
                return await _drop(send)
            if i and chunk_delay_s:
                await asyncio.sleep(chunk_delay_s)
            kind = "text_completion" if completion else "chat.completion.chunk"
            data = json.dumps({**base, "object": kind, **ev}).replace('"1e999"', "1e999")
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        if isinstance(usage, dict) and not inf_usage and (body.get("stream_options") or {}).get("include_usage"):
            answered(usage)

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            stats["last_query"] = scope.get("query_string", b"").decode()
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            return await chat(receive, send, headers, completion=path == "/v1/completions")
        if method == "GET" and path == "/v1/models":
            return await reply(send, 200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "fake"}]})
        if method == "GET" and path == "/health":
            return await reply(send, 200, {"ok": True})
        if method == "GET" and path == "/stats":
            return await reply(send, 200, stats)
        await reply(send, 404, _error(f"no route {method} {scope['path']}", "invalid_request_error"))

    app.stats = stats
    return app


async def _raw_stream(send, text: str, base: dict, cut: bool) -> None:
    """A stream without length or chunking, written straight to the socket and ended by closing it."""
    transport = send.__self__.transport
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    events = [f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', **c})}\n\n" for c in chunks]
    events = events[:1] if cut else events + ["data: [DONE]\n\n"]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                    + "".join(events).encode())
    transport.close()
    for _ in range(3):
        await asyncio.sleep(0)


def free_port() -> int:
    """A free loopback port. It stays free only until a server binds it, so under pytest-xdist
    each worker takes its own share of the ports (by port // 2: Linux gives bind() odd ports and
    connect() even ones), and two workers never pick the same port before either has bound it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    mine = int(worker) % workers if worker.isdigit() else 0
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port // 2 % workers == mine:
            return port
    raise RuntimeError(f"no free loopback port in share {mine} of {workers}")


def address_taken(log: str) -> bool:
    """Whether a server failed to start because its port was taken meanwhile (by a client
    connection's local port, which may be any free port)."""
    return "address already in use" in log.lower()


class BackendProcess:
    """A fake backend running in a subprocess; stop it with ``.stop()``/``.kill()`` or use ``with``."""

    def __init__(self, proc: subprocess.Popen, port: int, name: str, stderr_file):
        self.proc, self.port, self.name, self._stderr = proc, port, name, stderr_file
        self.url = f"http://127.0.0.1:{port}/v1"

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5, trust_env=False).json()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_backend(port: int | None = None, name: str = "fake", **kwargs) -> BackendProcess:
    """Run this file as a subprocess on ``port`` (a free one if None) and wait until it is healthy.
    ``kwargs`` are ``make_app``'s options, e.g. ``fail_rate=0.3, drop_mid_stream=True``."""
    flags = {"delay_s": "--delay", "first_byte_delay_s": "--first-byte-delay", "chunk_delay_s": "--chunk-delay"}
    options = []
    for key, value in kwargs.items():
        flag = flags.get(key, "--" + key.replace("_", "-"))
        if isinstance(value, bool):
            options += [flag] if value else []
        else:
            options += [flag, str(value)]
    for attempt in range(1 if port else 3):  # a port of our choosing may be taken before the bind: take another
        chosen = port or free_port()
        cmd = [sys.executable, os.path.abspath(__file__), "--port", str(chosen), "--name", name, *options]
        stderr = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe could fill up and block the server
        backend = BackendProcess(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr), chosen, name, stderr)
        try:
            wait_until_up(f"http://127.0.0.1:{chosen}/health", backend.proc, backend.stderr, timeout=120)
            return backend
        except RuntimeError:
            backend.kill()
            if port or attempt == 2 or not address_taken(backend.stderr()):
                raise


def wait_until_up(health_url: str, proc: subprocess.Popen, stderr=lambda: "", timeout: float = 30) -> None:
    """Poll ``health_url`` until it answers 200; fail with the process's stderr if it exits first.
    One client for every poll: a new one each time (httpx.get) costs ~40 ms of CPU, which took
    half a core from the very process being waited for."""
    import httpx  # here, not at the top: a backend process serves without it, and starts faster

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{health_url}: process exited with {proc.returncode}:\n{stderr()}")
            try:
                if client.get(health_url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"{health_url}: not healthy after {timeout:g} s:\n{stderr()}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", required=True)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--status", type=int, default=500)
    p.add_argument("--rate-limit-rate", type=float, default=0.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--first-byte-delay", type=float, default=0.0)
    p.add_argument("--drop-mid-stream", action="store_true")
    p.add_argument("--drop-before-first-byte", action="store_true")
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--keepalive-first", action="store_true")
    p.add_argument("--odd-json", action="store_true")
    p.add_argument("--context-tokens", type=int, default=0)
    p.add_argument("--vary-word", default="")
    p.add_argument("--dissent-word", default="")
    p.add_argument("--inf-usage", action="store_true")
    p.add_argument("--close-delimited", action="store_true")
    p.add_argument("--cut-stream", action="store_true")
    p.add_argument("--echo-headers", action="store_true")
    p.add_argument("--delay-rate", type=float, default=1.0)
    p.add_argument("--watch-word", default="")
    p.add_argument("--fail-first", type=int, default=0)
    a = p.parse_args(argv)
    app = make_app(a.name, a.fail_rate, a.status, a.rate_limit_rate, a.delay, a.first_byte_delay,
                   a.drop_mid_stream, a.drop_before_first_byte, a.chunks, a.seed, a.chunk_delay, a.keepalive_first,
                   a.odd_json, a.context_tokens, a.vary_word, a.dissent_word, a.inf_usage, a.close_delimited,
                   a.cut_stream, a.echo_headers, a.delay_rate, a.watch_word, a.fail_first)
    import importlib.util
    import uvicorn
    has = importlib.util.find_spec
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, ws="none",
                loop="uvloop" if has("uvloop") else "asyncio", http="httptools" if has("httptools") else "auto")


if __name__ == "__main__":
    main()
