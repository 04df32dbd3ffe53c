"""Small hand-made outcome tables whose right answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

TOPICS = {
    "math": ["add the numbers", "solve for x in the equation", "compute the integral", "what is the sum of"],
    "history": ["which emperor ruled rome", "when did the war end", "who signed the treaty", "the ancient dynasty"],
    "code": ["write a python function", "what does this loop print", "fix the bug in the code", "return the list"],
}
# Which model is right on which topic: a router that reads the topic beats every single model.
SKILLS = {"math-7b": {"math"}, "hist-7b": {"history"}, "big-70b": set(TOPICS)}


BIG_SKILL = {"math": 0.5, "history": 0.5, "code": 0.8}


def make_frames(n_per_topic: int = 30, seed: int = 0):
    """A 3-topic benchmark: each small model is right on its topic only, the big one on half to
    80% of each topic. Best single: big-70b (~60%); oracle ~93%."""
    rng = np.random.default_rng(seed)
    queries, outcomes = [], []
    for topic, phrases in TOPICS.items():
        for i in range(n_per_topic):
            qid = f"{topic}-{i}"
            text = f"{phrases[i % len(phrases)]} {topic} question number {i} {rng.integers(1000)}"
            queries.append({"source": "toy", "benchmark": "mix", "qid": qid, "text": text, "gold": "a", "category": topic})
            for model, skills in SKILLS.items():
                right = topic in skills and (model != "big-70b" or rng.random() < BIG_SKILL[topic])
                outcomes.append({"source": "toy", "benchmark": "mix", "qid": qid, "model": model,
                                 "correct": float(right), "output_chars": 400})
    models = pd.DataFrame([
        {"model": "math-7b", "source": "toy", "params_b": 7.0, "open_weights": True,
         "price_in_per_mtok": None, "price_out_per_mtok": None},
        {"model": "hist-7b", "source": "toy", "params_b": 7.0, "open_weights": True,
         "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.2},
        {"model": "big-70b", "source": "toy", "params_b": None, "open_weights": False,
         "price_in_per_mtok": 5.0, "price_out_per_mtok": 15.0},
    ])
    return pd.DataFrame(queries), pd.DataFrame(outcomes), models


@pytest.fixture
def frames():
    return make_frames()


@pytest.fixture
def dataset_dir(tmp_path, frames):
    """A unified-format directory: queries.parquet, outcomes.parquet, models.csv."""
    q, o, m = frames
    d = tmp_path / "toy"
    d.mkdir()
    q.to_parquet(d / "queries.parquet")
    o.to_parquet(d / "outcomes.parquet")
    m.to_csv(d / "models.csv", index=False)
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HERD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HERD_DATA", raising=False)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a loopback port of its own, its data under tmp_path (tests using
    it skip where redis-server is missing: see servers.redis_missing)."""
    from servers import RedisProcess

    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisProcess(directory) as r:
        yield r
