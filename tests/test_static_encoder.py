"""The static sentence encoder: distilled once, offline, from a local model directory; cached
whole; embedding afterwards needs neither torch nor the transformer; a router keeps the engine
it was trained with; a missing extra is one clear message.

The model here is a tiny BERT made on the spot (distilling MiniLM's 30k tokens takes minutes);
benchmarks/engine_accuracy.py measures the distilled MiniLM's routing against MiniLM's."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("model2vec")
pytest.importorskip("skeletoken")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers.implementations import BertWordPieceTokenizer  # noqa: E402

from herd import artifact  # noqa: E402
from herd.data import Outcomes  # noqa: E402
from herd.features import EmbeddingEngineError, SentenceEmbedder  # noqa: E402
from herd.policies import ArgMax  # noqa: E402
from herd.routers import make_router  # noqa: E402
from herd.static_encoder import RECIPE  # noqa: E402

from conftest import TOPICS  # noqa: E402

pytestmark = pytest.mark.embed

WORDS = sorted({w for phrases in TOPICS.values() for p in phrases for w in p.split()} | set(TOPICS)
               | {"question", "number", "a", "new", "asked", "after", "the", "restart", "offline", "please"})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A sentence-transformers directory: a 1-layer BERT over the test topics' words, mean pooling."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
                                            *(f"##{c}" for c in "0123456789"), *"0123456789"]) + "\n")
    words = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True)
    transformers.BertTokenizerFast(tokenizer_object=words._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(d))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len((d / "vocab.txt").read_text().split()), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=160)
    transformers.BertModel(config).save_pretrained(str(d))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_mean_tokens": True}))
    return d


def run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_distils_once_offline_and_embeds_without_torch(tmp_path, tiny_model):
    """No hub variable set and the hub address unreachable: herd must not try it. Once distilled,
    a new process embeds with neither torch nor transformers imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HERD_EMBED_MODEL=str(tiny_model), HERD_EMBED_ENGINE="static", HF_ENDPOINT="http://127.0.0.1:9",
               HERD_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    code = ("import sys; from herd.features import SentenceEmbedder;"
            "v = SentenceEmbedder().embed(['offline please', 'add the numbers']);"
            "print(v.shape, round(float((v * v).sum(axis=1).min()), 4), 'torch' in sys.modules,"
            "'transformers' in sys.modules)")
    first = run(code, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-2:] == ["True", "True"]  # distilling loads the transformer
    distilled = tmp_path / "cache" / "embeddings" / "static"
    tables = list(distilled.glob(f"*-{RECIPE}/model.safetensors"))
    assert len(tables) == 1 and not list(distilled.glob(".*"))  # whole, no temporary left
    stamp = tables[0].stat().st_mtime_ns

    again = run(code.replace("offline please", "a new question"), env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-3:] == ["1.0", "False", "False"], again.stdout
    assert tables[0].stat().st_mtime_ns == stamp  # reused, not distilled again


def test_vectors_are_unit_and_do_not_depend_on_batch_mates(tmp_path, tiny_model):
    texts = ["add the numbers math", "which emperor ruled rome", "write a python function", "", "%%%"]
    e = SentenceEmbedder(tiny_model, cache=tmp_path / "emb", engine="static")
    v = e.embed(texts)
    assert v.dtype == np.float32 and v.shape[0] == len(texts)
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[3:], 0)  # no known token: no direction, rather than a made-up one
    one_by_one = np.stack([SentenceEmbedder(tiny_model, cache=tmp_path / "b", engine="static").embed([t])[0]
                           for t in texts])
    np.testing.assert_array_equal(v, one_by_one)
    assert {p.name for p in (tmp_path / "emb").iterdir()} >= {"static"}  # its own cache, beside the others


def test_long_texts_keep_their_end(tmp_path, tiny_model):
    """As with the transformer engines, a few-shot prompt is embedded by its last tokens (the
    question), not by the exemplars that every prompt shares."""
    e = SentenceEmbedder(tiny_model, cache=tmp_path / "emb", engine="static")
    shared = "when did the war end history " * 60
    a, b = e.embed([shared + "add the numbers math", shared + "write a python function"])
    assert float(a @ b) < 0.999
    head_a, head_b = e.embed(["add the numbers math " + shared, "write a python function " + shared])
    np.testing.assert_allclose(head_a, head_b, atol=1e-6)  # the start is cut away


def test_a_router_embeds_with_the_engine_it_was_trained_with(tmp_path, tiny_model, dataset_dir, monkeypatch):
    monkeypatch.setenv("HERD_EMBED_MODEL", str(tiny_model))
    monkeypatch.setenv("HERD_EMBED_ENGINE", "static")
    m = Outcomes.load(dataset_dir).matrix()
    knn = artifact.save(artifact.train("knn", make_router("knn"), ArgMax(), m), tmp_path / "knn")
    assert json.loads((knn / "manifest.json").read_text())["embedding_engine"] == "static"

    monkeypatch.setenv("HERD_EMBED_ENGINE", "torch")  # served where torch is the default
    engines = []
    real_embed = SentenceEmbedder.embed
    monkeypatch.setattr(SentenceEmbedder, "embed", lambda self, texts, **kw: engines.append(self.engine)
                        or real_embed(self, texts, **kw))
    trained = artifact.load(knn)
    assert trained.router.embedding_engine() == "static"
    scores = trained.router.predict_scores(["add the numbers math question number 3"])
    assert engines == ["static"] and scores.shape == (1, 3)


def test_without_the_extra_the_engine_says_what_to_install(tmp_path, tiny_model, dataset_dir):
    """model2vec hidden from the interpreter: a library call and the CLI each say what to install."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "model2vec.py").write_text("raise ImportError(\"No module named 'model2vec'\")\n")
    src = os.path.dirname(os.path.dirname(artifact.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), src]), "HERD_EMBED_MODEL": str(tiny_model),
           "HERD_EMBED_ENGINE": "static", "HERD_CACHE": str(tmp_path / "cache")}
    lib = run("from herd.features import SentenceEmbedder\n"
              "try:\n    SentenceEmbedder().embed(['x'])\nexcept Exception as e:\n    print(type(e).__name__, e)", env)
    assert lib.returncode == 0, lib.stderr
    assert lib.stdout.startswith("EmbeddingEngineError HERD_EMBED_ENGINE=static: the static engine needs model2vec")
    assert "pip install -e '.[static]'" in lib.stdout

    cli = subprocess.run([sys.executable, "-m", "herd", "train", str(dataset_dir), "--router", "knn",
                          "--out", str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0
    assert "[static]" in cli.stderr + cli.stdout and "Traceback" not in cli.stderr, cli.stderr
    with pytest.raises(EmbeddingEngineError, match="choose from torch, onnx-int8, static"):
        SentenceEmbedder(engine="static-int8")


def test_a_shard_saved_by_another_embedder_is_read(tmp_path, tiny_model):
    """Live queries look at the cache directory's time stamp, not its listing; a dataset another
    process saves there since is still found."""
    first = SentenceEmbedder(tiny_model, cache=tmp_path / "emb", engine="static")
    first.embed([f"add the numbers {i}" for i in range(20)])
    first.embed(["write a python function"])  # a live query: nothing new to list
    time.sleep(0.05)  # past the file system's time stamp granularity
    other = [f"which emperor ruled rome {i}" for i in range(20)]
    saved = SentenceEmbedder(tiny_model, cache=tmp_path / "emb", engine="static").embed(other)
    first._encode = lambda texts: pytest.fail(f"encoded {texts} again instead of reading the cache")
    np.testing.assert_array_equal(first.embed(other[:1]), saved[:1])
