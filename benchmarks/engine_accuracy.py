"""Held-out routing accuracy per sentence encoder engine, on the same folds, side by side.

    python benchmarks/engine_accuracy.py [--data DIR] [--engines torch,onnx-int8,static]
        [--routers knn] [--groups zeroeval/gsm8k,routerbench/arc,...]
        [--out benchmarks/out/engine_accuracy.json]

Each embedding router is cross-validated (5 folds by query, seed 0, argmax policy) once per
engine on the same folds; logistic (TF-IDF, no embeddings) is the engine-free reference. Beside
each engine's accuracy: its ratio to the first engine's, and the paired difference per query
with its standard error, so a difference can be told from noise (both engines route the same
queries; +-2 standard errors is the noise band).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone

from herd import metrics
from herd.data import Outcomes, find_data_dir
from herd.policies import ArgMax
from herd.routers import make_router

GROUPS = "zeroeval/gsm8k,zeroeval/math-l5,routerbench/arc,routerbench/winogrande,mmlu-pro/mmlu-pro"
FOLDS, SEED = 5, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--engines", default="torch,onnx-int8,static", help="the first is the reference")
    ap.add_argument("--routers", default="knn", help="embedding routers, e.g. knn,mf (logistic is added as the TF-IDF reference)")
    ap.add_argument("--groups", default=GROUPS, help="SOURCE/BENCHMARK,...")
    ap.add_argument("--out", default="benchmarks/out/engine_accuracy.json")
    args = ap.parse_args()
    engines, routers = args.engines.split(","), args.routers.split(",")
    data = Outcomes.load(find_data_dir(args.data))
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "protocol": f"{FOLDS}-fold CV by query, seed {SEED}, argmax; the same folds for every engine",
              "reference_engine": engines[0], "benchmarks": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for group in args.groups.split(","):
        source, benchmark = group.split("/")
        m = data.filter(source=source, benchmark=benchmark).matrix()
        splits = m.kfold(FOLDS, SEED)
        y = m.labels
        best = np.empty(len(y), int)
        for tr, te in splits:
            best[te] = metrics.best_model(y[tr], m.cost[tr])
        best_acc, oracle = float(y[np.arange(len(y)), best].mean()), metrics.oracle_accuracy(y)
        entry = {"group": group, "n_queries": len(y), "models": len(m.models), "best_single": best_acc,
                 "oracle": oracle, "rows": []}
        print(f"\n{group}: {len(y)} queries x {len(m.models)} models, best single (train) {100 * best_acc:.2f}%, "
              f"oracle {100 * oracle:.2f}%")
        runs = [("logistic", None)] + [(r, e) for r in routers for e in engines]
        correct = {}
        for name, engine in runs:
            if engine:
                os.environ["HERD_EMBED_ENGINE"] = engine
            started = time.perf_counter()
            correct[name, engine] = held_out(m, make_router(name), splits)
            acc = float(correct[name, engine].mean())
            row = {"router": name, "engine": engine, "accuracy": acc,
                   "gap_closed": metrics.gap_closed(acc, best_acc, oracle),
                   "fold_accuracies": [float(correct[name, engine][te].mean()) for _, te in splits],
                   "seconds": time.perf_counter() - started}
            ref = correct.get((name, engines[0]))
            if engine and engine != engines[0] and ref is not None:
                d = correct[name, engine].astype(float) - ref
                row |= {"ratio_to_reference": acc / float(ref.mean()), "paired_diff": float(d.mean()),
                        "paired_diff_se": float(d.std(ddof=1) / np.sqrt(len(d)))}
            entry["rows"].append(row)
            versus = (f"   x{row['ratio_to_reference']:.3f} of {engines[0]}, paired {100 * row['paired_diff']:+.2f} "
                      f"+- {200 * row['paired_diff_se']:.2f} pt (2 SE)") if "paired_diff" in row else ""
            print(f"  {name:9s} {engine or 'tfidf':10s} {100 * acc:6.2f}%  gap closed {100 * row['gap_closed']:+6.1f}%"
                  f"  [{row['seconds']:.0f} s]{versus}")
        result["benchmarks"].append(entry)
        out.write_text(json.dumps(result, indent=2))  # after every benchmark: a long run keeps what it has
    print(f"wrote {out}")


def held_out(m, proto, splits) -> np.ndarray:
    """Per query: 1 if the router's argmax choice, fitted without the query's fold, was right."""
    proto.prepare(m.texts)  # every text embedded once per engine, in batches (and cached)
    correct = np.empty(len(m.labels))
    for tr, te in splits:
        train, test = m.take(tr), m.take(te)
        router = clone(proto).fit(train)
        choice = ArgMax().choose(router.predict_scores(test.texts, test.tasks), metrics.mean_cost_per_model(m.cost[tr]))
        correct[te] = test.labels[np.arange(len(te)), choice]
    return correct


if __name__ == "__main__":
    main()
