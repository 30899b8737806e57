"""What the executor and its callers share: the model and cache protocols it runs against,
the per-request cache policy, and the reports a run answers with.

Apart from ``executor`` so the HTTP routes, batching and gathering name these without reaching
into the run loop.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Event = dict[str, Any]
EventSink = Callable[[Event], Awaitable[None] | None]


class ModelCaller(Protocol):
    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, model: str, task: str, inputs: dict[str, Any]) -> AsyncIterator[Event]:
        """Yield ``{"progress": {"step", "total"}}`` events, then ``{"result": outputs}``."""
        ...


class StepStore(Protocol):
    """What the executor needs from a cache (``fusion.cache.StepCache`` provides it)."""

    def step_key(self, fingerprint: str, task: str, inputs: dict[str, Any]) -> str: ...

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[dict]], *,
                             ttl_s: float | None = None, read: bool = True, write: bool = True,
                             labels: tuple[str, str] = ("", "")) -> tuple[dict, Any]:
        """The value and how it was had: an object with ``cached`` and ``coalesced``."""
        ...


@dataclass(frozen=True)
class CachePolicy:
    """Per request, from ``Cache-Control``: no-cache → read=False; no-store → neither."""

    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CachePolicy:
        directives = {d.strip().lower() for d in (value or "").split(",")}
        if "no-store" in directives:
            return cls(read=False, write=False)
        if "no-cache" in directives:
            return cls(read=False, write=True)
        return cls()


@dataclass
class StepReport:
    ms: float = 0.0
    cached: bool = False
    coalesced: bool = False
    skipped: bool = False
    uncached: str | None = None  # why a computed step was not cached (a sampled completion)


@dataclass
class RunResult:
    outputs: dict[str, Any]
    steps: dict[str, StepReport] = field(default_factory=dict)
    # per fuse step: its sources' rankings and how they were fused (recorded for feedback)
    fused: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cache(self) -> str:
        """``hit`` when every step that ran came from the cache, ``partial``, or ``miss``."""
        ran = [s for s in self.steps.values() if not s.skipped]
        hits = sum(s.cached for s in ran)
        return "hit" if ran and hits == len(ran) else "partial" if hits else "miss"

    def steps_dict(self) -> dict[str, dict]:
        return {k: asdict(v) for k, v in self.steps.items()}


async def emit(sink: EventSink | None, event: Event) -> None:
    if sink is not None:
        res = sink(event)
        if inspect.isawaitable(res):
            await res
