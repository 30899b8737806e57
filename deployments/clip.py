"""CLIP family on open_clip: image and text embeddings, zero-shot image classification.

Sources:

- ``hub:<org>/<repo>`` — an open_clip hub repository (``open_clip_config.json`` +
  ``open_clip_model.safetensors``), loaded as ``hf-hub:<org>/<repo>``; with ``@revision`` the
  repository's open_clip files at that revision are fetched (or found in the local HF cache)
  with ``huggingface_hub.snapshot_download`` and loaded as a folder.
- a folder (``path:``, ``package:``, ``tiny:``) in the same layout: ``open_clip_config.json``
  (``{"model_cfg": …, "preprocess_cfg": …}``) next to ``open_clip_model.safetensors`` (or
  ``open_clip_pytorch_model.bin``), loaded through open_clip's ``local-dir:`` schema.

``zero_shot`` is ``softmax(logit_scale · cosine(image, prompt))`` over the prompts
``template`` with ``{}`` replaced by each label; embeddings are L2-normalised.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.common import check_text, fill_template, optimise, ranked
from deployments.layouts import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from deployments.media import decode_image
from fusion.errors import BadInput, SpecError
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.clip")

CONFIG_NAME = OPEN_CLIP_CONFIG
WEIGHT_NAMES = OPEN_CLIP_WEIGHTS
FORWARD_CHUNK = 64


class ClipModel(ModelBackend):
    family = "clip"
    marker_files = (CONFIG_NAME,)

    def load_weights(self) -> None:
        import open_clip
        import torch

        name = self._model_name()
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=self.device)
        model.to(self.device, self.dtype).eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.logit_scale = float(model.logit_scale.exp().item())
        self.model = optimise(model, self.config.model_copy(update={"compile": False}),
                              self.device)
        for module in self.model.modules():
            # open_clip reads the cast dtype from ``mlp.c_fc.weight``, which int8 dynamic
            # quantisation turns into a method; it honours this attribute instead
            c_fc = getattr(getattr(module, "mlp", None), "c_fc", None)
            if c_fc is not None and not isinstance(getattr(c_fc, "weight", None), torch.Tensor):
                c_fc.int8_original_dtype = self.dtype
        self.encode_image = self.model.encode_image
        self.encode_text = self.model.encode_text
        if self.config.compile:
            self.encode_image = torch.compile(self.encode_image, dynamic=True)
            self.encode_text = torch.compile(self.encode_text, dynamic=True)
        self._torch = torch

    def _model_name(self) -> str:
        """The open_clip model name (``hf-hub:`` / ``local-dir:``) for the resolved source."""
        res = self.resolved
        if res.local:
            folder = Path(res.location)
        elif res.revision:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(
                res.location, revision=res.revision,
                allow_patterns=[CONFIG_NAME, "open_clip_*", "*.json", "*.txt", "*.model"]))
        else:
            return f"hf-hub:{res.location}"
        if not (folder / CONFIG_NAME).is_file():
            raise SpecError(f"{self.config.name}: {folder} has no {CONFIG_NAME}")
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        if "model_cfg" not in cfg:
            raise SpecError(f"{self.config.name}: {folder / CONFIG_NAME} has no 'model_cfg'")
        if not any((folder / w).is_file() for w in WEIGHT_NAMES):
            # open_clip would warn and go on with random weights: refuse instead
            raise SpecError(f"{self.config.name}: no weights ({' or '.join(WEIGHT_NAMES)}) "
                            f"in {folder}")
        return f"local-dir:{folder}"

    # -- request side -------------------------------------------------------------------------

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        if "text" in item:
            check_text(item["text"])
        if "labels" in item:
            item["prompts"] = fill_template(item["template"], item["labels"])
        if "image" in item:
            # pixels now, before batching: a bad upload fails its own request only
            item["image"] = self.preprocess(decode_image(item["image"], field="image"))
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        if not items:
            return []
        if task == "embed_text":
            emb = self._texts([it["text"] for it in items])
            return [{"embedding": e.tolist()} for e in emb]
        if task == "embed_image":
            emb = self._images([it["image"] for it in items])
            return [{"embedding": e.tolist()} for e in emb]
        if task == "zero_shot":
            img = self._images([it["image"] for it in items])
            prompts = list(dict.fromkeys(p for it in items for p in it["prompts"]))
            txt = self._texts(prompts)
            where = {p: i for i, p in enumerate(prompts)}
            out = []
            for i, it in enumerate(items):
                logits = self.logit_scale * (txt[[where[p] for p in it["prompts"]]] @ img[i])
                out.append({"labels": ranked(it["labels"], logits.softmax(-1).tolist())})
            return out
        raise BadInput(f"task {task!r} is not implemented by the clip family", field="task")

    # -- model side ---------------------------------------------------------------------------

    def _images(self, pixels: list[Any]) -> Any:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(pixels), FORWARD_CHUNK):
                batch = torch.stack(pixels[s:s + FORWARD_CHUNK]).to(self.device, self.dtype)
                chunks.append(self.encode_image(batch).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def _texts(self, texts: list[str]) -> Any:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(texts), FORWARD_CHUNK):
                tokens = self.tokenizer(texts[s:s + FORWARD_CHUNK]).to(self.device)
                chunks.append(self.encode_text(tokens).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


FAMILY = Family(
    name="clip",
    tasks={
        "embed_image": TaskSpec({"image": param("image")}, {"embedding": "embedding"}),
        "embed_text": TaskSpec({"text": param("text")}, {"embedding": "embedding"}),
        "zero_shot": TaskSpec(
            {"image": param("image"), "labels": param("list[text]"),
             "template": param("text", "a photo of a {}", False)},
            {"labels": "labels"}, doc="CLIP zero-shot: softmax over label prompts."),
    },
    backends={"open_clip": ("embed_image", "embed_text", "zero_shot")},
    model=ClipModel,
    tiny={"clip": "deployments.tiny.clip:build_tiny_clip"},
)
