"""Every router family side by side, per benchmark: accuracy and gap closed under argmax and
the safe policy, 5-fold CV by query, seed 0, every hyper-parameter chosen inside the training
folds.

    python benchmarks/router_families.py [--data DIR] [--routers all] [--out benchmarks/out/router_families.json]

Prints one table per benchmark as it finishes and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from herd.data import Outcomes, find_data_dir
from herd.evaluation import evaluate
from herd.policies import ArgMax, SafeArgMax
from herd.routers import ROUTERS, make_router

GROUPS = [("zeroeval", "gsm8k"), ("zeroeval", "math-l5"), ("zeroeval", "crux"), ("mmlu-pro", "mmlu-pro"),
          ("llmrouter", "gsm8k"), ("llmrouter", "mmlu"), ("llmrouter", "math"),
          ("routerbench", "arc"), ("routerbench", "mbpp"), ("routerbench", "winogrande")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--routers", default="all", help="comma-separated names, or 'all'")
    ap.add_argument("--groups", default=None, help="SOURCE/BENCHMARK,... (default: the target benchmarks)")
    ap.add_argument("--out", default="benchmarks/out/router_families.json")
    args = ap.parse_args()
    names = list(ROUTERS) if args.routers == "all" else args.routers.split(",")
    groups = [tuple(g.split("/")) for g in args.groups.split(",")] if args.groups else GROUPS
    data = Outcomes.load(find_data_dir(args.data))
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "protocol": "5-fold CV by query, seed 0; policies argmax and safe (margin tuned by inner CV)",
              "benchmarks": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for source, benchmark in groups:
        started = time.perf_counter()
        sub = data.filter(source=source, benchmark=benchmark)
        ev = evaluate(sub, {n: make_router(n) for n in names}, policy=[ArgMax(), SafeArgMax()], folds=5, seed=0,
                      sweep=False)
        b = ev.benchmarks[0]
        best = b.row("best-single")
        rows = [{"method": r.method, "accuracy": r.accuracy, "gap_closed": r.gap_closed, "cost_usd": r.cost_usd,
                 "router_ms": r.router_ms} for r in b.rows if r.kind == "router"]
        entry = {"group": f"{source}/{benchmark}", "n_queries": b.n_queries, "models": len(b.models),
                 "best_single": best.accuracy, "oracle": b.row("oracle").accuracy, "rows": rows,
                 "seconds": time.perf_counter() - started}
        result["benchmarks"].append(entry)
        print(f"\n{entry['group']}: {b.n_queries} queries x {len(b.models)} models, best single (train) "
              f"{100 * best.accuracy:.2f}%, oracle {100 * entry['oracle']:.2f}%  [{entry['seconds']:.0f} s]")
        for r in sorted(rows, key=lambda r: -r["accuracy"]):
            print(f"  {r['method']:32s} {100 * r['accuracy']:6.2f}%  gap closed {100 * r['gap_closed']:+6.1f}%")
        out.write_text(json.dumps(result, indent=2))  # after every benchmark: a long run keeps what it has
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
