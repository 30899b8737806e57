"""The task catalog: what each model family can do, and the types going in and out.

This table is the contract between the router and the deployments. The router validates
pipelines and HTTP calls against it before any model runs; each deployment implements
exactly the tasks listed for its family and backend.

Values inside the gateway (between router, cache and replicas) are plain Python:
``text`` str · ``image`` bytes of an encoded image file (PNG/JPEG/...) · ``audio`` bytes of
an encoded audio file (WAV/FLAC/OGG) · ``embedding`` list[float] · ``labels`` list of
``{"label": str, "score": float}`` sorted by score, best first · ``json`` any JSON value ·
``int`` / ``float`` / ``bool`` scalars · ``list[T]`` lists of those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VALUE_TYPES = ("text", "image", "audio", "embedding", "labels", "json", "int", "float", "bool")
BINARY_TYPES = ("image", "audio")


def is_value_type(name: str) -> bool:
    if name.startswith("list[") and name.endswith("]"):
        return is_value_type(name[5:-1])
    return name in VALUE_TYPES


def accepts(expected: str, given: str) -> bool:
    """Whether a value of type ``given`` may be bound where ``expected`` is declared."""
    if expected == given or expected == "json":
        return True
    # an int may stand where a float is expected; nothing else converts implicitly
    return expected == "float" and given == "int"


@dataclass(frozen=True)
class Param:
    type: str
    required: bool = True
    default: object = None


@dataclass(frozen=True)
class TaskSpec:
    """Signature of one task: named inputs (with types, required or not) and outputs."""

    inputs: dict[str, Param]
    outputs: dict[str, str]
    batched: bool = True
    streams_progress: bool = False
    doc: str = ""


def _p(type_: str, default: object = None, required: bool | None = None) -> Param:
    return Param(type_, default is None if required is None else required, default)


_ZERO_SHOT_TEXT = TaskSpec(
    {"text": _p("text"), "labels": _p("list[text]"), "template": _p("text", "{}", False)},
    {"labels": "labels"},
    doc="Score each label against the text; scores sum to 1.",
)

TASKS: dict[str, dict[str, TaskSpec]] = {
    "text": {
        "embed": TaskSpec({"text": _p("text")}, {"embedding": "embedding"},
                          doc="L2-normalised sentence embedding."),
        "zero_shot": _ZERO_SHOT_TEXT,
        "classify": TaskSpec({"text": _p("text")}, {"labels": "labels"},
                             doc="Sequence classification with the model's own labels."),
    },
    "caption": {
        "caption": TaskSpec({"image": _p("image"), "max_new_tokens": _p("int", 20)},
                            {"text": "text"}, doc="Describe the image in words."),
    },
    "clip": {
        "embed_image": TaskSpec({"image": _p("image")}, {"embedding": "embedding"}),
        "embed_text": TaskSpec({"text": _p("text")}, {"embedding": "embedding"}),
        "zero_shot": TaskSpec(
            {"image": _p("image"), "labels": _p("list[text]"),
             "template": _p("text", "a photo of a {}", False)},
            {"labels": "labels"}, doc="CLIP zero-shot: softmax over label prompts."),
    },
    "audio": {
        "transcribe": TaskSpec({"audio": _p("audio"), "language": _p("text", "", False)},
                               {"text": "text", "language": "text"}),
    },
    "diffusion": {
        "generate": TaskSpec(
            {"prompt": _p("text"), "negative_prompt": _p("text", "", False),
             "steps": _p("int", 4), "guidance": _p("float", 0.0), "width": _p("int", 64),
             "height": _p("int", 64), "seed": _p("int", 0)},
            {"image": "image"}, batched=False, streams_progress=True,
            doc="Text to image; deterministic for a given seed."),
    },
    "ocr": {
        "ocr": TaskSpec({"image": _p("image")}, {"text": "text", "lines": "json"}, batched=False),
    },
    "tts": {
        "speak": TaskSpec({"text": _p("text")}, {"audio": "audio"}, batched=False),
    },
}

# Which tasks each backend of a family serves; the first backend is the family default.
BACKENDS: dict[str, dict[str, tuple[str, ...]]] = {
    "text": {"embedding": ("embed", "zero_shot"), "nli": ("zero_shot",),
             "classifier": ("classify",), "onnx": ("embed", "zero_shot")},
    "caption": {"transformers": ("caption",)},
    "clip": {"open_clip": ("embed_image", "embed_text", "zero_shot")},
    "audio": {"faster-whisper": ("transcribe",), "transformers": ("transcribe",)},
    "diffusion": {"diffusers": ("generate",)},
    "ocr": {"rapidocr": ("ocr",)},
    "tts": {"piper": ("speak",)},
}


@dataclass(frozen=True)
class ModelTasks:
    family: str
    backend: str
    tasks: tuple[str, ...] = field(default_factory=tuple)

    def spec(self, task: str) -> TaskSpec:
        return TASKS[self.family][task]


def default_backend(family: str) -> str:
    return next(iter(BACKENDS[family]))


def model_tasks(family: str, backend: str | None = None) -> ModelTasks:
    backend = backend or default_backend(family)
    return ModelTasks(family, backend, BACKENDS[family][backend])
