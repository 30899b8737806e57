"""Typed views (pydantic) of the gateway's responses and stream events.

All models accept extra fields, so a newer gateway that adds fields does not break an older SDK.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True,
                              protected_namespaces=())


class StepSpec(_Model):
    """One step of a pipeline as listed by ``GET /v1/pipelines``."""

    model: str | None = None
    task: str | None = None
    needs: list[str] = Field(default_factory=list)
    when: str | None = None


class InputSpec(_Model):
    """A declared pipeline input: its type, whether it is required, and its default."""

    type: str
    required: bool = True
    default: Any = None
    description: str | None = None


class PipelineInfo(_Model):
    """A pipeline: its declared inputs and output types (``text``, ``image``, ``list[text]`` …).

    ``inputs`` maps each name to an :class:`InputSpec`; the gateway may list an input either as
    a bare type string or as ``{"type", "required", "default", "description"}``.
    """

    name: str
    description: str | None = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(default_factory=dict)

    @field_validator("inputs", mode="before")
    @classmethod
    def _bare_types(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @property
    def input_types(self) -> dict[str, str]:
        """Input name → declared type."""
        return {name: spec.type for name, spec in self.inputs.items()}


class ModelInfo(_Model):
    """A served model as listed by ``GET /v1/models``."""

    name: str
    family: str | None = None
    backend: str | None = None
    tasks: list[str] = Field(default_factory=list)
    source: str | None = None
    fingerprint: str | None = None
    device: str | None = None
    dtype: str | None = None


class StepResult(_Model):
    """How one step of a pipeline run went: time, and whether the cache answered it."""

    ms: float | None = None
    cached: bool = False
    coalesced: bool = False
    skipped: bool = False


class PipelineResult(_Model):
    """Result of ``run``: decoded ``outputs`` plus per-step and cache information.

    ``outputs`` values follow ``types``: ``image`` → ``PIL.Image.Image`` when Pillow is
    installed (else the encoded ``bytes``), ``audio`` → ``bytes`` of the encoded file, lists of
    those element-wise, everything else as the JSON value. ``cache`` is ``"hit"``,
    ``"partial"`` or ``"miss"``.
    """

    outputs: dict[str, Any] = Field(default_factory=dict)
    types: dict[str, str] = Field(default_factory=dict)
    steps: dict[str, StepResult] = Field(default_factory=dict)
    request_id: str | None = None
    cache: str | None = None

    @property
    def explanations(self) -> dict[str, dict]:
        """Outputs that explain a fused ranking (``fuse`` with ``explain: true``), by name;
        ``fusion_client.explain.explanation_table`` renders one."""
        from fusion_client.explain import explanations

        return explanations(self.outputs)


class CallResult(_Model):
    """Result of ``call``: one task of one model."""

    outputs: dict[str, Any] = Field(default_factory=dict)
    types: dict[str, str] = Field(default_factory=dict)
    model: str | None = None
    task: str | None = None
    ms: float | None = None
    cached: bool = False
    coalesced: bool = False
    request_id: str | None = None


class BatchResult(_Model):
    """Result of ``call_many`` / ``embed``: one task of one model over a list, as one batch.

    ``outputs[i]`` and ``cached[i]`` belong to the ``i``-th item sent."""

    outputs: list[dict[str, Any]] = Field(default_factory=list)
    cached: list[bool] = Field(default_factory=list)
    types: dict[str, str] = Field(default_factory=dict)
    model: str | None = None
    task: str | None = None
    ms: float | None = None
    request_id: str | None = None


class CacheStats(_Model):
    """Cache counters of the gateway (``GET /v1/cache/stats``)."""

    backend: str | None = None
    hits: int = 0
    misses: int = 0
    stores: int = 0
    coalesced: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    per_task: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def hit_rate(self) -> float | None:
        """hits / (hits + misses), or ``None`` before the first lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else None


class StartEvent(_Model):
    """A step began (stream event ``start``): its ``when:`` held and what it needs is done.

    Sent for a step answered from the step cache too (the look-up may wait on the same
    computation in flight); never for a skipped step, nor when the whole pipeline's answer
    came from the cache. Its :class:`StepEvent` follows. ``model`` is ``None`` for a built-in
    step (``fuse``, ``template``). Gateways before this event never send it."""

    type: Literal["start"] = "start"
    step: str
    model: str | None = None
    task: str | None = None


class StepEvent(_Model):
    """A step finished (stream event ``step``)."""

    type: Literal["step"] = "step"
    step: str
    ms: float | None = None
    cached: bool = False
    coalesced: bool = False
    skipped: bool = False
    uncached: str | None = None  # why a computed step was not cached (a sampled answer)


class TokenEvent(_Model):
    """Text a language-model step just generated (stream event ``token``); a cached answer
    is replayed as such events too."""

    type: Literal["token"] = "token"
    step: str | None = None
    text: str = ""


class ProgressEvent(_Model):
    """Progress inside a long step, e.g. diffusion denoising (stream event ``progress``)."""

    type: Literal["progress"] = "progress"
    step: str | None = None
    progress: float = 0
    total: float | None = None

    @property
    def fraction(self) -> float | None:
        """progress / total in [0, 1], or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.progress / self.total))


class ResultEvent(_Model):
    """The final event of a stream, carrying the same result ``run`` returns."""

    type: Literal["result"] = "result"
    result: PipelineResult


Event = StartEvent | StepEvent | ProgressEvent | TokenEvent | ResultEvent
