"""A static sentence encoder distilled from the local sentence encoder (the ``static`` extra).

model2vec's distillation passes each token of the model's vocabulary through the model once and
keeps its mean-pooled output as the token's vector (reduced by PCA, rare tokens weighted up).
A text's embedding is then the mean of its tokens' vectors: a tokenizer call and a table lookup,
tens of microseconds a query instead of milliseconds. Distilling needs torch (the embed extra)
and a few minutes of CPU, once per model; the result is kept beside the embedding cache, and
embedding needs neither torch nor the transformer afterwards. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from herd.errors import HerdError

PCA_DIMS = 256
# Names the distillation (model2vec's mean pooling, PCA to 256, SIF 1e-4, float16 table) in the
# model's and the vectors' cache names: a changed recipe must not reuse old tables or vectors.
RECIPE = f"static-m2v-pca{PCA_DIMS}-r1"


class StaticUnavailable(HerdError, RuntimeError):
    """model2vec (or, to distill, torch and transformers) is not installed, or distilling failed."""


def distill(model_dir: Path, out: Path) -> None:
    """Distill the model at ``model_dir`` into the directory ``out``, whole or not at all."""
    try:
        from model2vec.distill import distill as m2v_distill
    except ImportError as e:
        raise StaticUnavailable(f"distilling the static encoder needs model2vec, skeletoken, torch and transformers "
                                f"({e}): pip install -e '.[embed,static]' (see README)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".distill-", dir=out.parent))  # private to this distillation
    # The distiller's progress bar stays (minutes of work); its advice concerns other models.
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = m2v_distill(str(model_dir), pca_dims=PCA_DIMS, device="cpu")
        model.save_pretrained(str(work / "model"))
        try:
            (work / "model").rename(out)  # whole or absent: an interrupted distillation leaves no half table
        except OSError:
            if not (out / "model.safetensors").exists():
                raise  # not a concurrent distillation that finished first
    except Exception as e:  # noqa: BLE001 - any failure of a third-party distiller is one clear message
        raise StaticUnavailable(f"could not distill {model_dir} into a static encoder ({type(e).__name__}: {e}); "
                                "use HERD_EMBED_ENGINE=torch") from None
    finally:
        logging.disable(disabled)
        shutil.rmtree(work, ignore_errors=True)


class StaticEncoder:
    """``encode(texts)`` -> (n, PCA_DIMS) unit vectors: the mean of each text's token vectors,
    with texts cut to ``max_tokens`` keeping their end, as the transformer engines cut them."""

    def __init__(self, model_dir: Path, static_dir: Path, max_tokens: int):
        try:
            from model2vec import StaticModel
        except ImportError as e:
            raise StaticUnavailable(f"the static engine needs model2vec ({e}): pip install -e '.[static]' "
                                    "(see README)") from None
        if not (static_dir / "model.safetensors").exists():
            distill(model_dir, static_dir)
        model = StaticModel.from_pretrained(static_dir)  # a local directory: never the hub
        self.vectors = np.asarray(model.embedding, np.float32)  # float32 once, not per query
        self.unknown = model.unk_token_id  # dropped, as model2vec's own encode drops it
        self.tokenizer = model.tokenizer
        self.tokenizer.enable_truncation(max_length=max_tokens, direction="left")
        self.tokenizer.no_padding()

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.vectors.shape[1]), np.float32)
        for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = [i for i in enc.ids if i != self.unknown]
            if ids:  # a text with no known token (empty, or symbols only) keeps a zero vector
                vec = self.vectors[ids].mean(axis=0)
                out[row] = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return out
