"""The sentence encoder through ONNX Runtime with int8 weights (the ``onnx`` extra).

On a 2-core CPU it embeds a query 2-4x faster than torch, at a cosine of about 0.99 to
torch's vectors (see benchmarks/router_speed.py). The int8 model is exported once from the local
sentence-transformers directory (torch is needed for that step only) and kept beside the
embedding cache; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxUnavailable(RuntimeError):
    """onnxruntime (or, to export, torch and onnx) is not installed, or the model cannot be exported."""


def check_mean_pooling(model_dir: Path) -> None:
    """The encoder reproduces a transformer + mean pooling (+ normalize) model and nothing else."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        config = json.loads((model_dir / pooling["path"] / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError) as e:
        raise OnnxUnavailable(f"{model_dir}: not a sentence-transformers directory with a pooling module ({e})") from None
    if not config.get("pooling_mode_mean_tokens") or any(
        config.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise OnnxUnavailable(f"{model_dir}: the onnx engine supports mean pooling only; use HERD_EMBED_ENGINE=torch")


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
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    example = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in ONNX_INPUTS)  # shapes are dynamic below
    axes = {name: {0: "batch", 1: "tokens"} for name in (*ONNX_INPUTS, "last_hidden_state")}
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32 = out.with_name(f".{out.stem}-fp32.{os.getpid()}.onnx")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # The tracer's and quantizer's advice concerns shapes and models other than this one
    # (checked by the tests against torch's vectors), so it is not shown to users.
    logging.disable(logging.WARNING)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model), example, str(fp32), input_names=list(ONNX_INPUTS),
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        tmp.replace(out)  # whole or absent: a concurrent or interrupted export never leaves half a file
    finally:
        logging.disable(logging.NOTSET)
        fp32.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


class OnnxEncoder:
    """``encode(texts)`` -> (n, dim) unit vectors, as SentenceTransformer.encode with mean pooling
    and normalization; texts are cut to ``max_tokens`` keeping their end."""

    def __init__(self, model_dir: Path, onnx_path: Path, max_tokens: int, threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise OnnxUnavailable(f"the onnx engine needs onnxruntime ({e}): pip install -e '.[onnx]' (see README)") from None
        check_mean_pooling(model_dir)
        if not onnx_path.exists():
            export_int8(model_dir, onnx_path)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens, direction="left")
        self.tokenizer.no_padding()  # tokenizer.json may pad to a fixed length; each text runs alone
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        # Without this, idle worker threads spin between single-query calls and slow the tail.
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
