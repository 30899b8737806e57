"""``shape:`` models: a hub model's real architecture with random weights, built offline.

Each shape is a JSON file in ``deployments/shapes/`` (a few KB: the hub model's own config,
or for CLIP the name of open_clip's shipped model config). Its builder creates the model
with random weights, a tokenizer of the same kind and size (``deployments.shape_tokenizers``)
and the processor files, and saves everything in the layout the hub model has, so the family
loads it through the same ``from_pretrained`` / open_clip path that real weights take.

Why: speed and memory claims need full-size compute, and CI and air-gapped machines have no
hub. Outputs are meaningless; FLOPs, memory, batching and generation lengths behave like the
real model's. Random decoders never choose end-of-sequence first (it is suppressed at the
first step), so a caption or transcript is never empty and pipelines can chain on it; they
then usually run to their token limit, which is why serve profiles cap ``max_new_tokens``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployments import shape_tokenizers as tok
from deployments.layouts import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from fusion.errors import SpecError

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
# Part of every shape folder's name: raise it when a builder or tokenizer changes what it
# writes, so machines that built the old files build anew.
BUILDER_VERSION = 2


def shape_names() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def load_spec(name: str) -> dict[str, Any]:
    path = SHAPES_DIR / f"{name}.json"
    if "/" in name or not path.is_file():
        raise SpecError(f"unknown shape {name!r}; known: {shape_names()}")
    return json.loads(path.read_text())


def build_shape(name: str, folder: Path) -> None:
    """Write the complete model named ``name`` into ``folder`` (seeded: same bytes each time
    on the same library versions)."""
    import torch

    spec = load_spec(name)
    builder = BUILDERS.get(spec.get("builder", ""))
    if builder is None:
        raise SpecError(f"shape {name!r} names unknown builder {spec.get('builder')!r}")
    torch.manual_seed(0)
    builder(spec, Path(folder))
    (Path(folder) / "shape.json").write_text(json.dumps({"shape": name, **spec}, indent=2))


def _config(model_type: str, config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{k: v for k, v in config.items()
                                               if k != "model_type"})


def _tokenizer(spec: dict[str, Any]) -> Any:
    kind, size = spec["kind"], spec["vocab_size"]
    max_len = spec.get("model_max_length", 512)
    if kind == "wordpiece":
        return tok.bert_tokenizer(size, max_len)
    if kind == "byte_level_bpe":
        return tok.bart_tokenizer(size, max_len)
    raise SpecError(f"unknown shape tokenizer kind {kind!r}")


def build_clip(spec: dict[str, Any], folder: Path) -> None:
    """open_clip's own model config (e.g. ``ViT-B-32``), saved in the open_clip hub layout."""
    import open_clip
    from safetensors.torch import save_file

    name = spec["open_clip_model"]
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise SpecError(f"open_clip has no model config {name!r}")
    model = open_clip.create_model(name, pretrained=None).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(folder / OPEN_CLIP_WEIGHTS[0]))
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": spec["preprocess_cfg"]}, indent=2))


