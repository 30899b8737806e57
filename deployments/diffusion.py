"""Diffusion family: text to image with diffusers.

One backend, ``diffusers``: ``AutoPipelineForText2Image.from_pretrained`` on the resolved
location (a hub id or a saved pipeline folder with ``model_index.json``), so Stable Diffusion,
SDXL and the other text-to-image pipelines diffusers maps load the same way.

``generate`` is deterministic for a given seed on a given device and dtype: the initial noise
comes from ``torch.Generator(device).manual_seed(seed)``. It reports progress once per
denoising step through ``callback_on_step_end``. Inputs are checked before any model runs:
``steps`` 1..100, ``width``/``height`` multiples of 8 in 8..2048, ``guidance`` 0..100,
``seed`` 0..2**63-1; anything else is the client's error naming the field.

Options: ``compile: true`` compiles the denoiser (UNet or transformer) with ``torch.compile``;
``options.attention_slicing`` turns on attention slicing (less memory on big images).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import Any

from deployments.base import ModelBackend, Progress, quiet_progress_bars
from deployments.media import encode_png
from fusion.errors import BadInput
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.diffusion")

MAX_STEPS = 100
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 8, 2048, 8
MAX_GUIDANCE = 100.0
MAX_SEED = 2**63 - 1


def check_generate_inputs(item: dict[str, Any]) -> None:
    """Range checks for ``generate``; ``BadInput`` names the field."""
    steps = item["steps"]
    if not 1 <= steps <= MAX_STEPS:
        raise BadInput(f"steps must be between 1 and {MAX_STEPS}, got {steps}", field="steps")
    for name in ("width", "height"):
        side = item[name]
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_MULTIPLE:
            raise BadInput(f"{name} must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} "
                           f"and {MAX_SIDE}, got {side}", field=name)
    if not 0.0 <= item["guidance"] <= MAX_GUIDANCE:
        raise BadInput(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got "
                       f"{item['guidance']}", field="guidance")
    if not 0 <= item["seed"] <= MAX_SEED:
        raise BadInput(f"seed must be between 0 and 2**63-1, got {item['seed']}", field="seed")


class DiffusionModel(ModelBackend):
    family = "diffusion"
    marker_files = ("model_index.json",)

    def load_weights(self) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        quiet_progress_bars()  # diffusers was not imported when ``load`` silenced the others
        # without accelerate, diffusers logs a warning on every load unless told not to try
        kw: dict[str, Any] = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate")
                              is not None}
        if not self.resolved.local and self.resolved.revision:
            kw["revision"] = self.resolved.revision
        pipe = AutoPipelineForText2Image.from_pretrained(self.resolved.location,
                                                         dtype=self.dtype, **kw)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if self.config.options.get("attention_slicing"):
            pipe.enable_attention_slicing()
        if self.config.compile:
            for name in ("unet", "transformer"):
                module = getattr(pipe, name, None)
                if module is not None:
                    log.info("%s: torch.compile %s", self.config.name, name)
                    setattr(pipe, name, torch.compile(module))
        if self.config.quantize != "none":
            log.warning("%s: quantize=%s is not supported by the diffusion family; ignored",
                        self.config.name, self.config.quantize)
        params = inspect.signature(pipe.__call__).parameters
        self.accepts_negative = "negative_prompt" in params
        self.pipe = pipe
        self._torch = torch

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        check_generate_inputs(item)
        if item["negative_prompt"] and not self.accepts_negative:
            raise BadInput(f"model {self.config.name!r} ({type(self.pipe).__name__}) does not "
                           "take a negative prompt", field="negative_prompt")
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        return [{"image": self._generate(item, progress)} for item in items]

    def _generate(self, item: dict[str, Any], progress: Progress | None) -> bytes:
        torch = self._torch
        steps = item["steps"]
        kwargs: dict[str, Any] = {
            "prompt": item["prompt"],
            "num_inference_steps": steps,
            "guidance_scale": item["guidance"],
            "width": item["width"],
            "height": item["height"],
            "generator": torch.Generator(self.device).manual_seed(item["seed"]),
            "output_type": "pil",
        }
        if item["negative_prompt"]:
            kwargs["negative_prompt"] = item["negative_prompt"]
        if progress is not None:
            def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
                total = getattr(pipe, "_num_timesteps", None) or steps
                progress(step + 1, int(total))
                return tensors

            kwargs["callback_on_step_end"] = on_step_end
        with torch.inference_mode():
            image = self.pipe(**kwargs).images[0]
        return encode_png(image)


FAMILY = Family(
    name="diffusion",
    tasks={"generate": TaskSpec(
        {"prompt": param("text"), "negative_prompt": param("text", "", False),
         "steps": param("int", 4), "guidance": param("float", 0.0), "width": param("int", 64),
         "height": param("int", 64), "seed": param("int", 0)},
        {"image": "image"}, batched=False, streams_progress=True,
        doc="Text to image; deterministic for a given seed.")},
    backends={"diffusers": ("generate",)},
    model=DiffusionModel,
    tiny={"diffusion": "deployments.tiny.diffusion:build_tiny_diffusion"},
)
