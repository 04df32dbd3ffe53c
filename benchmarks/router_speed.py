"""Router speed on MMLU-Pro (31 models): training time, one-query routing latency (p50/p95/p99)
and batched throughput, with sentence embeddings computed cold (no cache hits) under each
encoder engine (torch; onnx-int8 and static where their extras are installed) and with TF-IDF.
A router's latency includes embedding its query.

    python benchmarks/router_speed.py [--data DIR] [--routers knn,logistic,mf,knn-tfidf]
                                      [--engines torch,onnx-int8,static] [--single 200] [--batch 2000]
                                      [--out benchmarks/out/router_speed.json]

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

import numpy as np

from herd.data import Outcomes, find_data_dir
from herd.features import EmbeddingEngineError, EmbeddingsUnavailable, cache_dir
from herd.policies import ArgMax
from herd.routers import make_router

WARM_UP = 64  # single queries routed before timing: first calls at each new length are slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--routers", default="knn,logistic,mf,knn-tfidf")
    ap.add_argument("--engines", default="torch,onnx-int8,static", help="sentence encoder engines for embedding routers")
    ap.add_argument("--single", type=int, default=200, help="queries routed one at a time")
    ap.add_argument("--batch", type=int, default=2000, help="queries routed in one batch")
    ap.add_argument("--out", default="benchmarks/out/router_speed.json")
    args = ap.parse_args()

    data = Outcomes.load(find_data_dir(args.data)).filter(source="mmlu-pro")
    train, test = data.split(0.2, seed=0)
    texts = test.queries.text.tolist()
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()},  # other work on the machine skews latency
              "data": f"mmlu-pro: {len(train.queries)} training queries x {data.outcomes['model'].nunique()} models",
              "routers": []}
    print(result["data"])
    engines = args.engines.split(",")
    for engine in engines:
        os.environ["HERD_EMBED_ENGINE"] = engine
        for name in args.routers.split(","):
            embeds = "embed" in getattr(make_router(name), "features", "embed")  # auto/ensemble: embeddings
            if embeds or engine == engines[0]:
                row = measure(name, train, texts, args.single, args.batch)
                if row:
                    result["routers"].append({**row, "engine": engine if embeds else None})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def measure(name: str, train, texts: list[str], single: int, batch_size: int) -> dict | None:
    router = make_router(name)
    engine = os.environ["HERD_EMBED_ENGINE"]
    try:
        router.prepare(train.queries.text.tolist())  # training embeddings from the cache
    except (EmbeddingsUnavailable, EmbeddingEngineError) as e:
        print(f"{name} ({engine}): skipped ({e})")
        return None
    policy = ArgMax()
    t = time.perf_counter()
    router.fit(train)
    fit_s = time.perf_counter() - t
    kept = os.environ.get("HERD_CACHE")
    with tempfile.TemporaryDirectory() as cold:
        # A fresh vector cache: every query below is embedded for real, as for live traffic. The
        # engines' exported and distilled models are kept: building them is a one-off, not routing.
        (Path(cold) / "embeddings").mkdir()
        for built in ("onnx", "static"):
            if (cache_dir() / "embeddings" / built).exists():
                (Path(cold) / "embeddings" / built).symlink_to(cache_dir() / "embeddings" / built)
        os.environ["HERD_CACHE"] = cold
        for q in train.queries.text.tolist()[:WARM_UP]:  # the encoder's kernels for many input lengths
            router.predict_scores([q])
        lat = []
        for q in texts[:single]:
            t = time.perf_counter()
            policy.choose(router.predict_scores([q]))
            lat.append(1000 * (time.perf_counter() - t))
        batch = texts[single : single + batch_size]
        t = time.perf_counter()
        policy.choose(router.predict_scores(batch))
        qps = len(batch) / (time.perf_counter() - t)
    os.environ.pop("HERD_CACHE")
    if kept is not None:
        os.environ["HERD_CACHE"] = kept
    row = {"router": name, "fit_s": fit_s, "single_p50_ms": float(np.percentile(lat, 50)),
           "single_p95_ms": float(np.percentile(lat, 95)), "single_p99_ms": float(np.percentile(lat, 99)),
           "batch_queries_per_s": qps}
    print(f"{name:13s} {router.embedding_engine() or 'tfidf':9s} fit {fit_s:6.1f} s   "
          f"one query p50 {row['single_p50_ms']:6.2f} ms  p95 {row['single_p95_ms']:6.2f} ms  "
          f"p99 {row['single_p99_ms']:6.2f} ms   batch {qps:8.0f} queries/s")
    return row


if __name__ == "__main__":
    main()
