"""Gateway overhead: the same load against a fast fake backend directly, through `herd serve`
(routed and by model name), through the floor of herd's serving stack (benchmarks/floor_proxy.py:
uvicorn relaying with aiohttp, nothing else; one worker only) and, when given, through another
herd checkout and LiteLLM's proxy, side by side in one run, on loopback only.

    python benchmarks/gateway.py [--rounds 3] [--requests 2000] [--concurrency 64] [--workers 1]
        [--baseline DIR] [--litellm PATH] [--data ../shared/data]
    python benchmarks/gateway.py --limits [--requests 2000] [--baseline DIR]   # a key's limits: in process, in Redis

``--baseline DIR`` serves the same pool with the herd source tree in DIR (e.g. a worktree of an
earlier commit; the router it routes with is trained by that checkout too), so a change is measured against what it changes in the same run. ``--litellm``
(or HERD_BENCH_LITELLM) is the ``litellm`` command of a separate venv (``python -m venv
/tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``); LiteLLM is never a
dependency of herd, and without it that column is skipped with a message.

Each round sends every target, in a rotating order, requests one at a time (latency without
queueing) and then at ``--concurrency`` (throughput), so a shared machine's load falls on all of
them alike; figures are medians over rounds with their range. Added latency is a gateway's p50/p99
minus the direct call's in the same round. CPU ms per request is the server process's own CPU
time (user + system, its worker processes included) over the requests it answered: unlike wall
time it does not grow when other processes take the cores, and 1000 / it is the throughput one
worker could reach with a core of its own. Writes benchmarks/out/gateway.json.
The load client is aiohttp: httpx as a client tops out below what the gateway serves here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
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
MODELS = ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "Meta-Llama-3-8B-Instruct")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its descendants (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / TICKS
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return None
    return own + sum(c for child in children if (c := cpu_seconds(int(child))) is not None)


def measured(url: str, model: str, requests: int, concurrency: int, pid: int) -> dict:
    cpu0 = cpu_seconds(pid)
    result = asyncio.run(load(url, model, requests, concurrency))
    cpu1 = cpu_seconds(pid)
    # Includes the warm-up requests that open the connections, so counted over all requests sent.
    sent = requests + min(requests, 2 * concurrency)
    result["server_cpu_ms_per_request"] = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000 / sent
    result["loadavg_1m"] = os.getloadavg()[0]
    return result


def source_env(src: Path | None) -> dict:
    """The environment that runs herd from the source tree in ``src`` (None: the installed herd)."""
    return dict(os.environ, **({"PYTHONPATH": str(src / "src")} if src is not None else {}))


def checkout(src: Path | None) -> dict | None:
    """The baseline as the JSON records it: its path and, in a git checkout, its commit."""
    if src is None:
        return None
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"path": str(src), "commit": commit or None}


def train_router(data: str, out: Path, src: Path | None = None) -> None:
    """Train the benchmark's router with the herd in ``src``: a checkout reads the artifacts it writes."""
    subprocess.run([sys.executable, "-m", "herd", "train", data, "--source", "zeroeval", "--benchmark", "gsm8k",
                    "--models", ",".join(MODELS), "--router", "logistic", "--policy", "argmax", "-o", str(out)],
                   check=True, stdout=subprocess.DEVNULL, env=source_env(src))


