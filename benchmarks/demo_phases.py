"""Where `herd demo`'s time goes: the demo run in-process under cProfile, its phases summed.

    python benchmarks/demo_phases.py [--cold] [--data DIR] [--out benchmarks/out/demo_phases.json]

`--cold` points the embedding cache (HERD_CACHE) at a new empty directory, as on a new machine.
Profiling slows pure-Python code, so time `herd demo` itself for its real duration. Prints the
wall and CPU time of the whole demo and the time inside each phase (a phase's functions'
cumulative time; nested phases are counted in both, e.g. a router fit inside a policy's
tuning), and writes them as JSON.

The profile sees this process only, so the demo runs serially here (HERD_WORKERS=1) unless
`--workers N` is given, when only the work left in the parent process is broken down.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import inspect
import json
import os
import pstats
import resource
import tempfile
import time
from pathlib import Path

# (label, functions as "module:qualified.name"): the calls that make up the demo.
PHASES = [
    ("load outcome data", ["herd.data:Outcomes.load"]),
    ("embed questions (MiniLM)", ["herd.features:SentenceEmbedder.embed"]),
    ("count n-grams (TF-IDF)", ["herd.tfidf:count"]),
    ("fit in fold (router, its test scores)", ["herd.foldfits:_fit_fold"]),
    ("shared inner fits (router, scores of 2 folds)", ["herd.foldfits:_fit_pair"]),
    ("fit routers (all)", ["herd.routers.base:Router.fit"]),
    ("  of which TF-IDF fits", ["herd.tfidf:Tfidf.fit"]),
    ("  of which logistic fits", ["herd.routers.logistic:LogisticRouter._fit"]),
    ("  of which knn fits", ["herd.routers.knn:KNNRouter._fit"]),
    ("route held-out queries", ["herd.routers.base:Router.predict_scores"]),
    ("inner CV of a fold's own", ["herd.routers.base:out_of_fold_scores"]),
    ("tune policies (safe, agree)", ["herd.tuning:tune_policies"]),
    ("agreement cascades (fit + sweep)", ["herd.evaluation:AnswerTally.add"]),
    ("majority votes", ["herd.evaluation:VoteTally.add"]),
    ("summarize", ["herd.evaluation:summarize"]),
    ("report (tables, plots, html)", ["herd.report:write_report"]),
]


def code_key(target: str) -> tuple[str, int, str]:
    """The profiler's key (file, first line, name) of a function named "module:qualified.name";
    a phase whose function moved or was renamed fails here instead of reading 0 s."""
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = inspect.unwrap(getattr(obj, "__func__", obj))
    code = obj.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for label, targets in PHASES:
        out[label] = sum(stats.stats.get(code_key(t), (0, 0, 0, 0.0, None))[3] for t in targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--cold", action="store_true", help="start with an empty embedding cache")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes for the demo (default 1: all work in this process, all profiled)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time phases by the wall clock (default) or by this process's CPU time, which other "
                             "work on a busy machine does not inflate")
    parser.add_argument("--out", default="benchmarks/out/demo_phases.json")
    parser.add_argument("--stats", default=None, help="also save the raw profile here (for pstats or snakeviz)")
    args = parser.parse_args()
    if args.cold:
        os.environ["HERD_CACHE"] = tempfile.mkdtemp(prefix="herd-cold-cache-")
    os.environ["HERD_WORKERS"] = str(args.workers)
    for _, targets in PHASES:  # every phase still names a function, before the long run
        for t in targets:
            code_key(t)
    from herd.cli import app

    argv = ["demo", "-o", tempfile.mkdtemp(prefix="herd-demo-")] + (["--data", args.data] if args.data else [])
    profiler = cProfile.Profile(time.process_time) if args.clock == "cpu" else cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    try:
        app(argv, standalone_mode=False)
    finally:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if args.stats:
        profiler.dump_stats(args.stats)
    phases = phase_times(pstats.Stats(profiler))
    print(f"\nherd demo ({'cold' if args.cold else 'warm'} embedding cache, {args.workers} worker(s), phases by "
          f"{args.clock} clock): {wall:.1f} s "
          f"wall, {cpu:.1f} s CPU here (+{children.ru_utime + children.ru_stime:.1f} s in worker processes), "
          f"load average {os.getloadavg()[0]:.1f}")
    for label, secs in phases.items():
        print(f"  {label:<46} {secs:8.1f} s")
    result = {"cache": "cold" if args.cold else "warm", "workers": args.workers, "clock": args.clock, "wall_s": wall, "cpu_s": cpu,
              "worker_cpu_s": children.ru_utime + children.ru_stime,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "phases_s": phases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
