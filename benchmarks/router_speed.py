"""Router speed on the shipped data: fit time, routing time per query, embedding throughput.

    python benchmarks/router_speed.py [--data DIR] [--out benchmarks/out/router_speed.json]

Every figure comes from one run on one machine, side by side; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from herd.data import Outcomes, find_data_dir
from herd.features import EmbeddingsUnavailable, SentenceEmbedder
from herd.routers import make_router

GROUPS = [("zeroeval", "gsm8k"), ("mmlu-pro", "mmlu-pro")]
ROUTERS = ["knn", "knn-tfidf", "logistic"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--out", default="benchmarks/out/router_speed.json")
    ap.add_argument("--embed-sample", type=int, default=256, help="texts embedded cold to time the encoder")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = Outcomes.load(find_data_dir(args.data))
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "load_s": time.perf_counter() - t0, "routers": [], "embedding": None}
    print(f"load shared data: {result['load_s']:.2f} s")

    for source, benchmark in GROUPS:
        sub = data.filter(source=source, benchmark=benchmark)
        train, test = sub.split(0.2, seed=0)
        texts = test.queries.text.tolist()
        for name in ROUTERS:
            router = make_router(name)
            try:
                router.prepare(sub.queries.text.tolist())  # embeddings cached: time routing, not encoding
            except EmbeddingsUnavailable as e:
                print(f"{name}: skipped ({e})")
                continue
            t = time.perf_counter()
            router.fit(train)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            router.predict_scores(texts)
            ms = 1000 * (time.perf_counter() - t) / len(texts)
            one = time.perf_counter()
            router.predict_scores(texts[:1])
            single_ms = 1000 * (time.perf_counter() - one)
            row = {"source": source, "benchmark": benchmark, "router": name, "n_train": len(train.queries),
                   "n_models": len(router.models_), "fit_s": fit_s, "route_ms_per_query_batch": ms,
                   "route_ms_single_query": single_ms}
            result["routers"].append(row)
            print(f"{source}/{benchmark} {name:10s} fit {fit_s:6.2f} s   batch {ms:7.3f} ms/query   "
                  f"single query {single_ms:7.2f} ms")

    try:
        texts = data.filter(source="zeroeval", benchmark="gsm8k").queries.text.tolist()[: args.embed_sample]
        with tempfile.TemporaryDirectory() as cache:
            cold = SentenceEmbedder(cache=cache)
            t = time.perf_counter()
            cold.embed(texts)
            cold_s = time.perf_counter() - t
            t = time.perf_counter()
            SentenceEmbedder(cache=cache).embed(texts)
            warm_s = time.perf_counter() - t
        result["embedding"] = {"texts": len(texts), "cold_texts_per_s": len(texts) / cold_s,
                               "cached_texts_per_s": len(texts) / warm_s, "speedup": cold_s / warm_s}
        print(f"embedding {len(texts)} GSM8K questions: cold {len(texts) / cold_s:.0f}/s "
              f"(includes model load), cached {len(texts) / warm_s:.0f}/s, {cold_s / warm_s:.0f}x")
    except EmbeddingsUnavailable as e:
        print(f"embedding: skipped ({e})")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