def start_herd(pool: Path, workers: int, src: Path | None = None) -> tuple[subprocess.Popen, str]:
    env = source_env(src)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port),
                             "--workers", str(workers), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=180)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def start_litellm(command: str, backend_url: str, workers: int, work: Path) -> tuple[subprocess.Popen, str]:
    """LiteLLM's proxy serving the fake backend as model 'fast': no master key (as herd on loopback
    needs none), no access log (as herd's benchmark runs at --log-level warning), no network."""
    config = work / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: fast\n    litellm_params:\n      model: openai/fast\n"
                      f"      api_base: {backend_url}\n      api_key: none\n")
    logging_config = work / "litellm-logging.json"
    logging_config.write_text(json.dumps({"version": 1, "disable_existing_loggers": False,
                                          "root": {"level": "WARNING"},
                                          "loggers": {"uvicorn.access": {"level": "WARNING"}}}))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    port = free_port()
    proc = subprocess.Popen([command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", str(workers), "--log_config", str(logging_config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work)
    wait_until_up(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=300)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def start_floor(backend_url: str) -> tuple[subprocess.Popen, str]:
    """The stack's floor (benchmarks/floor_proxy.py): uvicorn relaying to the backend with aiohttp,
    nothing else."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "floor_proxy.py"), "--port", str(port), "--backend", backend_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def litellm_command(given: str | None) -> str | None:
    """The litellm command asked for, or None (with the reason printed)."""
    if not given:
        print("LiteLLM: skipped (pass --litellm PATH or set HERD_BENCH_LITELLM to the litellm command of a venv "
              "with 'litellm[proxy]' installed)")
        return None
    found = shutil.which(given)
    if found is None:
        print(f"LiteLLM: skipped ({given} is not an executable litellm command)")
    return found


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def summarize(rounds: list[dict], labels: list[str]) -> dict:
    """Per phase and target: medians and ranges over rounds; added latency against direct per round."""
    out = {}
    for phase in ("unloaded", "loaded"):
        out[phase] = {}
        for label in labels:
            runs = [r[phase][label] for r in rounds]
            row = {k: spread([x[k] for x in runs]) for k in ("p50_ms", "p99_ms", "rps")}
            cpu = [x["server_cpu_ms_per_request"] for x in runs]
            row["server_cpu_ms_per_request"] = spread(cpu) if None not in cpu else None
            row["errors"] = sum(x["errors"] for x in runs)
            if label != "direct":
                for q in ("p50", "p99"):
                    row[f"added_{q}_ms"] = spread([r[phase][label][f"{q}_ms"] - r[phase]["direct"][f"{q}_ms"]
                                                   for r in rounds])
                row["throughput_ratio"] = spread([r[phase][label]["rps"] / r[phase]["direct"]["rps"] for r in rounds])
            out[phase][label] = row
    return out


def show(summary: dict, args) -> None:
    def f(s, digits=2):
        return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    for phase, (n, c) in (("unloaded", (args.latency_requests, 1)), ("loaded", (args.requests, args.concurrency))):
        print(f"  {phase}: {n} requests at concurrency {c}, {args.rounds} round(s): median [min-max]")
        for label, x in summary[phase].items():
            cpu = x["server_cpu_ms_per_request"]
            line = (f"    {label:15s} {f(x['rps'], 0):>18s} req/s  p50 {f(x['p50_ms']):>20s} ms  "
                    f"p99 {f(x['p99_ms']):>20s} ms  cpu/req {f(cpu, 3) if cpu else '?':>20s} ms")
            if label != "direct":
                line += f"  added p50 {f(x['added_p50_ms'])} p99 {f(x['added_p99_ms'])} ms"
            print(line + (f"  errors {x['errors']}" if x["errors"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per target and round under load")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-requests", type=int, default=300, help="requests sent one at a time for latency")
    ap.add_argument("--rounds", type=int, help="rounds of turns (default 3; with --limits 10)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--baseline", type=Path, help="another herd checkout (its src/ is imported) served side by side")
    ap.add_argument("--litellm", default=os.environ.get("HERD_BENCH_LITELLM"), help="the litellm command of a "
                    "separate venv with 'litellm[proxy]' (default: $HERD_BENCH_LITELLM); skipped without it")
    ap.add_argument("--data", default=os.environ.get("HERD_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(HERE / "out" / "gateway.json"))
    ap.add_argument("--limits", action="store_true", help="instead: one worker with no keys, with a limited key in "
                    "process, and with the same key in Redis (needs redis-server); writes gateway_limits.json")
    args = ap.parse_args()
    if args.limits:
        return limits_main(args)
    args.rounds = args.rounds or 3

    litellm = litellm_command(args.litellm)
    work = Path(tempfile.mkdtemp(prefix="herd-gw-bench-"))
    train_router(args.data, work / "router")
    if args.baseline:  # trained by the checkout itself, which may read only its own artifact format
        (work / "baseline").mkdir()
        train_router(args.data, work / "baseline" / "router", args.baseline)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "loadavg_at_start": os.getloadavg()},
               "method": "medians over rounds [min, max]; added = target minus direct in the same round",
               "requests": args.requests, "latency_requests": args.latency_requests, "concurrency": args.concurrency,
               "rounds": args.rounds, "baseline": checkout(args.baseline), "runs": []}
    if litellm:
        version = subprocess.run([str(Path(litellm).parent / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True).stdout.strip()
        results["litellm_version"] = version or None
    with start_backend(name="fast") as backend:
        pool = work / "pool.yaml"
        models = "\n".join(f"  - {{name: {m}, base_url: '{backend.url}', price_in_per_mtok: 1, price_out_per_mtok: 2}}"
                           for m in MODELS)
        pool.write_text(f"models:\n{models}\nrouter: router\n")
        base_pool = work / "baseline" / "pool.yaml"
        if args.baseline:
            base_pool.write_text(pool.read_text())
        for workers in args.workers:
            servers = []
            try:
                herd, herd_url = start_herd(pool, workers)
                servers.append(herd)
                targets = [("direct", f"{backend.url}/chat/completions", "fast", backend.proc.pid),
                           ("herd_routed", herd_url, "herd", herd.pid),
                           ("herd_by_name", herd_url, MODELS[1], herd.pid)]
                if args.baseline:
                    base, base_url = start_herd(base_pool, workers, args.baseline)
                    servers.append(base)
                    targets += [("baseline_routed", base_url, "herd", base.pid),
                                ("baseline_by_name", base_url, MODELS[1], base.pid)]
                if workers == 1:
                    floor, floor_url = start_floor(backend.url)
                    servers.append(floor)
                    targets.append(("stack_floor", floor_url, "fast", floor.pid))
                if litellm:
                    proxy, proxy_url = start_litellm(litellm, backend.url, workers, work)
                    servers.append(proxy)
                    targets.append(("litellm", proxy_url, "fast", proxy.pid))
                rounds = []
                for k in range(args.rounds):
                    order = targets[k % len(targets):] + targets[:k % len(targets)]
                    done = {"unloaded": {}, "loaded": {}}
                    for label, url, model, pid in order:
                        done["unloaded"][label] = measured(url, model, args.latency_requests, 1, pid)
                        done["loaded"][label] = measured(url, model, args.requests, args.concurrency, pid)
                    rounds.append(done)
                    print(f"  round {k + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
            finally:
                for proc in servers:
                    proc.terminate()
                for proc in servers:
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            labels = [t[0] for t in targets]
            run = {"workers": workers, "summary": summarize(rounds, labels), "rounds": rounds}
            results["runs"].append(run)
            print(f"\nwith {workers} worker(s) per gateway; load average at start {results['machine']['loadavg_at_start'][0]:.1f}")
            show(run["summary"], args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


LIMITED_KEY = ("keys:\n  - {name: bench, key: sk-bench, rpm: 100000000, tpm: 1000000000000, "
               "budget_usd_per_day: 1000000, budget_usd_per_month: 1000000}\n")


def limits_main(args) -> None:
    """Added latency of a limited key's checks (rate windows, budget hold, charge), in process and
    in Redis, next to herd without keys; by-name requests, so routing does not blur it. The
    gateways (and, with --baseline, the same key in Redis through another checkout) run at once
    and take turns in short rounds, so a busy machine slows each of them alike. CPU ms per
    request: each herd process's own, and Redis's over the requests of the variants using it."""
    from servers import RedisProcess

    work = Path(tempfile.mkdtemp(prefix="herd-limits-bench-"))
    keys = work / "keys.yaml"
    keys.write_text(LIMITED_KEY)
    (work / "redis").mkdir()
    rounds = args.rounds or 10
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "loadavg_at_start": os.getloadavg()},
               "requests": args.requests, "latency_requests": args.latency_requests, "concurrency": args.concurrency,
               "rounds": rounds, "baseline": checkout(args.baseline), "runs": {}}
    auth = {"authorization": "Bearer sk-bench"}
    with start_backend(name="fast") as backend, RedisProcess(work / "redis", fsync="everysec") as redis:
        pool = work / "pool.yaml"
        pool.write_text(f"models:\n  - {{name: m, base_url: '{backend.url}', price_in_per_mtok: 1, price_out_per_mtok: 2}}\n")
        limited, shared = ["--api-keys-file", str(keys)], {"HERD_STATE_URL": redis.url}
        variants = [("no_keys", [], {}, None), ("limits_in_process", limited, {}, None),
                    ("limits_in_redis", limited, shared, None)]
        if args.baseline:
            variants.append(("baseline_in_redis", limited, shared, args.baseline))
        results["admit_only"] = asyncio.run(admit_only(redis.url))
        procs, urls = {}, {}
        try:
            for label, extra, env, src in variants:
                env = {**source_env(src), **env}
                port = free_port()
                procs[label] = subprocess.Popen([sys.executable, "-m", "herd", "serve", str(pool), "--port", str(port),
                                                 "--log-level", "warning", *extra], env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                urls[label] = f"http://127.0.0.1:{port}/v1/chat/completions"
            for label, proc in procs.items():
                wait_until_up(urls[label].replace("/v1/chat/completions", "/health"), proc, timeout=180)
            runs = {label: {"unloaded": [], "loaded": []} for label in urls}
            for k in range(rounds):
                order = list(urls)[k % len(urls):] + list(urls)[:k % len(urls)]
                for phase, n, concurrency in (("unloaded", args.latency_requests // rounds, 1),
                                              ("loaded", args.requests // rounds, args.concurrency)):
                    for label in order:
                        cpu0, redis0 = cpu_seconds(procs[label].pid), cpu_seconds(redis.proc.pid)
                        part = asyncio.run(load(urls[label], "m", n, concurrency, auth, True))
                        sent = n + min(n, 2 * concurrency)  # with the warm-up requests that open connections
                        part["cpu_s"] = cpu_seconds(procs[label].pid) - cpu0
                        part["redis_cpu_s"] = cpu_seconds(redis.proc.pid) - redis0
                        part["sent"], part["loadavg_1m"] = sent, os.getloadavg()[0]
                        runs[label][phase].append(part)
                print(f"  round {k + 1}/{rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=30)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    for label, phases in runs.items():
        results["runs"][label] = {phase: _pooled(parts) for phase, parts in phases.items()}
    runs = results["runs"]
    for phase in ("unloaded", "loaded"):
        for stat in ("p50_ms", "p99_ms"):
            results[f"{phase}_redis_minus_in_process_{stat}"] = (runs["limits_in_redis"][phase][stat]
                                                                 - runs["limits_in_process"][phase][stat])
    a = results["admit_only"]
    print(f"\nthe admission check alone, in this process, in turns ({a['checks']} each): in process p50 "
          f"{a['in_process']['p50_ms']:.3f} ms, p99 {a['in_process']['p99_ms']:.3f} ms")
    for label, what in (("redis", "a round trip each"), ("redis_leased", "a busy key, from leases")):
        print(f"  Redis, {what}: p50 {a[label]['p50_ms']:.3f} ms, p99 {a[label]['p99_ms']:.3f} ms, CPU "
              f"{a[label]['cpu_ms']:.3f} ms here and {a[f'{label}_cpu_ms_per_check']:.3f} ms in Redis per check")
    print(f"\nherd (1 worker) with a limited key, in {rounds} rounds of turns: {args.latency_requests} requests one at a "
          f"time (unloaded), {args.requests} at concurrency {args.concurrency} (loaded), per variant; load average "
          f"{results['machine']['loadavg_at_start'][0]:.1f} at start, {results['machine']['loadavg_at_end'][0]:.1f} at end")
    for phase in ("unloaded", "loaded"):
        print(f"  {phase}")
        for label, by_phase in runs.items():
            x = by_phase[phase]
            redis_cpu = f"  Redis cpu/req {x['redis_cpu_ms_per_request']:.3f} ms" if "redis" in label else ""
            print(f"    {label:18s} {x['rps']:7.0f} req/s  p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms  "
                  f"herd cpu/req {x['cpu_ms_per_request']:.3f} ms{redis_cpu}  errors {x['errors']}")
        print(f"    Redis minus in process: p50 {results[f'{phase}_redis_minus_in_process_p50_ms']:+.2f} ms, "
              f"p99 {results[f'{phase}_redis_minus_in_process_p99_ms']:+.2f} ms")
    out = Path(args.out).with_name("gateway_limits.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


async def admit_only(redis_url: str, checks: int = 3000) -> dict:
    """A limited key's admission (rate windows, budget hold) alone, without HTTP: the local store,
    Redis with one round trip per admission (the key never busy enough for a lease) and Redis
    for a busy key (admitted from leases), in turns, so the figure is the store's own cost."""
    from herd.gateway.keys import ClientKey
    from herd.gateway.state import LocalState, RedisState, periods

    key = ClientKey("bench-admit", b"x", rpm=10 ** 9, tpm=10 ** 12, day_usd=1e9, month_usd=1e9)
    stores = {"in_process": LocalState(), "redis": RedisState(redis_url), "redis_leased": RedisState(redis_url)}
    times, cpu = {label: [] for label in stores}, dict.fromkeys(stores, 0.0)
    day, month = periods()
    for label in ("redis", "redis_leased"):
        await stores[label].admit(key, 1e-6, f"admit-warm-up-{label}", day, month)  # connects
    redis_pid = int((await stores["redis"].redis.call("INFO", "server"))["process_id"])
    redis_cpu = dict.fromkeys(("redis", "redis_leased"), 0.0)
    for i in range(checks):
        for label, store in stores.items():
            if label == "redis":
                store.recent.clear()  # as if the key had no other request here: no lease
            r0 = cpu_seconds(redis_pid) if label in redis_cpu else 0.0
            c0, t0 = time.process_time(), time.perf_counter()
            await store.admit(key, 1e-6, f"admit-{label}-{i}", day, month)
            times[label].append((time.perf_counter() - t0) * 1000)
            cpu[label] += time.process_time() - c0
            if label in redis_cpu:
                redis_cpu[label] += cpu_seconds(redis_pid) - r0
    for label in redis_cpu:
        await stores[label].close()
    return {"checks": checks, **{label: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                                         "cpu_ms": cpu[label] * 1000 / checks} for label, t in times.items()},
            **{f"{label}_cpu_ms_per_check": c * 1000 / checks for label, c in redis_cpu.items()}}


def _pooled(parts: list[dict]) -> dict:
    """Rounds of one variant as one run: percentiles over all latencies, throughput over all time,
    CPU over all requests sent."""
    ms = np.concatenate([p["ms"] for p in parts])
    wall = sum(p["requests"] / p["rps"] for p in parts)
    sent = sum(p["sent"] for p in parts)
    return {"requests": int(ms.size), "errors": sum(p["errors"] for p in parts), "rps": ms.size / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "cpu_ms_per_request": sum(p["cpu_s"] for p in parts) * 1000 / sent,
            "redis_cpu_ms_per_request": sum(p["redis_cpu_s"] for p in parts) * 1000 / sent,
            "loadavg_1m": spread([p["loadavg_1m"] for p in parts])}


if __name__ == "__main__":
    main()
