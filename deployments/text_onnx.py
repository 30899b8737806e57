"""Text embeddings on ONNX Runtime (text family, backend ``onnx``: ``embed`` and ``zero_shot``).

The encoder is exported from the same transformers checkpoint with ``torch.onnx`` (the
``torch.export`` based exporter: the TorchScript one traces transformers' mask code wrongly
and gives embeddings at cosine ~0.96 to the model it came from), once, into
``$FUSION_MODEL_DIR/onnx/<source fingerprint>/model.onnx``; replicas starting together wait
on the build lock. The served fingerprint is the source's plus ``onnx#<digest of the exported
file>``, so a re-export with another exporter or opset never shares cache entries.
``quantize: int8`` serves ONNX Runtime's dynamic int8 quantisation of that file instead
(``onnx-int8#<digest>``), built once beside it.

Tokenising, pooling, normalising and zero-shot scoring are the torch backend's own code
(``TextModel``); only the forward pass changes, so accuracy checks compare like with like.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

from deployments.base import TORCH_BUILD
from deployments.sources import _build_once, default_model_dir
from deployments.text import FORWARD_CHUNK, TextModel
from fusion.config import ModelConfig
from fusion.errors import SpecError

log = logging.getLogger("fusion.deployments.text_onnx")

OPSET = 18
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_encoder(location: str, folder: Path) -> None:
    """Export ``location``'s encoder (last hidden state) to ``folder/model.onnx``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["an example sentence to export the encoder with", "short"],
                       padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(), tuple(sample[k] for k in INPUTS), str(folder / "model.onnx"),
                          input_names=list(INPUTS), output_names=["last_hidden_state"],
                          dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS},
                          opset_version=OPSET, dynamo=True, external_data=False,
                          verbose=False)


def _export(location: str, folder: Path) -> None:
    """``export_encoder`` under the torch build lock: it builds the transformers model."""
    with TORCH_BUILD:
        export_encoder(location, folder)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation, per-channel weights, every MatMul.

    Measured on MiniLM (``ops/bench/edge.py``): ~2.8x at batch 8 with embeddings at cosine
    0.993 mean to fp32, where torch's dynamic int8 of the same layers keeps only ~0.97 (so the
    torch backend quantises the attention layers alone, ``deployments.text.INT8_LAYERS``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class OnnxTextModel(TextModel):
    """``TextModel`` whose encoder forward pass runs on ONNX Runtime."""

    def load_weights(self) -> None:
        import onnxruntime as ort
        import torch
        from transformers import AutoConfig, AutoTokenizer

        if not self.resolved.local:
            raise SpecError(f"{self.config.name}: the onnx backend exports a local model "
                            "folder (package:, path:, tiny:); a hub: source is not one")
        if self.device != "cpu":
            log.warning("%s: the onnx backend runs on CPU", self.config.name)
            self.device = "cpu"
        loc = self.resolved.location
        self.tokenizer = AutoTokenizer.from_pretrained(loc)
        self.model_config = AutoConfig.from_pretrained(loc)
        key = self.resolved.fingerprint.replace(":", "_").replace("/", "_").replace("#", "-")
        root = (self.model_dir or default_model_dir()) / "onnx"
        folder = _build_once(root / f"{key}-opset{OPSET}", lambda tmp: _export(loc, tmp),
                             f"onnx export of {loc}")
        self.onnx_path = folder / "model.onnx"
        if self.config.quantize == "int8":
            fp32 = self.onnx_path
            folder = _build_once(root / f"{key}-opset{OPSET}-int8",
                                 lambda tmp: quantize_int8(fp32, tmp / "model.onnx"),
                                 f"int8 of {fp32}")
            self.onnx_path = folder / "model.onnx"
        self.onnx_digest = file_digest(self.onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.onnx_path), options,
                                            providers=["CPUExecutionProvider"])
        self.read_options()
        self._torch = torch

    @classmethod
    def builds_torch_modules(cls, config: ModelConfig) -> bool:
        """ONNX Runtime builds no torch module (the one-off export takes the lock itself)."""
        return False

    def variant(self) -> str:
        kind = "onnx-int8" if self.config.quantize == "int8" else "onnx"
        return f"{kind}#{self.onnx_digest}"

    def _forward_hidden(self, batch: dict[str, Any]) -> Any:
        torch = self._torch
        feeds = {k: batch[k].numpy() if k in batch else
                 torch.zeros_like(batch["input_ids"]).numpy() for k in INPUTS}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def _embed(self, texts: list[str]) -> Any:
        torch = self._torch
        chunks = []
        for s in range(0, len(texts), FORWARD_CHUNK):
            batch = self._encode(texts[s:s + FORWARD_CHUNK])
            hidden = self._forward_hidden(batch)
            chunks.append(self.pool(hidden, batch["attention_mask"]))
        return torch.cat(chunks)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "runtime": "onnxruntime", "onnx": str(self.onnx_path)}
