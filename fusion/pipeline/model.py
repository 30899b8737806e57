"""The frozen form of a checked pipeline spec (``PipelineSpec`` and its parts) and the
signatures of the steps that run in the router itself (``fuse``, ``template``).

The executor and the gateway read only these; building them from YAML data is
``fusion.pipeline.check``'s job, finding the files ``fusion.pipeline.spec``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fusion.pipeline.rank import RANK_TASK, RANK_TASK_NAME
from fusion.pipeline.refs import Condition, Ref
from fusion.pipeline.template import TEMPLATE_TASK, template_task
from fusion.tasks import Param, TaskSpec

FUSE_TASK = TaskSpec(
    {"labels": Param("list[labels]"), "weights": Param("list[float]", False, None),
     "method": Param("text", False, "weighted_mean"), "explain": Param("bool", False, False)},
    {"labels": "labels", "explanation": "json"}, batched=False,
    doc="Combine label rankings of several steps: weighted mean of normalised scores or "
        "reciprocal rank fusion; with explain, each source's contribution to each label "
        "and the sources' agreement (fusion.pipeline.fuse).")
FUSE_METHODS = ("weighted_mean", "rank")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str
    required: bool = True
    default: Any = None
    description: str = ""


@dataclass(frozen=True)
class Binding:
    """A task input: a reference, a literal, or a list mixing both (for ``fuse``)."""

    ref: Ref | None = None
    literal: Any = None
    items: tuple[Binding, ...] | None = None

    def resolve(self, inputs: dict[str, Any], steps: dict[str, Any]) -> Any:
        if self.items is not None:
            return [b.resolve(inputs, steps) for b in self.items]
        if self.ref is not None:
            return self.ref.resolve(inputs, steps)
        return self.literal

    def refs(self) -> list[Ref]:
        if self.items is not None:
            return [r for b in self.items for r in b.refs()]
        return [self.ref] if self.ref else []


@dataclass(frozen=True)
class StepSpec:
    name: str
    model: str | None  # None for the built-in steps (``fuse``, ``template``, ``rank``)
    task: str
    bindings: dict[str, Binding]
    outputs: dict[str, str]
    needs: tuple[str, ...]
    when: Condition | None = None
    timeout_s: float | None = None
    cache: bool = True
    cache_ttl_s: float | None = None
    streams_progress: bool = False
    template: str | None = None  # the built-in ``template`` step (``fusion.pipeline.template``)

    @property
    def uses_model(self) -> str | None:
        """The model this step calls: its own, or the one a built-in ``rank`` step ranks
        with (so its fingerprint keys the pipeline's cache and its queue admits the run)."""
        if self.model or self.task != RANK_TASK_NAME or "model" not in self.bindings:
            return self.model
        return self.bindings["model"].literal


def builtin_task(step: StepSpec) -> TaskSpec:
    """The signature of a step that runs in the router: ``template``, ``rank`` or ``fuse``."""
    if step.task == TEMPLATE_TASK:
        return template_task(list(step.bindings))
    return RANK_TASK if step.task == RANK_TASK_NAME else FUSE_TASK


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str
    inputs: dict[str, InputSpec]
    steps: dict[str, StepSpec]  # in a topological order
    outputs: dict[str, tuple[Ref, ...]]  # alternatives: the first that is not null wins
    output_types: dict[str, str]
    source: str
    digest: str
    cache_ttl_s: float | None = None
    max_in_flight: int | None = None  # runs of this pipeline one router replica admits at once
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {n: {"type": i.type, "required": i.required, "default": i.default,
                           "description": i.description} for n, i in self.inputs.items()},
            "outputs": dict(self.output_types),
            "steps": {s.name: {"model": s.uses_model, "task": s.task, "needs": list(s.needs),
                               "when": s.when.ref.text if s.when else None}
                      for s in self.steps.values()},
        }

