"""Answers, not guesses: agreement cascades and votes on every benchmark with recorded answers.

    python benchmarks/agreement.py [--data DIR] [--out benchmarks/out/agreement.json]

5-fold CV by query, seed 0: each `agree` cascade (first stage, acceptance rule and margin) is
chosen on the training folds' recorded answers and scored on the test fold. Prints, per
benchmark, the best single model (chosen on training folds), the votes and the cascades:
accuracy, cost as a share of the best single model's, share answered by open-weights models,
share kept at the first stage. Then, on ZeroEval GSM8K, the vote of all models over answers
normalized by the grader beside a plain string vote, and the questions whose winner changed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from herd import metrics
from herd.data import Outcomes, find_data_dir
from herd.evaluation import evaluate
from herd.policies import make_policy

POLICIES = ("agree", "agree:open")


def ratio(r, best) -> float | None:
    if r.cost_usd is None or best.cost_usd is None or min(r.cost_coverage, best.cost_coverage) < 0.9:
        return None
    return r.cost_usd / best.cost_usd


def benchmark_rows(b) -> list[dict]:
    best = b.row("best-single")
    rows = []
    for r in [best, *(r for r in b.rows if r.kind == "vote" or "agree" in r.method)]:
        rows.append({"method": r.method, "accuracy": r.accuracy, "vs_best_single_pt": 100 * (r.accuracy - best.accuracy),
                     "cost_usd": r.cost_usd, "cost_coverage": r.cost_coverage, "cost_ratio": ratio(r, best),
                     "ownership": r.ownership, "accepted": r.accepted})
    return rows


def plain_vote(m, rank) -> dict:
    """The vote of all models on normalized answers against a vote on the answer strings as recorded."""
    priority = np.empty_like(rank)
    priority[rank] = np.arange(len(rank))
    plain = pd.factorize(pd.Series(m.answers.ravel()), use_na_sentinel=True)[0].reshape(m.answers.shape)
    normalized = metrics.vote_choice(m.answer_codes, priority)
    as_strings = metrics.vote_choice(plain, priority)
    won_norm, won_plain = metrics.picked(m.answer_codes, normalized), metrics.picked(m.answer_codes, as_strings)
    return {"normalized_accuracy": float(metrics.picked(m.labels, normalized).mean()),
            "string_accuracy": float(metrics.picked(m.labels, as_strings).mean()),
            "winner_changed": int((won_norm != won_plain).sum()), "n": int(m.n_queries)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="benchmarks/out/agreement.json")
    args = ap.parse_args()
    data = Outcomes.load(find_data_dir(args.data))
    answered = data.outcomes.dropna(subset=["answer"])[["source", "benchmark"]].drop_duplicates()
    out = {"protocol": "5-fold CV by query, seed 0; cascades chosen on training folds", "benchmarks": []}
    for source, benchmark in answered.itertuples(index=False):
        started = time.perf_counter()
        sub = data.filter(source=source, benchmark=benchmark)
        (b,) = evaluate(sub, [], policy=[make_policy(p) for p in POLICIES], folds=5, seed=0, sweep=False).benchmarks
        rows = benchmark_rows(b)
        out["benchmarks"].append({"source": source, "benchmark": benchmark, "n": b.n_queries, "models": len(b.models),
                                  "rows": rows, "notes": [n for n in b.notes if "agree" in n],
                                  "seconds": time.perf_counter() - started})
        print(f"\n{source}/{benchmark}: {b.n_queries} questions, {len(b.models)} models "
              f"({time.perf_counter() - started:.0f} s)")
        for r in rows:
            cost = "n/a" if r["cost_ratio"] is None else f"{r['cost_ratio']:.0%}"
            own = "" if r["ownership"] is None else f"{r['ownership']:.0%}"
            kept = "" if r["accepted"] is None else f"{r['accepted']:.0%}"
            print(f"  {r['method'][:48]:48s} {100 * r['accuracy']:6.2f}% {r['vs_best_single_pt']:+6.2f} pt "
                  f"cost {cost:>5s} open {own:>4s} kept {kept:>4s}")
    m = data.filter(source="zeroeval", benchmark="gsm8k").matrix()
    rank = np.lexsort((np.nan_to_num(metrics.mean_cost_per_model(m.cost), nan=np.inf), -m.labels.mean(axis=0)))
    out["gsm8k_vote_normalization"] = vote = plain_vote(m, rank)
    print(f"\nzeroeval/gsm8k vote of all {len(m.models)} models: normalized answers "
          f"{100 * vote['normalized_accuracy']:.2f}%, answer strings {100 * vote['string_accuracy']:.2f}%; "
          f"the winning answer changed on {vote['winner_changed']} of {vote['n']} questions")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
