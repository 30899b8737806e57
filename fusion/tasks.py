"""Task signatures: the value types going in and out of a model task.

Each family declares its tasks with these types in its own module (``fusion.registry``);
the router validates pipelines and HTTP calls against them before any model runs.

Values inside the gateway (between router, cache and replicas) are plain Python:
``text`` str · ``image`` bytes of an encoded image file (PNG/JPEG/...) · ``audio`` bytes of
an encoded audio file (WAV/FLAC/OGG) · ``embedding`` list[float] · ``labels`` list of
``{"label": str, "score": float}`` sorted by score, best first · ``json`` any JSON value ·
``int`` / ``float`` / ``bool`` scalars · ``list[T]`` lists of those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    streams_tokens: bool = False  # a streamed call yields {"token": text} events (llm)
    # None: always cacheable; else says from the checked inputs why a call must not be
    # cached (a sampled completion), or None when it may be
    uncacheable: Callable[[dict[str, Any]], str | None] | None = None
    doc: str = ""


def param(type_: str, default: object = None, required: bool | None = None) -> Param:
    """An input of ``type_``; required unless a default is given (or ``required`` says)."""
    return Param(type_, default is None if required is None else required, default)


_p = param

@dataclass(frozen=True)
class ModelTasks:
    """What one configured model serves: its family, backend, tasks and their signatures.

    Built from the family registry (``fusion.registry``) or, for ``family: custom``, from the
    model's own ``tasks:`` config; the router validates pipelines and calls against it.
    """

    family: str
    backend: str
    tasks: tuple[str, ...] = field(default_factory=tuple)
    specs: dict[str, TaskSpec] = field(default_factory=dict, compare=False)

    def spec(self, task: str) -> TaskSpec:
        return self.specs[task]
