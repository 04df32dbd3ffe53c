"""Measure the routing targets on the shipped data: never worse than the best single model,
gap closed, cost to match the best single model, a pool of small equals, two-model routing.

    python benchmarks/routing_targets.py [--data DIR] [--router auto] [--out benchmarks/out/routing_targets.json]

5-fold CV by query, seed 0, policies argmax and safe; every hyper-parameter and margin is
chosen inside the training folds. Prints one line per check and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from herd import metrics
from herd.data import Outcomes, find_data_dir
from herd.evaluation import evaluate
from herd.policies import ArgMax, SafeArgMax

GAP_GROUPS = [("zeroeval", "gsm8k"), ("zeroeval", "math-l5"), ("zeroeval", "crux"), ("mmlu-pro", "mmlu-pro"),
              ("llmrouter", "gsm8k"), ("llmrouter", "mmlu"), ("llmrouter", "math")]
COST_GROUPS = [("zeroeval", "gsm8k"), ("zeroeval", "math-l5"), ("zeroeval", "crux"),
               ("routerbench", "arc"), ("routerbench", "mbpp"), ("routerbench", "winogrande")]
SMALL_B = 9.5  # "at most ~9B parameters"


def run(data: Outcomes, groups, routers, **kw):
    sub = data.filter(source=sorted({s for s, _ in groups}), benchmark=sorted({b for _, b in groups}))
    keep = set(groups)
    ev = evaluate(sub, routers, policy=[ArgMax(), SafeArgMax()], folds=5, seed=0, **kw)
    return [b for b in ev.benchmarks if (b.source, b.benchmark) in keep]


def router_row(b, router, policy):
    return b.row("router", f"{router} ({policy})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--router", default="auto")
    ap.add_argument("--out", default="benchmarks/out/routing_targets.json")
    args = ap.parse_args()
    started = time.perf_counter()
    data = Outcomes.load(find_data_dir(args.data))
    r = args.router
    out: dict = {"router": r, "policy": "safe", "checks": {}}

    # 1. Never worse, on every benchmark with 3+ models.
    groups = [g for g in data.groups() if data.filter(source=g[0], benchmark=g[1]).outcomes["model"].nunique() >= 3]
    rows = []
    for b in run(data, groups, [r]):
        safe, best = router_row(b, r, "safe"), b.row("best-single")
        rows.append({"group": f"{b.source}/{b.benchmark}", "router": safe.accuracy, "best_single": best.accuracy,
                     "diff_points": 100 * (safe.accuracy - best.accuracy), "gap_closed": safe.gap_closed,
                     "argmax_gap_closed": router_row(b, r, "argmax").gap_closed, "oracle": b.row("oracle").accuracy,
                     "_bench": b})
        print(f"[never worse] {rows[-1]['group']:32s} {100 * safe.accuracy:6.2f} vs best single "
              f"{100 * best.accuracy:6.2f} ({rows[-1]['diff_points']:+.2f} pt)")
    worst = min(x["diff_points"] for x in rows)
    out["checks"]["never_worse"] = {"target": "every benchmark >= -0.3 pt", "worst_points": worst,
                                    "met": worst >= -0.3, "rows": [{k: v for k, v in x.items() if k != "_bench"} for x in rows]}
    print(f"[never worse] worst {worst:+.2f} pt -> {'met' if worst >= -0.3 else 'NOT met'}")

    # 2. Gap closed on the named benchmarks.
    by_group = {x["group"]: x for x in rows}
    gaps = {f"{s}/{b}": by_group[f"{s}/{b}"]["gap_closed"] for s, b in GAP_GROUPS if f"{s}/{b}" in by_group}
    mean_gap = float(np.mean([g for g in gaps.values() if g is not None]))
    out["checks"]["gap_closed"] = {"target": "mean >= 10%", "per_benchmark": gaps, "mean": mean_gap, "met": mean_gap >= 0.10}
    print(f"[gap closed] {', '.join(f'{k} {100 * v:+.1f}%' for k, v in gaps.items())}; mean {100 * mean_gap:+.1f}%")

    # 3. Cost to reach the best single model's accuracy (within 0.5 points).
    cost_rows = []
    for s, bname in COST_GROUPS:
        b = by_group.get(f"{s}/{bname}", {}).get("_bench")
        if b is None or r not in b.curves:
            continue
        best = b.row("best-single")
        pts = [p for p in b.curves[r] if p[0] is not None]
        need = metrics.cost_to_match([p[0] for p in pts], [p[1] for p in pts], best.accuracy - 0.005)
        ratio = None if need is None or not best.cost_usd else need / best.cost_usd
        aiq = router_row(b, r, "safe").aiq
        cost_rows.append({"group": f"{s}/{bname}", "best_single_cost": best.cost_usd, "cost_to_match": need,
                          "ratio": ratio, "aiq": aiq, "single_aiq": b.single_aiq})
        print(f"[cost] {s}/{bname:12s} best single ${best.cost_usd:.3g}; router reaches it (-0.5 pt) at "
              f"{'never' if need is None else f'${need:.3g}'} = {'n/a' if ratio is None else f'{100 * ratio:.0f}%'}; "
              f"AIQ {aiq:.4f} vs single models {b.single_aiq:.4f}")
    met = all(x["ratio"] is not None and x["ratio"] <= 0.35 for x in cost_rows)
    out["checks"]["cost"] = {"target": "<= 35% of best single's cost within 0.5 pt", "rows": cost_rows, "met": met}

    # 4. A pool of equals: ZeroEval models of at most ~9B parameters.
    small = data.models[(data.models["source"] == "zeroeval") & (data.models["params_b"].astype(float) <= SMALL_B)]["model"]
    z = data.filter(source="zeroeval")
    pool = [m for m in small if m in set(z.outcomes["model"])]
    eq_rows = []
    for b in run(z.filter(models=pool), [("zeroeval", x) for x in ("gsm8k", "math-l5", "crux")], [r]):
        safe, best = router_row(b, r, "safe"), b.row("best-single")
        argmax = router_row(b, r, "argmax")
        eq_rows.append({"group": f"{b.source}/{b.benchmark}", "models": len(b.models), "router_safe": safe.accuracy,
                        "router_argmax": argmax.accuracy, "best_single": best.accuracy,
                        "gain_points": 100 * (max(safe.accuracy, argmax.accuracy) - best.accuracy)})
        print(f"[small pool] {b.benchmark:8s} {len(b.models)} models <= 9B: safe {100 * safe.accuracy:.2f}, argmax "
              f"{100 * argmax.accuracy:.2f} vs best single {best.best_single} {100 * best.accuracy:.2f}")
    wins = sum(x["gain_points"] >= 1.0 for x in eq_rows)
    out["checks"]["small_pool"] = {"target": ">= +1 pt on 2 of 3", "models": pool, "rows": eq_rows, "met": wins >= 2}

    # 5. Two-model routing on RouteLLM's data.
    two = []
    for b in run(data, [("routellm", "gsm8k"), ("routellm", "mmlu")], [r]):
        row = router_row(b, r, "argmax")
        two.append({"group": f"{b.source}/{b.benchmark}", "apgr": row.apgr, "cpt50": row.cpt50, "cpt80": row.cpt80})
        print(f"[two models] {b.benchmark}: APGR {row.apgr:.3f}, CPT(50%) {row.cpt50}, CPT(80%) {row.cpt80}")
    out["checks"]["two_model"] = {"rows": two, "routellm_published": {
        "gsm8k": {"best_apgr": 0.622, "cpt50": 0.336}, "mmlu": {"best_apgr": 0.603}}}

    out["seconds"] = time.perf_counter() - started
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {path} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
