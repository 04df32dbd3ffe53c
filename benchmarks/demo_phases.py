"""Where `herd demo`'s time goes: the demo run in-process under cProfile, its phases summed.

    python benchmarks/demo_phases.py [--cold] [--data DIR] [--out benchmarks/out/demo_phases.json]

`--cold` points the embedding cache (HERD_CACHE) at a new empty directory, as on a new machine.
Profiling slows pure-Python code, so time `herd demo` itself for its real duration. Prints the wall and CPU time of the whole demo and the time inside each phase (a phase's
functions' cumulative time; nested phases are counted in both, e.g. a router fit inside a
policy's tuning), and writes them as JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import tempfile
import time
from pathlib import Path

# (label, module path suffix, function name): the calls that make up the demo.
PHASES = [
    ("load outcome data", "herd/data.py", "load"),
    ("embed questions (MiniLM)", "herd/features.py", "embed"),
    ("count n-grams (TF-IDF)", "herd/tfidf.py", "count"),
    ("fit routers (all)", "herd/routers/base.py", "fit"),
    ("  of which TF-IDF fits", "herd/tfidf.py", "fit"),
    ("  of which logistic fits", "herd/routers/logistic.py", "_fit"),
    ("  of which knn fits", "herd/routers/knn.py", "_fit"),
    ("route held-out queries", "herd/routers/base.py", "predict_scores"),
    ("inner CV for tuned policies", "herd/routers/auto.py", "out_of_fold_scores"),
    ("fit policies (safe, agree)", "herd/policies.py", "fit"),
    ("agreement cascades (fit + sweep)", "herd/evaluation.py", "add"),
    ("summarize", "herd/evaluation.py", "summarize"),
    ("report (tables, plots, html)", "herd/report.py", "write_report"),
]


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    out = dict.fromkeys((label for label, _, _ in PHASES), 0.0)
    for (path, _, func), (_, _, _, cumulative, _) in stats.stats.items():
        for label, suffix, name in PHASES:
            if func == name and path.endswith(suffix):
                out[label] += cumulative
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--cold", action="store_true", help="start with an empty embedding cache")
    parser.add_argument("--out", default="benchmarks/out/demo_phases.json")
    parser.add_argument("--stats", default=None, help="also save the raw profile here (for pstats or snakeviz)")
    args = parser.parse_args()
    if args.cold:
        os.environ["HERD_CACHE"] = tempfile.mkdtemp(prefix="herd-cold-cache-")
    from herd.cli import app

    argv = ["demo", "-o", tempfile.mkdtemp(prefix="herd-demo-")] + (["--data", args.data] if args.data else [])
    profiler = cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    try:
        app(argv, standalone_mode=False)
    finally:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if args.stats:
        profiler.dump_stats(args.stats)
    phases = phase_times(pstats.Stats(profiler))
    print(f"\nherd demo ({'cold' if args.cold else 'warm'} embedding cache): {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"load average {os.getloadavg()[0]:.1f}")
    for label, secs in phases.items():
        print(f"  {label:<36} {secs:8.1f} s")
    result = {"cache": "cold" if args.cold else "warm", "wall_s": wall, "cpu_s": cpu,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "phases_s": phases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
