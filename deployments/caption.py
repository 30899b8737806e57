"""Caption family: image → text with transformers image-to-text models.

Loads whatever ``AutoModelForImageTextToText`` maps the folder's config to — BLIP
(``BlipForConditionalGeneration``), GIT (``GitForCausalLM``) and ViT-GPT2 style
``VisionEncoderDecoderModel`` — with ``AutoImageProcessor`` for the pixels and ``AutoTokenizer``
for decoding (the two halves every one of those processors is made of, so models that ship
no ``processor_config.json``, like most VisionEncoderDecoder checkpoints, load the same way).

Decoding is deterministic: ``do_sample=False``; beams come from the model's generation config
unless ``options.num_beams`` says otherwise. A batch is generated in one ``generate`` call per
distinct ``max_new_tokens``.
"""

from __future__ import annotations

import logging
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.common import hub_kwargs, optimise
from deployments.media import decode_image
from fusion.errors import BadInput
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.caption")

MAX_NEW_TOKENS = 128  # upper bound a request may ask for (options.max_new_tokens_limit)


class CaptionModel(ModelBackend):
    family = "caption"
    marker_files = ("config.json",)

    def load_weights(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        loc, kw = self.resolved.location, hub_kwargs(self)
        self.image_processor = AutoImageProcessor.from_pretrained(loc, **kw)
        self.tokenizer = AutoTokenizer.from_pretrained(loc, **kw)
        model = AutoModelForImageTextToText.from_pretrained(loc, dtype=self.dtype, **kw)
        model.to(self.device, self.dtype).eval()
        if self.config.compile:
            log.warning("%s: compile is not supported for caption generation; ignored",
                        self.config.name)
        self.model = optimise(model, self.config.model_copy(update={"compile": False}),
                              self.device)
        self.limit = int(self.config.options.get("max_new_tokens_limit", MAX_NEW_TOKENS))
        self.num_beams = self.config.options.get("num_beams")
        self._torch = torch

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        n = item["max_new_tokens"]
        if not 1 <= n <= self.limit:
            raise BadInput(f"max_new_tokens must be between 1 and {self.limit}",
                           field="max_new_tokens")
        item["image"] = decode_image(item["image"], field="image")
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it["max_new_tokens"], []).append(i)
        out: list[dict] = [{} for _ in items]
        for n, idx in groups.items():
            texts = self._generate([items[i]["image"] for i in idx], n)
            for i, text in zip(idx, texts, strict=True):
                out[i] = {"text": text}
        return out

    def _generate(self, images: list[Any], max_new_tokens: int) -> list[str]:
        torch = self._torch
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        extra = {"num_beams": int(self.num_beams)} if self.num_beams else {}
        with torch.inference_mode():
            ids = self.model.generate(pixel_values=pixels.to(self.device, self.dtype),
                                      max_new_tokens=max_new_tokens, do_sample=False, **extra)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


FAMILY = Family(
    name="caption",
    tasks={"caption": TaskSpec({"image": param("image"), "max_new_tokens": param("int", 20)},
                               {"text": "text"}, doc="Describe the image in words.")},
    backends={"transformers": ("caption",)},
    model=CaptionModel,
    tiny={"caption": "deployments.tiny.caption:build_tiny_caption"},
)
