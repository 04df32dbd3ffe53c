"""Agreement cascades in the gateway: what asking a first stage of 2-3 models costs in latency, side by
side in one run with a plain call through herd (by name and routed) and with the backend directly.
Fake backends answer after a fixed delay (50 ms by default), on loopback only.

    python benchmarks/gateway_agree.py [--delay-ms 50] [--requests 200] [--loaded-requests 2000] [--concurrency 32]

The first stage is asked concurrently, so an accepted answer should take about one backend call,
not k; a disagreement adds the strong model's call (about two). Prints latency p50/p99 and
throughput per target, the added latency over a plain call, and writes
benchmarks/out/gateway_agree.json. The load client is aiohttp, as in benchmarks/gateway.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from fake_backend import free_port, start_backend, wait_until_up  # noqa: E402

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in all? The answer is 72"
DISPUTE = " dispute"  # in a question, the first-stage backends give answers of their own: they disagree
FIRST = ["small-a", "small-b", "small-c"]


async def load(url: str, model: str, question: str, requests: int, concurrency: int) -> dict:
    """Send ``requests`` chat requests at ``concurrency``; latency percentiles, throughput, and the
    share of answers whose first stage agreed (``x-herd-agreed``)."""
    import aiohttp

    latencies: list[float] = []
    errors = agreed = 0
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16}

    async def worker(session, queue):
        nonlocal errors, agreed
        for _ in queue:
            t0 = time.perf_counter()
            async with session.post(url, json=body) as r:
                await r.read()
                errors += r.status != 200
                agreed += r.headers.get("x-herd-agreed") == "yes"
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        warm = iter(range(min(requests, 2 * concurrency)))
        await asyncio.gather(*(worker(session, warm) for _ in range(concurrency)))  # open the connections first
        latencies.clear()
        errors = agreed = 0
        queue = iter(range(requests))
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, queue) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "errors": errors, "agreed_share": agreed / requests, "rps": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def write_pool(path: Path, urls: dict[str, str]) -> None:
    models = [{"name": n, "base_url": u, "price_in_per_mtok": 0.1 if n in FIRST else 5,
               "price_out_per_mtok": 0.2 if n in FIRST else 15} for n, u in urls.items()]
    cascade = {"name": "agree", "then": "strong", "need": 2, "grader": "number"}
    policies = {"agree2": {**cascade, "models": FIRST[:2]}, "agree3": {**cascade, "models": FIRST}}
    path.write_text(json.dumps({"models": models, "policies": policies}, indent=1))  # JSON is YAML


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=50.0, help="every backend's delay before it answers")
    ap.add_argument("--requests", type=int, default=200, help="requests per target, sent one at a time")
    ap.add_argument("--loaded-requests", type=int, default=2000, help="requests per target under load")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "out" / "gateway_agree.json"))
    args = ap.parse_args()

    names = [*FIRST, "strong"]
    backends = {n: start_backend(name=n, delay_s=args.delay_ms / 1000, dissent_word=DISPUTE.strip() if n in FIRST else "")
                for n in names}
    work = Path(tempfile.mkdtemp(prefix="herd-agree-bench-"))
    pool = work / "pool.yaml"
    write_pool(pool, {n: b.url for n, b in backends.items()})
    port = free_port()
    gw = subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port), "--log-level", "warning"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
    # label: (url, model, question, backend calls the answer needs)
    targets = {"direct": (f"{backends['small-a'].url}/chat/completions", "small-a", QUESTION, 1),
               "herd_by_name": (gateway, "small-a", QUESTION, 1),
               "herd_routed": (gateway, "herd", QUESTION, 1),
               "agree2_accepted": (gateway, "herd:agree2", QUESTION, 2),
               "agree3_accepted": (gateway, "herd:agree3", QUESTION, 3),
               "agree2_escalated": (gateway, "herd:agree2", QUESTION + DISPUTE, 3)}
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "delay_ms": args.delay_ms, "concurrency": args.concurrency,
               "targets": {label: {"model": m, "calls": k} for label, (_, m, _, k) in targets.items()}}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", gw)
        for phase, n, c in (("unloaded", args.requests, 1), ("loaded", args.loaded_requests, args.concurrency)):
            results[phase] = {label: asyncio.run(load(url, model, q, n, c)) for label, (url, model, q, _) in targets.items()}
            plain = results[phase]["herd_by_name"]
            for label, r in results[phase].items():
                r["added_p50_ms_over_by_name"] = r["p50_ms"] - plain["p50_ms"]
                r["added_p99_ms_over_by_name"] = r["p99_ms"] - plain["p99_ms"]
    finally:
        gw.terminate()
        gw.wait(timeout=30)
        for b in backends.values():
            b.stop()
    print(f"backends answer after {args.delay_ms:g} ms; a sequential first stage of k models would add (k-1) x that")
    for phase, n, c in (("unloaded", args.requests, 1), ("loaded", args.loaded_requests, args.concurrency)):
        print(f"\n{phase}: {n} requests per target at concurrency {c}")
        for label, r in results[phase].items():
            print(f"  {label:17s} calls {targets[label][3]}  {r['rps']:6.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  +p50 {r['added_p50_ms_over_by_name']:6.2f} ms over by-name  "
                  f"agreed {r['agreed_share']:.0%}  errors {r['errors']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
