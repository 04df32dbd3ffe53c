"""`herd demo`'s wall and CPU time, this checkout beside another one, run in turns.

    python benchmarks/demo_time.py [--baseline DIR] [--rounds 3] [--data DIR] [--out benchmarks/out/demo_time.json]

Every run is a new `herd demo` process with its worker processes; CPU is theirs together and
the peak RSS is the largest of them. With `--baseline DIR` (a checkout of another commit) each
round runs this checkout, then DIR's (its src/ first on PYTHONPATH), so both meet the same load.
The embedding cache is warmed by one untimed run first, so the figures are the warm demo. At
the end the two sides' metrics.json are compared number by number (benchmarks/metrics_diff.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from metrics_diff import walk  # noqa: E402


def run_demo(src: Path, out: Path, data: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "herd", "demo", "-o", str(out)] + (["--data", data] if data else [])
    wall = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - wall
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"herd demo from {src} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "load_average": os.getloadavg()[0]}


def differences(a: Path, b: Path) -> dict:
    found = {"numbers": 0, "other": 0, "timings": 0, "differences": []}
    walk(json.loads(a.read_text()), json.loads(b.read_text()), "", found)
    return {"numbers": found["numbers"], "differences": len(found["differences"]), "first": found["differences"][:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a checkout of another commit to time beside this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(HERE / "out" / "demo_time.json"))
    args = parser.parse_args()
    sides = {"this": HERE.parent / "src"}
    if args.baseline:
        sides["baseline"] = Path(args.baseline).resolve() / "src"
    work = Path(tempfile.mkdtemp(prefix="herd-demo-time-"))
    run_demo(sides["this"], work / "warm-up", args.data)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side, src in sides.items():
            runs[side].append(run_demo(src, work / side, args.data))
            got = runs[side][-1]
            print(f"round {r + 1} {side:<9} {got['wall_s']:6.1f} s wall {got['cpu_s']:6.1f} s CPU "
                  f"{got['peak_rss_mb']:6.0f} MB (load {got['load_average']:.1f})", flush=True)
    result = {"cores": os.cpu_count(), "rounds": args.rounds, "runs": runs,
              "median": {side: {key: statistics.median(run[key] for run in got) for key in ("wall_s", "cpu_s")}
                         for side, got in runs.items()}}
    for side, med in result["median"].items():
        print(f"median {side:<9} {med['wall_s']:6.1f} s wall {med['cpu_s']:6.1f} s CPU")
    if args.baseline:
        result["ratio_wall"] = result["median"]["this"]["wall_s"] / result["median"]["baseline"]["wall_s"]
        result["metrics"] = differences(work / "baseline" / "metrics.json", work / "this" / "metrics.json")
        print(f"this / baseline wall: {result['ratio_wall']:.2f}; metrics.json: {result['metrics']['numbers']} "
              f"numbers, {result['metrics']['differences']} differences")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
