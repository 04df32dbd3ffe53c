"""What garbage collection costs the gateway per request, with and without the start-up heap set
aside (`herd serve` does `gc.freeze()` once its router is warmed up).

The app is driven in this process without sockets (ASGI calls, backend replies canned), so the
figures are herd's own CPU per request and the collector's share of it, timed by gc.callbacks.
The router is the one benchmarks/gateway.py serves: TF-IDF logistic on GSM8K's three models.

    python benchmarks/gateway_heap.py [--requests 3000] [--rounds 3]

Writes benchmarks/out/gateway_heap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from gateway import MODELS, QUESTIONS, train_router

from herd.gateway.app import create_app
from herd.gateway.selection import Selector
from herd.pool import load_pool

REPLY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}).encode()


class CannedReply:
    status, headers = 200, {}

    async def read(self) -> bytes:
        return REPLY

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class CannedSession:
    """The part of aiohttp's ClientSession a backend uses, answering every call at once."""

    async def post(self, url, data, headers=None):
        return CannedReply()

    async def close(self) -> None:
        pass


class CollectorClock:
    """CPU seconds spent in garbage collection, by generation, while installed."""

    def __init__(self):
        self.spent, self.runs, self._started = [0.0, 0.0, 0.0], [0, 0, 0], 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.spent[info["generation"]] += time.process_time() - self._started
            self.runs[info["generation"]] += 1


def scope(body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
            "headers": [(b"host", b"herd"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def serve(app, bodies: list[bytes], n: int) -> None:
    never = asyncio.get_running_loop().create_future()  # the client never leaves
    for i in range(n):
        body = bodies[i % len(bodies)]
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await never

        sent = []

        async def send(message):
            sent.append(message)

        await app(scope(body), receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"the gateway answered {sent[0]['status']}: {sent[-1].get('body', b'')[:200]!r}")


def measure(app, bodies: list[bytes], n: int) -> dict:
    asyncio.run(serve(app, bodies, 200))  # warm
    clock = CollectorClock()
    gc.callbacks.append(clock)
    try:
        started = time.process_time()
        asyncio.run(serve(app, bodies, n))
        cpu = time.process_time() - started
    finally:
        gc.callbacks.remove(clock)
    return {"cpu_us_per_request": cpu / n * 1e6, "gc_us_per_request": sum(clock.spent) / n * 1e6,
            "gc_us_by_generation": [s / n * 1e6 for s in clock.spent], "collections": clock.runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=os.environ.get("HERD_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "gateway_heap.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="herd-heap-bench-"))
    train_router(args.data, work / "router")
    (work / "pool.yaml").write_text("models:\n" + "\n".join(
        f"  - {{name: {m}, base_url: 'http://{i}.invalid/v1', price_in_per_mtok: 1, price_out_per_mtok: 2}}"
        for i, m in enumerate(MODELS)) + "\nrouter: router\n")
    pool, router_dir = load_pool(work / "pool.yaml")
    selector = Selector.from_config(pool, router_dir)
    selector.warm_up()
    app = create_app(pool, selector, session_factory=CannedSession)
    bodies = {route: [json.dumps({"model": route, "messages": [{"role": "user", "content": q}], "max_tokens": 16}).encode()
                      for q in QUESTIONS] for route in ("herd", MODELS[1])}
    gc.collect()
    rounds = []
    for k in range(args.rounds):  # the heap in the collector's sight, then set aside, in turns
        done = {}
        for frozen in (False, True):
            if frozen:
                gc.freeze()
            for route, label in (("herd", "routed"), (MODELS[1], "by_name")):
                done[f"{label}_{'frozen' if frozen else 'tracked'}"] = measure(app, bodies[route], args.requests)
            gc.unfreeze()
        rounds.append(done)
        print(f"  round {k + 1}/{args.rounds} done", flush=True)
    summary = {label: {key: statistics.median(r[label][key] for r in rounds)
                       for key in ("cpu_us_per_request", "gc_us_per_request")} for label in rounds[0]}
    print(f"\nherd's own CPU per request in this process (backend replies canned), medians of {args.rounds} rounds "
          f"of {args.requests} requests:")
    for label, figures in summary.items():
        print(f"  {label:16s} {figures['cpu_us_per_request']:7.0f} us   of which garbage collection "
              f"{figures['gc_us_per_request']:6.1f} us")
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "loadavg_at_start": os.getloadavg()},
              "requests": args.requests, "rounds": rounds, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
