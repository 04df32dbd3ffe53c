"""Recording overhead of `herd collect`: the same calls to a fast fake backend through herd's
collection loop (prompting, grading, write-ahead log) and through bare client loops that only
send and read, side by side in one run, on loopback.

    python benchmarks/collect.py [--calls 3000] [--concurrency 64]

Prints calls/s for each and the ratios, and writes benchmarks/out/collect.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from fake_backend import start_backend  # noqa: E402

from herd.collect.prompts import Prompts  # noqa: E402
from herd.collect.recorder import Recorder, compact  # noqa: E402
from herd.collect.runner import Sampling, plan_calls, run  # noqa: E402
from herd.collect.tasks import load_task  # noqa: E402
from herd.pool import GatewaySettings, ModelConfig  # noqa: E402


def bodies(task, prompts) -> list[bytes]:
    return [json.dumps({"model": "fast", "messages": prompts.chat(task, item), "temperature": 0.0, "max_tokens": 512,
                        "seed": 0}).encode() for item in task.items]


async def bare_aiohttp(url: str, payloads: list[bytes], concurrency: int) -> float:
    import aiohttp

    todo = iter(payloads)

    async def worker(session):
        for p in todo:
            async with session.post(url, data=p, headers={"content-type": "application/json"}) as r:
                json.loads(await r.read())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


async def bare_httpx(url: str, payloads: list[bytes], concurrency: int) -> float:
    import httpx

    todo = iter(payloads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker():
            for p in todo:
                (await client.post(url, content=p, headers={"content-type": "application/json"})).json()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "out" / "collect.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="herd-collect-bench-"))
    questions = work / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                                 for i in range(args.calls)))
    task = load_task(str(questions), grader="number")
    prompts = Prompts.load()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "calls": args.calls, "concurrency": args.concurrency}
    with start_backend(name="fast") as backend:
        url = f"{backend.url}/chat/completions"
        model = ModelConfig(name="fast", base_url=backend.url, max_concurrency=args.concurrency)
        payloads = bodies(task, prompts)
        asyncio.run(bare_aiohttp(url, payloads[:200], args.concurrency))  # warm the backend
        seconds = {"bare_aiohttp": asyncio.run(bare_aiohttp(url, payloads, args.concurrency)),
                   "bare_httpx": asyncio.run(bare_httpx(url, payloads, args.concurrency))}
        rec = Recorder(work / "run")
        started = time.perf_counter()
        calls = plan_calls(task, [model], prompts, Sampling())
        tallies = asyncio.run(run(calls, [model], GatewaySettings(), Sampling(), rec))
        seconds["herd_collect"] = time.perf_counter() - started
        compact(rec, task, [model], {c: key for c, (_, _, key) in calls.items()}, 1)
        rec.close()
        assert tallies["fast"].answered == args.calls, tallies["fast"]
    rates = {k: args.calls / v for k, v in seconds.items()}
    results.update(seconds=seconds, calls_per_s=rates,
                   ratio_vs_bare_aiohttp=rates["herd_collect"] / rates["bare_aiohttp"],
                   ratio_vs_bare_httpx=rates["herd_collect"] / rates["bare_httpx"])
    print(f"{args.calls} calls at concurrency {args.concurrency} to a fast fake backend on loopback")
    for k, r in rates.items():
        print(f"  {k:13s} {r:8.0f} calls/s")
    print(f"  herd collect / bare aiohttp loop: {results['ratio_vs_bare_aiohttp']:.2f}; "
          f"/ bare httpx loop: {results['ratio_vs_bare_httpx']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
