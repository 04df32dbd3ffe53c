"""What learning from traffic costs the gateway: `herd serve` routed as it is, beside the same
pool with the choice log, prompt logging, the feedback log and exploration on (answered ids
remembered in process, then in Redis beside herd plain in Redis), on one fast fake backend,
on loopback only.

    python benchmarks/gateway_loop.py [--rounds 5] [--requests 1000] [--concurrency 32]

The gateways run at once and take turns round by round, so a busy machine slows each alike.
Per variant: chat p50/p99 one request at a time and at ``--concurrency``, throughput, and the
server's CPU ms per request (user + system, its own; 1000 / it is what one worker could serve
with a core of its own); then POST /v1/feedback on every answered request, timed the same way.
Writes benchmarks/out/gateway_loop.json.
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
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from fake_backend import free_port, start_backend, wait_until_up  # noqa: E402
from gateway import cpu_seconds, load  # noqa: E402
from servers import RedisProcess, redis_missing, train_toy_router  # noqa: E402

QUESTION = "add the numbers math question number 7"


async def answered_ids(url: str, n: int, concurrency: int) -> list[str]:
    import aiohttp

    ids: list[str] = []
    queue = iter(range(n))

    async def worker(session):
        for _ in queue:
            body = {"model": "herd", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
            async with session.post(url, json=body) as r:
                await r.read()
                ids.append(r.headers["x-herd-request-id"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ids


async def send_feedback(url: str, ids: list[str], concurrency: int) -> dict:
    import aiohttp

    latencies, statuses = [], {}
    queue = iter(ids)

    async def worker(session):
        for rid in queue:
            t0 = time.perf_counter()
            async with session.post(url, json={"request_id": rid, "score": 1, "label": "bench"}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(ids), "statuses": statuses, "rps": len(ids) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def timed(pid: int, work, warm_up: int = 0) -> dict:
    """``work``'s figures and the server's CPU per request; ``warm_up``: requests it sent beyond
    those it times (load() opens its connections with 2 x concurrency of them)."""
    cpu0 = cpu_seconds(pid)
    result = asyncio.run(work)
    cpu1 = cpu_seconds(pid)
    n = result["requests"] + warm_up
    result["server_cpu_ms_per_request"] = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000 / n
    return result


def median(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows if r.get(key) is not None]
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))} if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="chat requests per variant and round under load")
    ap.add_argument("--latency-requests", type=int, default=200, help="chat requests sent one at a time per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "out" / "gateway_loop.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="herd-loop-bench-"))
    router = train_toy_router(work / "router")
    redis_why = redis_missing()
    if redis_why:
        print(f"Redis variant skipped: {redis_why}")
    (work / "redis").mkdir()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "loadavg_at_start": os.getloadavg()},
               "method": "medians over rounds [min, max]; the variants take turns within each round",
               "requests": args.requests, "latency_requests": args.latency_requests, "concurrency": args.concurrency,
               "rounds": args.rounds, "variants": {}}
    with start_backend(name="math-7b") as backend:
        models = "\n".join(f"  - {{name: {m}, base_url: '{backend.url}', price_in_per_mtok: 1, price_out_per_mtok: 2}}"
                           for m in ("math-7b", "hist-7b", "big-70b"))
        pool = work / "pool.yaml"
        pool.write_text(f"models:\n{models}\nrouter: {router}\n")
        loop = ["--explore", "0.05", "--log-prompts"]
        variants = {"plain": ([], {}),
                    "loop_in_process": (loop + ["--choice-log", str(work / "c1.jsonl"), "--feedback-log",
                                                str(work / "f1.jsonl")], {})}
        redis = None if redis_why else RedisProcess(work / "redis", fsync="everysec")
        if redis is not None:  # with Redis herd also keeps the shared spend ledger, so plain is measured there too
            variants["plain_in_redis"] = ([], {"HERD_STATE_URL": redis.url})
            variants["loop_in_redis"] = (loop + ["--choice-log", str(work / "c2.jsonl"), "--feedback-log",
                                                 str(work / "f2.jsonl")], {"HERD_STATE_URL": redis.url})
        procs, urls = {}, {}
        try:
            for label, (extra, env) in variants.items():
                port = free_port()
                procs[label] = subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port),
                                                 "--log-level", "warning", *extra], env={**os.environ, **env},
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                urls[label] = f"http://127.0.0.1:{port}/v1"
            for label, proc in procs.items():
                wait_until_up(f"{urls[label].removesuffix('/v1')}/health", proc, timeout=180)
            runs = {label: {"unloaded": [], "loaded": [], "feedback": []} for label in variants}
            for k in range(args.rounds):
                for label in variants:
                    chat, pid = f"{urls[label]}/chat/completions", procs[label].pid
                    runs[label]["unloaded"].append(timed(pid, load(chat, "herd", args.latency_requests, 1),
                                                         min(args.latency_requests, 2)))
                    runs[label]["loaded"].append(timed(pid, load(chat, "herd", args.requests, args.concurrency),
                                                       min(args.requests, 2 * args.concurrency)))
                    if label.startswith("loop"):
                        ids = asyncio.run(answered_ids(chat, args.requests, args.concurrency))
                        runs[label]["feedback"].append(timed(pid, send_feedback(f"{urls[label]}/feedback", ids,
                                                                                args.concurrency)))
                print(f"  round {k + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=30)
            if redis is not None:
                redis.stop()
    for label, phases in runs.items():
        results["variants"][label] = {
            phase: {k: median(rows, k) for k in ("p50_ms", "p99_ms", "rps", "server_cpu_ms_per_request")}
            for phase, rows in phases.items() if rows}
        results["variants"][label]["errors"] = sum(r["errors"] for p in ("unloaded", "loaded") for r in phases[p])
        results["variants"][label]["feedback_statuses"] = dict(sum((Counter(r["statuses"]) for r in phases["feedback"]),
                                                                   Counter()))
    show(results, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def show(results: dict, args) -> None:
    def f(s, digits=2):
        return "?" if s is None else f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    print(f"\n{args.rounds} round(s), median [min-max]; chat: {args.latency_requests} one at a time, {args.requests} "
          f"at concurrency {args.concurrency}; feedback: one per answered request at concurrency {args.concurrency}")
    for label, v in results["variants"].items():
        for phase in ("unloaded", "loaded", "feedback"):
            if phase in v:
                x = v[phase]
                print(f"  {label:16s} {phase:9s} {f(x['rps'], 0):>18s} req/s  p50 {f(x['p50_ms']):>20s} ms  "
                      f"p99 {f(x['p99_ms']):>22s} ms  cpu/req {f(x['server_cpu_ms_per_request'], 3):>20s} ms")
        if v["errors"] or set(v["feedback_statuses"]) - {200}:
            print(f"  {label}: chat errors {v['errors']}, feedback statuses {v['feedback_statuses']}")


if __name__ == "__main__":
    main()