def build_sequence_classifier(spec: dict[str, Any], folder: Path) -> None:
    """DistilBERT / BART style ``*ForSequenceClassification`` with its tokenizer."""
    import transformers

    config = _config(spec["config"]["model_type"], spec["config"])
    model = getattr(transformers, spec["architecture"])(config).eval()
    tokenizer = _tokenizer(spec["tokenizer"])
    if len(tokenizer) != config.vocab_size:
        raise SpecError(f"tokenizer has {len(tokenizer)} tokens, model {config.vocab_size}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_blip_caption(spec: dict[str, Any], folder: Path) -> None:
    """``BlipForConditionalGeneration`` + BERT WordPiece (+ ``[DEC]``/``[ENC]``) + processor."""
    from transformers import BlipForConditionalGeneration, BlipImageProcessor

    tspec = spec["tokenizer"]
    tokenizer = tok.bert_tokenizer(tspec["vocab_size"], tspec["model_max_length"])
    tokenizer.add_special_tokens({"bos_token": tspec["bos_token"],
                                  "additional_special_tokens": tspec["extra_special_tokens"]})
    config = _config("blip", spec["config"])
    text = config.text_config
    if len(tokenizer) != text.vocab_size or \
            tokenizer.convert_tokens_to_ids(tspec["bos_token"]) != text.bos_token_id:
        raise SpecError("BLIP shape: tokenizer and text_config disagree")
    model = BlipForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.do_sample, gen.num_beams = False, 1
    specials = [i for t, i in tokenizer.get_vocab().items()
                if t.startswith("[") and t.endswith("]") and i != text.sep_token_id]
    gen.suppress_tokens = sorted(specials)
    gen.begin_suppress_tokens = [text.sep_token_id]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(**spec["image_processor"]).save_pretrained(folder)


def build_whisper(spec: dict[str, Any], folder: Path) -> None:
    """Multilingual Whisper: BPE of GPT-2's size, then Whisper's special and timestamp tokens
    at the real ids, feature extractor, and a generation config that detects languages."""
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    vocab, merges = tok.byte_level_bpe(spec["bpe_size"])
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges,
                                 model_max_length=spec["max_length"])
    languages = list(LANGUAGES)[:spec["languages"]]
    specials = ["<|startoftranscript|>", *(f"<|{c}|>" for c in languages),
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tokenizer.add_tokens(timestamps)
    config = _config("whisper", spec["config"])
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    if len(tokenizer) != config.vocab_size or (eot, sot) != (spec["bpe_size"],
                                                             spec["bpe_size"] + 1):
        raise SpecError(f"Whisper shape: tokenizer has {len(tokenizer)} tokens "
                        f"(end {eot}, start {sot}); the model expects {config.vocab_size}")
    config.update({"pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot,
                   "decoder_start_token_id": sot, "begin_suppress_tokens": None,
                   "suppress_tokens": None})
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=spec["max_length"], do_sample=False, num_beams=1, is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in languages},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        return_timestamps=False, max_initial_timestamp_index=50,
        # a trained Whisper emits timestamps only when asked; a random one must be told
        begin_suppress_tokens=[ids("Ġ"), eot],
        suppress_tokens=[ids(t) for t in specials + timestamps])
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(
        feature_size=config.num_mel_bins), tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_stable_diffusion(spec: dict[str, Any], folder: Path) -> None:
    """A ``StableDiffusionPipeline`` from the UNet, VAE, text encoder and scheduler configs,
    with OpenAI's CLIP tokenizer; weights stored in fp16 (as the hub's fp16 files are)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tspec = spec["tokenizer"]
    tokenizer = tok.clip_tokenizer(tspec["model_max_length"], tspec["pad_token"])
    text_cfg = _config("clip_text_model", spec["text_encoder"])
    if len(tokenizer) != text_cfg.vocab_size:
        raise SpecError("SD shape: tokenizer and text encoder disagree on the vocabulary")
    text_encoder = CLIPTextModel(text_cfg).eval()
    unet = UNet2DConditionModel.from_config(spec["unet"]).eval()
    vae = AutoencoderKL.from_config(spec["vae"]).eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(spec["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(folder)


def build_causal_lm(spec: dict[str, Any], folder: Path) -> None:
    """A decoder-only LM (Qwen2) with a ChatML tokenizer, saved in the hub layout.

    Rows of the embedding past the tokenizer (the hub model pads its vocabulary) and
    ``<|im_start|>`` are suppressed in the generation config, so answers decode to text."""
    import torch
    import transformers

    config = _config(spec["config"]["model_type"], spec["config"])
    model = getattr(transformers, spec["architecture"])(config).eval()
    t = spec["tokenizer"]
    tokenizer = tok.chatml_tokenizer(t["bpe_size"], t["specials"], t["model_max_length"],
                                     t["chat_template"])
    ids = tokenizer.convert_tokens_to_ids
    gen = model.generation_config
    gen.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    gen.pad_token_id, gen.bos_token_id, gen.do_sample = ids("<|endoftext|>"), None, False
    gen.suppress_tokens = [ids("<|im_start|>"), *range(len(tokenizer), config.vocab_size)]
    model.to(getattr(torch, spec.get("dtype", "float32"))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


BUILDERS = {
    "clip": build_clip,
    "sequence_classifier": build_sequence_classifier,
    "blip_caption": build_blip_caption,
    "whisper": build_whisper,
    "stable_diffusion": build_stable_diffusion,
    "causal_lm": build_causal_lm,
}
