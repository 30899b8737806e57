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
import json
import logging
from pathlib import Path
from typing import Any

from ray import serve

from deployments.base import ModelBackend, Progress, ServedModel
from deployments.media import encode_png
from fusion.errors import BadInput

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


@serve.deployment
class DiffusionDeployment(ServedModel):
    backend_cls = DiffusionModel


# ---------------------------------------------------------------------------------------------
# tiny random Stable Diffusion pipeline (tests, offline profile)

_CORPUS = (
    "a photo of a cat sitting on a red sofa",
    "a painting of a small house by the sea at sunset",
    "an astronaut riding a horse on the moon, high quality, detailed",
    "a blue bird in a green tree",
)
# CLIP's pre-tokenisation: words, single digits and punctuation runs; whitespace dropped
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _tiny_clip_tokenizer(max_length: int) -> Any:
    """A CLIP BPE tokenizer (bytes, bytes + ``</w>``, learned merges), built offline."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(vocab_size=700, show_progress=False, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>")
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_tiny_diffusion(folder: str | Path) -> None:
    """A random Stable Diffusion pipeline: 2-level UNet, 2-level VAE (x2), 2-layer CLIP.

    About 0.6 MB; a 64x64 image takes a few milliseconds per step on one CPU core.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    max_length = 16
    tokenizer = _tiny_clip_tokenizer(max_length)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=64)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                       beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(Path(folder))
