"""The feedback loop on a shipped benchmark, as live traffic through the real gateway.

    python benchmarks/feedback_loop.py [--benchmark zeroeval/gsm8k] [--benchmark zeroeval/crux]
        [--explore 0.2] [--seed 0] [--data ../shared/data]

Per benchmark, the queries are split at random (seeded) into a seed set (10%), traffic (60%)
and held-out queries (30%). A pool of three models (a weak cheap one, a mid one, a strong one,
fixed per benchmark below) is served by `herd serve` on 127.0.0.1 with a fake backend per model
(tests/fake_backend.py); its router is a logistic router trained on the seed set's full outcome
table, served with `--explore EPS --choice-log --feedback-log --log-prompts`. Each traffic
query is sent once through the openai SDK, and its feedback (POST /v1/feedback) is the outcome
table's correctness of the model that answered: the fake backends' text is not graded, and
each answer's cost is the table's for that query and model (the fake backends' token counts
say nothing of these models' prices).

Then `herd import choice-log` turns the logs into outcome data, and:

- learning curve: after the first N requests, a logistic router trained on their
  feedback alone (one model per query, inverse-propensity weighted), one trained on the seed
  set plus that feedback, and one trained on the full outcome table of the same N queries
  (every model's outcome: what feedback could at best teach), each scored on the held-out
  queries (accuracy; cost from the table) under argmax and cost-aware:0.5, beside the logging
  router, the best single model (chosen on seed + traffic) and the oracle;
- off-policy check: for each single model, the logging router without exploration and a
  logistic router cross-fitted on the log (each under both policies), the IPS / SNIPS / DR
  estimates of the mean score and cost with their 95% intervals, beside the true value on the
  same traffic queries (the table's outcomes of the candidate's picks) and on the held-out
  queries.

Writes benchmarks/out/feedback_loop.json. Loopback only; each step is bounded by timeouts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from fake_backend import start_backend  # noqa: E402
from servers import pool_yaml, start_gateway  # noqa: E402

from herd import artifact, choicelog, offpolicy  # noqa: E402
from herd.data import Outcomes, find_data_dir  # noqa: E402
from herd.policies import ArgMax, CostAware  # noqa: E402
from herd.routers import make_router  # noqa: E402

POOLS = {  # weak and cheap, mid, strong: fixed before any run, from each model's table accuracy and cost
    "zeroeval/gsm8k": ["gemma-2-2b-it", "Meta-Llama-3.1-8B-Instruct", "gpt-4o-2024-08-06"],
    "zeroeval/crux": ["gemma-2-2b-it", "Qwen2.5-7B-Instruct", "gpt-4o-2024-08-06"],
}
SPLIT = (0.1, 0.6, 0.3)  # seed, traffic, held-out
# argmax, and the middle of the cost-aware knob, where a strong dear model must beat a cheap one by
# half the price gap: the regime where learning who is right on what pays.
POLICIES = {"argmax": ArgMax(), "cost-aware:0.5": CostAware(0.5)}
STEPS = (50, 100, 200, 400)


def table(data: Outcomes, rows: np.ndarray, models: list[str]):
    m = data.subset(rows).matrix(models)
    cost = np.where(np.isnan(m.cost), np.nanmean(m.cost, axis=0), m.cost)
    return m, cost


def held_out(choice: np.ndarray, test, test_cost) -> dict:
    n = np.arange(len(choice))
    return {"accuracy": float(test.labels[n, choice].mean()), "cost_usd": float(test_cost[n, choice].mean())}


def serve_traffic(models, seed_router, texts, correct_of, explore, seed, workdir: Path) -> tuple[Path, Path, dict]:
    """Send every text once through `herd serve`; feedback = the table's correctness of the model
    that answered. Returns the choice log, the feedback log and request id -> text index."""
    import httpx
    import openai

    backends = {name: start_backend(name=name) for name in models}
    ids = {}
    try:
        pool = workdir / "pool.yaml"
        pool.write_text(pool_yaml([{"name": n, "base_url": b.url, "retries": 0} for n, b in backends.items()],
                                  str(seed_router)))
        choices, feedback = workdir / "choices.jsonl", workdir / "feedback.jsonl"
        with start_gateway(pool, "--choice-log", str(choices), "--feedback-log", str(feedback), "--log-prompts",
                           "--explore", str(explore), "--explore-seed", str(seed), timeout=120) as gw:
            client = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=30)
            with httpx.Client(timeout=30) as http:
                for i, text in enumerate(texts):
                    raw = client.chat.completions.with_raw_response.create(
                        model="herd", messages=[{"role": "user", "content": text}])
                    rid = raw.headers["x-herd-request-id"]
                    ids[rid] = i
                    got = http.post(f"{gw.url}/feedback", json={"request_id": rid, "score": correct_of(i, raw.parse().model)})
                    got.raise_for_status()
    finally:
        for b in backends.values():
            b.stop()
    return choices, feedback, ids


def run(data: Outcomes, group: str, explore: float, seed: int) -> dict:
    source, benchmark = group.split("/")
    models = sorted(POOLS[group])
    data = data.filter(source=source, benchmark=benchmark, models=models)
    n = len(data.queries)
    order = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = int(SPLIT[0] * n), int((SPLIT[0] + SPLIT[1]) * n)
    seed_rows, traffic_rows, test_rows = np.sort(order[:cut1]), order[cut1:cut2], np.sort(order[cut2:])
    seed_m, _ = table(data, seed_rows, models)
    traffic_m, traffic_cost = table(data, traffic_rows, models)  # in the order the traffic is sent
    test, test_cost = table(data, test_rows, models)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="herd-loop-") as tmp:
        tmp = Path(tmp)
        seed_router = artifact.save(artifact.train("logistic", make_router("logistic", seed=seed), ArgMax(), seed_m,
                                                   seed=seed), tmp / "seed-router")
        col = {name: j for j, name in enumerate(models)}
        choices, feedback, ids = serve_traffic(
            models, seed_router, traffic_m.texts, lambda i, model: float(traffic_m.labels[i, col[model]]),
            explore, seed, tmp)
        served_s = time.perf_counter() - started
        (q, o, pool), report = choicelog.join(choices, feedback, source="live", benchmark=benchmark)
        # The fake backends' token counts say nothing of these models' costs: each answer costs what
        # the outcome table recorded for that query and model.
        o["cost_usd"] = [traffic_cost[ids[r], col[m]] for r, m in zip(o["qid"], o["model"])]
        live = Outcomes.load(Outcomes(q, o, pool).save(tmp / "live"), min_outcomes=1)
        log = offpolicy.LoggedTraffic.from_outcomes(live)
        trained = artifact.load(seed_router)
        assert log.models == models, (log.models, models)

        rids = list(log.matrix.keys["qid"])
        traffic_of = np.array([ids[r] for r in rids])  # log row -> traffic row
        by_time = np.argsort(traffic_of)
        costs = np.nanmean(seed_m.cost, axis=0)  # the policies' per-model prices: the seed table's

        def choose(router, texts):
            scores = router.predict_scores(texts)
            return {name: p.choose(scores, costs) for name, p in POLICIES.items()}

        def scored(router):
            return {name: held_out(c, test, test_cost) for name, c in choose(router, test.texts).items()}

        best = int(np.argmax(np.r_[seed_m.labels, traffic_m.labels].mean(axis=0)))
        curve = []
        for size in [s for s in STEPS if s < log.n] + [log.n]:
            first = by_time[:size]
            sub = live.subset(np.isin(live.queries["qid"], [rids[i] for i in first]).nonzero()[0])
            mixed, w, _ = choicelog.with_feedback(data.subset(seed_rows), sub, 1.0)
            curve.append({"requests": size, "explored": int(log.explored[first].sum()),
                          "feedback_only": scored(offpolicy.fit_on_log(make_router("logistic", seed=seed), log, first)),
                          "seed_plus_feedback": scored(make_router("logistic", seed=seed).fit(mixed, sample_weight=w)),
                          "full_table_same_queries": scored(make_router("logistic", seed=seed).fit(
                              traffic_m.take(traffic_of[first])))})
        reference = {
            "logging_router_no_exploration": scored(trained.router),
            "best_single": {"model": models[best], **held_out(np.full(test.n_queries, best), test, test_cost)},
            "oracle": float(test.labels.max(axis=1).mean()),
            "full_table_all_traffic": scored(make_router("logistic", seed=seed).fit(traffic_m)),
        }

        # Off-policy check: estimates on the log against the truth on the same queries and held out.
        splits = log.matrix.kfold(5, seed)
        q_score = offpolicy.reward_model(log, splits, seed)
        q_cost = np.empty((log.n, len(models)))
        for tr, te in splits:
            q_cost[te] = log.filled_cost(np.isin(np.arange(log.n), tr))[None, :]
        truth = traffic_m.labels[traffic_of], traffic_cost[traffic_of]  # log row -> its query's outcomes
        candidates = {f"always {m}": (np.full(log.n, j), np.full(test.n_queries, j)) for j, m in enumerate(models)}
        on_log, on_test = choose(trained.router, log.matrix.texts), choose(trained.router, test.texts)
        on_all = choose(offpolicy.fit_on_log(make_router("logistic", seed=seed), log, np.arange(log.n)), test.texts)
        for name, p in POLICIES.items():
            candidates[f"logging router + {name}"] = (on_log[name], on_test[name])
            cross = offpolicy.crossfit_choices(log, make_router("logistic", seed=seed), p, splits, seed)
            candidates[f"logistic cross-fitted on the log + {name}"] = (cross, on_all[name])
        checks = []
        rows = np.arange(log.n)
        for name, (log_choice, test_choice) in candidates.items():
            res = offpolicy.estimate(log, log_choice, q_score, q_cost, name)
            true_log = {"score": float(truth[0][rows, log_choice].mean()),
                        "cost_usd": float(truth[1][rows, log_choice].mean())}
            checks.append({"candidate": name, "coverage": res.coverage, "ess": res.ess, "too_thin": res.too_thin,
                           "verdict": res.verdict,
                           "score": {k: e.to_json() for k, e in res.score.items()},
                           "cost_usd": {k: e.to_json() for k, e in res.cost.items()},
                           "true_on_log_queries": true_log,
                           "true_held_out": held_out(test_choice, test, test_cost),
                           "inside": {f"{what} {k}": bool(e.low <= true_log[what] <= e.high)
                                      for what, found in (("score", res.score), ("cost_usd", res.cost))
                                      for k, e in found.items()}})
    return {"benchmark": group, "models": models, "explore": explore, "queries": {"seed": len(seed_rows),
            "traffic": len(traffic_rows), "held_out": len(test_rows)}, "import": report.lines(),
            "served_s": round(served_s, 1), "curve": curve, "reference": reference, "off_policy": checks}


def show(r: dict) -> None:
    print(f"\n== {r['benchmark']}: pool {', '.join(r['models'])}; explore {r['explore']:g}; "
          f"{r['queries']['seed']} seed / {r['queries']['traffic']} traffic / {r['queries']['held_out']} held-out "
          f"queries; served in {r['served_s']} s")
    for line in r["import"]:
        print(f"  import: {line}")
    ref = r["reference"]
    print(f"  held-out: oracle {ref['oracle']:.3f}; best single {ref['best_single']['model']} "
          f"{ref['best_single']['accuracy']:.3f} (${1000 * ref['best_single']['cost_usd']:.3f}/1k)")

    def cell(x):
        return f"{x['accuracy']:.3f} ${1000 * x['cost_usd']:.3f}/1k"

    for p in POLICIES:
        print(f"  learning curve, {p}: held-out accuracy and cost per 1k requests of the router trained on")
        print(f"  {'requests':>8} {'explored':>8} | {'feedback only':>20} | {'seed + feedback':>20} | "
              f"{'full table, same queries':>24}")
        for c in r["curve"]:
            print(f"  {c['requests']:>8} {c['explored']:>8} | {cell(c['feedback_only'][p]):>20} | "
                  f"{cell(c['seed_plus_feedback'][p]):>20} | {cell(c['full_table_same_queries'][p]):>24}")
        print(f"  {'':>17} | logging router {cell(ref['logging_router_no_exploration'][p])}; full table of all "
              f"traffic {cell(ref['full_table_all_traffic'][p])}")
    print("  off-policy: DR estimate (95% CI) of score and cost/1k vs the truth on the log's queries | held-out truth")
    misses = 0
    for c in r["off_policy"]:
        t, h = c["true_on_log_queries"], c["true_held_out"]
        truth = f"true {t['score']:.3f} ${1000 * t['cost_usd']:.3f} | held-out {h['accuracy']:.3f} ${1000 * h['cost_usd']:.3f}"
        if c["too_thin"] or not c["score"]:
            print(f"    {c['candidate']}: {c['verdict']}; {truth}")
            continue
        s, k = c["score"]["dr"], c["cost_usd"]["dr"]
        misses += sum(not v for v in c["inside"].values())
        print(f"    {c['candidate']}: {s['value']:.3f} ({s['low']:.3f}-{s['high']:.3f}) ${1000 * k['value']:.3f} "
              f"(${1000 * k['low']:.3f}-{1000 * k['high']:.3f}); {truth}"
              f"{'' if all(c['inside'].values()) else '  missed: ' + ', '.join(x for x, v in c['inside'].items() if not v)}")
    checked = sum(len(c["inside"]) for c in r["off_policy"])
    print(f"  {checked - misses} of {checked} IPS/SNIPS/DR intervals (score and cost) hold the truth on the log's queries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", action="append", choices=sorted(POOLS))
    parser.add_argument("--explore", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data")
    args = parser.parse_args()
    data = Outcomes.load(find_data_dir(args.data))
    results = []
    for group in args.benchmark or sorted(POOLS):
        results.append(run(data, group, args.explore, args.seed))
        show(results[-1])
    out = HERE / "out" / "feedback_loop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "python": platform.python_version()},
                               "command": " ".join(sys.argv), "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
