"""The sentence encoder through ONNX Runtime with int8 weights (the ``onnx`` extra).

On a 2-core CPU it embeds a query 2-4x faster than torch, at a cosine of about 0.99 to
torch's vectors (see benchmarks/router_speed.py). The int8 model is exported once from the local
sentence-transformers directory (torch is needed for that step only) and kept beside the
embedding cache; nothing is downloaded.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from herd.errors import HerdError

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Names the export (opset 17, int8 weights per channel) in the model's and the vectors' cache
# names: a changed recipe must not reuse an old export or mix its vectors with the old ones.
RECIPE = "onnx-int8-r1"


class OnnxUnavailable(HerdError, RuntimeError):
    """onnxruntime (or, to export, torch and onnx) is not installed, or the model cannot be exported."""


def check_supported(model_dir: Path) -> None:
    """The encoder reproduces exactly a transformer at the directory's root, mean pooling and
    (optionally) normalization, with a fast tokenizer file; anything else would give vectors
    that differ from torch's without an error."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        config = json.loads((model_dir / pooling["path"] / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError) as e:
        raise OnnxUnavailable(f"{model_dir}: not a sentence-transformers directory with a pooling module ({e})") from None
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]) or modules[0].get("path"):
        raise OnnxUnavailable(f"{model_dir}: modules {kinds}; the onnx engine supports a root Transformer, "
                              "Pooling and Normalize only; use HERD_EMBED_ENGINE=torch")
    if not config.get("pooling_mode_mean_tokens") or any(
        config.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise OnnxUnavailable(f"{model_dir}: the onnx engine supports mean pooling only; use HERD_EMBED_ENGINE=torch")
    if not (model_dir / "tokenizer.json").exists():
        raise OnnxUnavailable(f"{model_dir}: no tokenizer.json; use HERD_EMBED_ENGINE=torch")


def export_int8(model_dir: Path, out: Path) -> None:
    """Export the transformer to ONNX, then quantize its weights to int8 per channel (per-tensor
    scales move the vectors too far: cosine ~0.95 to torch's instead of ~0.99)."""
    try:
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from transformers import AutoModel
    except ImportError as e:
        raise OnnxUnavailable(f"exporting the encoder needs torch, transformers and onnx ({e}): "
                              "pip install -e '.[embed,onnx]' (see README)") from None

    class LastHidden(torch.nn.Module):
        def __init__(self, model, names):
            super().__init__()
            self.model = model
            self.names = names

        def forward(self, *inputs):
            return self.model(**dict(zip(self.names, inputs))).last_hidden_state

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))  # private to this export
    # The tracer's and quantizer's advice concerns shapes and models other than this one
    # (checked by the tests against torch's vectors), so it is not shown to users.
    disabled = logging.root.manager.disable  # the application's own setting, restored below
    logging.disable(max(disabled, logging.WARNING))
    try:
        model = AutoModel.from_pretrained(str(model_dir)).eval()
        names = [n for n in ONNX_INPUTS if n in inspect.signature(model.forward).parameters]
        example = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in names)  # shapes are dynamic below
        axes = {name: {0: "batch", 1: "tokens"} for name in (*names, "last_hidden_state")}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model, names), example, str(work / "fp32.onnx"), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
            quantize_dynamic(str(work / "fp32.onnx"), str(work / "int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True)
        (work / "int8.onnx").replace(out)  # whole or absent: a concurrent or interrupted export leaves no half file
    except Exception as e:  # noqa: BLE001 - any failure of a third-party exporter is one clear message
        raise OnnxUnavailable(f"could not export {model_dir} to ONNX ({type(e).__name__}: {e}); "
                              "torch 2.5 or newer is needed, or use HERD_EMBED_ENGINE=torch") from None
    finally:
        logging.disable(disabled)
        shutil.rmtree(work, ignore_errors=True)


class OnnxEncoder:
    """``encode(texts)`` -> (n, dim) unit vectors, as SentenceTransformer.encode with mean pooling
    and normalization; texts are cut to ``max_tokens`` keeping their end."""

    def __init__(self, model_dir: Path, onnx_path: Path, max_tokens: int, threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise OnnxUnavailable(f"the onnx engine needs onnxruntime ({e}): pip install -e '.[onnx]' (see README)") from None
        check_supported(model_dir)
        if not onnx_path.exists():
            export_int8(model_dir, onnx_path)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens, direction="left")
        self.tokenizer.no_padding()  # tokenizer.json may pad to a fixed length; each text runs alone
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        # Idle threads sleep between queries: spinning saved ~1 ms a query here but would take the
        # CPU from the gateway and the router's own work in between.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dim = self.session.get_outputs()[0].shape[-1]

    def encode(self, texts: list[str]) -> np.ndarray:
        # One text per run: int8 activations are scaled over the whole input tensor, so batch-mates
        # (and their padding) would move a text's vector; alone, a text always gets the same one.
        # On a few cores batching gained little anyway (~10% throughput).
        out = np.empty((len(texts), self.dim), np.float32)
        for row, enc in enumerate(self.tokenizer.encode_batch(texts)):
            ids = np.array([enc.ids], np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: feed[k] for k in self.inputs})[0][0]
            vec = hidden.mean(axis=0)
            out[row] = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return out
