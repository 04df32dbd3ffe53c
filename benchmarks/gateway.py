"""Gateway overhead: the same load against a fast fake backend directly and through `herd serve`,
side by side in one run, on loopback only.

    python benchmarks/gateway.py [--requests 4000] [--concurrency 64] [--workers 1 2] [--data ../shared/data]
    python benchmarks/gateway.py --limits [--requests 2000]   # + a key's limits: in process, then in Redis

Prints latency p50/p99 and throughput for each target and the added latency and throughput
ratio of herd, and writes benchmarks/out/gateway.json. The load client is aiohttp (pip install
aiohttp): httpx as a client tops out below what the gateway serves on these machines.
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

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many in all?",
    "What is the derivative of x^3 sin(x)?",
    "Which emperor ruled Rome when the Colosseum was finished?",
    "Write a Python function that reverses a linked list.",
]


async def load(url: str, model: str, requests: int, concurrency: int, headers: dict | None = None,
               keep_latencies: bool = False) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))

    async def worker(session):
        nonlocal errors
        for i in queue:
            body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "max_tokens": 16}
            t0 = time.perf_counter()
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        queue = iter(range(min(requests, 2 * concurrency)))
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))  # open the connections first
        queue = iter(range(requests))
        started = time.perf_counter()
        latencies.clear()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "errors": errors, "rps": requests / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            **({"ms": ms} if keep_latencies else {})}


def train_router(data: str, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "herd", "train", data, "--source", "zeroeval", "--benchmark", "gsm8k",
                    "--models", "gpt-4o-2024-08-06,gpt-4o-mini-2024-07-18,Meta-Llama-3-8B-Instruct",
                    "--router", "logistic", "--policy", "argmax", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-requests", type=int, default=500, help="requests sent one at a time for latency")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data", default=os.environ.get("HERD_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(HERE / "out" / "gateway.json"))
    ap.add_argument("--limits", action="store_true", help="instead: one worker with no keys, with a limited key in "
                    "process, and with the same key in Redis (needs redis-server); writes gateway_limits.json")
    args = ap.parse_args()
    if args.limits:
        return limits_main(args)

    work = Path(tempfile.mkdtemp(prefix="herd-gw-bench-"))
    train_router(args.data, work / "router")
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "requests": args.requests, "concurrency": args.concurrency, "runs": []}
    with start_backend(name="fast") as backend:
        pool = work / "pool.yaml"
        models = "\n".join(f"  - {{name: {m}, base_url: '{backend.url}', price_in_per_mtok: 1, price_out_per_mtok: 2}}"
                           for m in ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "Meta-Llama-3-8B-Instruct"))
        pool.write_text(f"models:\n{models}\nrouter: router\n")
        for workers in args.workers:
            port = free_port()
            gw = subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port),
                                   "--workers", str(workers), "--log-level", "warning"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until_up(f"http://127.0.0.1:{port}/health", gw)
                gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
                run = {"workers": workers}
                targets = (("direct", f"{backend.url}/chat/completions", "fast"), ("herd_routed", gateway, "herd"),
                           ("herd_by_name", gateway, "gpt-4o-mini-2024-07-18"))
                # Latency without queueing (one request at a time), then throughput under load.
                for phase, n, c in (("unloaded", args.latency_requests, 1), ("loaded", args.requests, args.concurrency)):
                    run[phase] = {label: asyncio.run(load(url, model, n, c)) for label, url, model in targets}
            finally:
                gw.terminate()
                gw.wait(timeout=30)
            for phase in ("unloaded", "loaded"):
                r = run[phase]
                for label in ("herd_routed", "herd_by_name"):
                    r[f"added_p50_ms_{label}"] = r[label]["p50_ms"] - r["direct"]["p50_ms"]
                    r[f"added_p99_ms_{label}"] = r[label]["p99_ms"] - r["direct"]["p99_ms"]
                    r[f"throughput_ratio_{label}"] = r[label]["rps"] / r["direct"]["rps"]
            results["runs"].append(run)
            print(f"\nherd with {workers} worker(s)")
            for phase, (n, c) in (("unloaded", (args.latency_requests, 1)), ("loaded", (args.requests, args.concurrency))):
                print(f"  {phase}: {n} requests at concurrency {c}")
                r = run[phase]
                for label in ("direct", "herd_routed", "herd_by_name"):
                    x = r[label]
                    print(f"    {label:13s} {x['rps']:7.0f} req/s  p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms  "
                          f"errors {x['errors']}")
                print(f"    added p50/p99: routed {r['added_p50_ms_herd_routed']:.2f}/{r['added_p99_ms_herd_routed']:.2f} ms, "
                      f"by name {r['added_p50_ms_herd_by_name']:.2f}/{r['added_p99_ms_herd_by_name']:.2f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


LIMITED_KEY = ("keys:\n  - {name: bench, key: sk-bench, rpm: 100000000, tpm: 1000000000000, "
               "budget_usd_per_day: 1000000, budget_usd_per_month: 1000000}\n")


def limits_main(args) -> None:
    """Added latency of a limited key's checks (rate windows, budget hold, charge), in process and
    in Redis, next to herd without keys; by-name requests, so routing does not blur it. The three
    gateways run at once and take turns request by request (unloaded) or burst by burst
    (loaded), so a busy machine slows each of them alike."""
    from servers import RedisProcess

    work = Path(tempfile.mkdtemp(prefix="herd-limits-bench-"))
    keys = work / "keys.yaml"
    keys.write_text(LIMITED_KEY)
    (work / "redis").mkdir()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "requests": args.requests, "concurrency": args.concurrency, "runs": {}}
    auth = {"authorization": "Bearer sk-bench"}
    with start_backend(name="fast") as backend, RedisProcess(work / "redis", fsync="everysec") as redis:
        pool = work / "pool.yaml"
        pool.write_text(f"models:\n  - {{name: m, base_url: '{backend.url}', price_in_per_mtok: 1, price_out_per_mtok: 2}}\n")
        variants = (("no_keys", [], {}), ("limits_in_process", ["--api-keys-file", str(keys)], {}),
                    ("limits_in_redis", ["--api-keys-file", str(keys)], {"HERD_STATE_URL": redis.url}))
        results["admit_only"] = asyncio.run(admit_only(redis.url))
        procs, urls = [], {}
        try:
            for label, extra, env in variants:
                port = free_port()
                procs.append(subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port),
                                               "--log-level", "warning", *extra], env={**os.environ, **env},
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                urls[label] = f"http://127.0.0.1:{port}/v1/chat/completions"
            for proc, url in zip(procs, urls.values()):
                wait_until_up(url.replace("/v1/chat/completions", "/health"), proc, timeout=180)
            rounds = 10
            runs = {label: {"unloaded": [], "loaded": []} for label in urls}
            for _ in range(rounds):
                for label, url in urls.items():
                    runs[label]["unloaded"].append(asyncio.run(load(url, "m", args.latency_requests // rounds, 1, auth, True)))
                    runs[label]["loaded"].append(asyncio.run(load(url, "m", args.requests // rounds, args.concurrency, auth,
                                                                   True)))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    for label, phases in runs.items():
        results["runs"][label] = {phase: _pooled(parts) for phase, parts in phases.items()}
    runs = results["runs"]
    for phase in ("unloaded", "loaded"):
        for stat in ("p50_ms", "p99_ms"):
            results[f"{phase}_redis_minus_in_process_{stat}"] = (runs["limits_in_redis"][phase][stat]
                                                                 - runs["limits_in_process"][phase][stat])
    a = results["admit_only"]
    print(f"\nthe admission check alone, in this process, in turns ({a['checks']} each): in process p50 "
          f"{a['in_process']['p50_ms']:.3f} ms, p99 {a['in_process']['p99_ms']:.3f} ms; Redis p50 "
          f"{a['redis']['p50_ms']:.3f} ms, p99 {a['redis']['p99_ms']:.3f} ms")
    print(f"\nherd (1 worker) with a limited key, in turns: {args.latency_requests} requests one at a time "
          f"(unloaded), {args.requests} at concurrency {args.concurrency} (loaded), per variant")
    for phase in ("unloaded", "loaded"):
        print(f"  {phase}")
        for label, r in runs.items():
            x = r[phase]
            print(f"    {label:18s} {x['rps']:7.0f} req/s  p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms  "
                  f"errors {x['errors']}")
        print(f"    Redis minus in process: p50 {results[f'{phase}_redis_minus_in_process_p50_ms']:+.2f} ms, "
              f"p99 {results[f'{phase}_redis_minus_in_process_p99_ms']:+.2f} ms")
    out = Path(args.out).with_name("gateway_limits.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


async def admit_only(redis_url: str, checks: int = 3000) -> dict:
    """A limited key's admission (rate windows, budget hold) alone, without HTTP: the local store
    and Redis in turns, so the figure is the store's own cost."""
    from herd.gateway.keys import ClientKey
    from herd.gateway.state import LocalState, RedisState, periods

    key = ClientKey("bench-admit", b"x", rpm=10 ** 9, tpm=10 ** 12, day_usd=1e9, month_usd=1e9)
    stores, times = {"in_process": LocalState(), "redis": RedisState(redis_url)}, {"in_process": [], "redis": []}
    day, month = periods()
    for i in range(checks):
        for label, store in stores.items():
            t0 = time.perf_counter()
            await store.admit(key, 1e-6, f"admit-{i}", day, month)
            times[label].append((time.perf_counter() - t0) * 1000)
    await stores["redis"].close()
    return {"checks": checks, **{label: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}
                                 for label, t in times.items()}}


def _pooled(parts: list[dict]) -> dict:
    """Rounds of one variant as one run: percentiles over all latencies, throughput over all time."""
    ms = np.concatenate([p["ms"] for p in parts])
    wall = sum(p["requests"] / p["rps"] for p in parts)
    return {"requests": int(ms.size), "errors": sum(p["errors"] for p in parts), "rps": ms.size / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


if __name__ == "__main__":
    main()
