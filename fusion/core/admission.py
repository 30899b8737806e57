"""Admission control and deadlines: the one place where the router refuses work.

An overloaded gateway must say so at once (503 ``overloaded`` with a ``Retry-After`` worth
waiting) rather than answer late: a request that queues past its client's timeout costs the
model time and still fails. Every refusal is built here — over the router's in-flight limit,
a model deployment's queue full (Serve's backpressure), a deadline that has already passed —
so metrics hooks (``Admission.listeners``) see each one, and ``Retry-After`` is always computed
the same way: the backlog ahead of the caller divided by the rate at which that queue has been
draining lately.

A pipeline is admitted as a whole: every model one of its steps may call (``when:`` steps
included — their condition is unknown until earlier steps ran) must have room in its queue,
and the run holds one slot of it per step until that step ends. A later step's full model
thus refuses the run before its first step spent any model time, instead of after.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion.bundles import bundle_groups, bundle_size
from fusion.cache.keys import digest
from fusion.errors import BadInput, Overloaded, StepTimeout

if TYPE_CHECKING:
    from fusion.config import ModelConfig
    from fusion.pipeline.model import PipelineSpec, StepSpec

# hook(kind, key, detail): kind is "rejected" (a 503) or "expired" (a deadline refused work)
AdmissionHook = Callable[[str, str, dict[str, Any]], None]

TIMEOUT_HEADER = "x-request-timeout"
MAX_REQUEST_TIMEOUT_S = 3600.0
MIN_RETRY_AFTER_S = 0.05
MAX_RETRY_AFTER_S = 30.0
DEFAULT_RETRY_AFTER_S = 1.0  # before anything has finished, there is no rate to go by


class DrainRate:
    """Completions per second over the last ``window_s`` (at most ``max_events`` kept).

    A sliding window, not an average since start: after a burst or a slow-down the estimate
    follows within one window, which is what a client deciding when to retry needs.
    """

    def __init__(self, window_s: float = 10.0, max_events: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._done: deque[float] = deque(maxlen=max_events)

    def record(self) -> None:
        self._done.append(self.clock())

    def rate(self) -> float | None:
        """Completions per second, or ``None`` while fewer than two fall in the window."""
        now = self.clock()
        while self._done and now - self._done[0] > self.window_s:
            self._done.popleft()
        if len(self._done) < 2:
            return None
        span = max(now - self._done[0], 1e-3)
        return len(self._done) / span


def retry_after_s(backlog: int, rate: float | None) -> float:
    """Seconds until ``backlog`` requests ahead of a caller have drained at ``rate``."""
    if rate is None or rate <= 0:
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, max(backlog, 1) / rate))


@dataclass(frozen=True)
class ModelQueue:
    """How many calls one router replica may have outstanding with a model's deployment
    before Serve refuses the next (``BackPressureError``): the queue Serve keeps per caller
    (``max_queued_requests``) plus the running slots of every replica (``max_ongoing_requests``
    each). An upper bound — other router replicas use running slots too, and an autoscaled
    deployment may run fewer than ``max_replicas`` — so a call can still meet Serve's refusal
    (``Admission.model_full``), which then refuses new work for that model here too."""

    deployment: str  # the model's own, or its bundle's (members share one queue)
    capacity: int | None  # None: unbounded (max_queued_requests -1)


def model_queues(models: Iterable[ModelConfig]) -> dict[str, ModelQueue]:
    """Model name → its deployment's queue bound, from the serve config."""
    models = list(models)
    groups = bundle_groups(models)
    table: dict[str, ModelQueue] = {}
    for m in models:
        if m.bundle:
            size = bundle_size(groups[m.bundle])
            queued, ongoing, replicas = (size.max_queued_requests, size.max_ongoing_requests,
                                         size.num_replicas)
        else:
            queued, ongoing = m.max_queued_requests or 0, m.max_ongoing_requests or 1
            replicas = m.autoscaling.max_replicas if m.autoscaling else m.num_replicas
        table[m.name] = ModelQueue(m.bundle or m.name,
                                   None if queued == -1 else queued + ongoing * replicas)
    return table


def model_steps(spec: PipelineSpec) -> dict[str, str]:
    """Step name → model, for every step of ``spec`` that may call a model (``when:`` steps
    too; ``fuse`` and ``template`` run in the router and need no queue; ``rank`` calls the
    model it ranks with)."""
    return {s.name: s.uses_model for s in spec.steps.values() if s.uses_model}


def shared_steps(spec: PipelineSpec, values: Mapping[str, Any],
                 joins: Callable[[StepSpec], bool]) -> dict[str, str]:
    """Step → a key that the same step of an identical run (same pipeline, same inputs) has
    too, for the model steps that ``joins`` says join one computation in flight: such runs
    need one slot per step between them (``Admission.reserve``)."""
    run = digest([spec.digest, dict(values)])
    return {s.name: f"{spec.name}:{run}:{s.name}" for s in spec.steps.values()
            if s.model and joins(s)}


class Reservation:
    """The model slots one admitted request holds: one per step that may call a model.

    Each is released when its step's task ends (done, failed, skipped, or cancelled — even
    before it started), and whatever is left when the run ends, so no outcome leaks a slot.
    Releasing twice is harmless.
    """

    def __init__(self, admission: Admission, held: dict[str, tuple[str, str | None]]) -> None:
        self._admission = admission
        self._held = held  # step → (deployment, share key or None)

    def release(self, step: str) -> None:
        held = self._held.pop(step, None)
        if held is not None:
            self._admission._unhold(*held)

    def release_all(self) -> None:
        for step in list(self._held):
            self.release(step)


class Admission:
    """Bounds the requests one router replica works on, in total and per pipeline.

    ``max_in_flight`` is the total; ``pipeline_limits`` maps a pipeline name to its own bound
    (a pipeline not named shares only the total). Direct model calls (``/v1/models/...`` and
    the OpenAI routes) count under the key ``model:<name>`` against the total. Past a bound
    the request is refused with ``Overloaded`` at once — nothing waits in the router.

    ``model_queues`` bounds the model calls this replica has outstanding per deployment
    (``ModelQueue``); ``pipeline_models`` names the models each pipeline's steps may call
    (``model_steps``), so ``check(pipeline)`` refuses a run one of whose models is full.
    """

    def __init__(self, max_in_flight: int, pipeline_limits: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 model_queues: Mapping[str, ModelQueue] | None = None,
                 pipeline_models: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.limits = dict(pipeline_limits or {})
        self.clock = clock
        self.in_flight = 0
        self.by_key: dict[str, int] = {}
        self.drained = DrainRate(clock=clock)
        self._drained_by_key: dict[str, DrainRate] = {}
        self._model_drain: dict[str, DrainRate] = {}
        self.listeners: list[AdmissionHook] = []
        self.rejected = 0
        self.expired = 0
        self.queues = dict(model_queues or {})
        self._capacity = {q.deployment: q.capacity for q in self.queues.values()}
        self.pipeline_models = {k: dict(v) for k, v in (pipeline_models or {}).items()}
        self.model_held: dict[str, int] = {}  # deployment → slots held by admitted work
        self._shared: dict[str, int] = {}  # share key → how many hold that one slot
        self._full_until: dict[str, float] = {}  # deployment → Serve refused it until then

    def _drain(self, table: dict[str, DrainRate], key: str) -> DrainRate:
        if key not in table:
            table[key] = DrainRate(clock=self.clock)
        return table[key]

    def _notify(self, kind: str, key: str, detail: dict[str, Any]) -> None:
        for hook in list(self.listeners):
            with suppress(Exception):  # a metrics hook must never turn a refusal into a 500
                hook(kind, key, detail)

    def refuse(self, key: str, message: str, backlog: int, rate: float | None) -> Overloaded:
        """The 503 for ``key``, with Retry-After from ``backlog`` and ``rate``; counted."""
        self.rejected += 1
        after = retry_after_s(backlog, rate)
        self._notify("rejected", key, {"backlog": backlog, "retry_after_s": after})
        return Overloaded(message, retry_after_s=after)

    def check(self, key: str) -> None:
        """Raise the 503 that ``admit(key)`` would raise now; take nothing. For a pipeline,
        that includes a full queue of any model its steps may call."""
        limit = self.limits.get(key)
        held = self.by_key.get(key, 0)
        if limit is not None and held >= limit:
            raise self.refuse(key, f"{key!r} is at its limit of {limit} requests in flight; "
                              "retry after the Retry-After header's delay", held - limit + 1,
                              self._drain(self._drained_by_key, key).rate())
        if self.in_flight >= self.max_in_flight:
            raise self.refuse(key, f"the gateway is at its limit of {self.max_in_flight} "
                              "requests in flight; retry after the Retry-After header's delay",
                              self.in_flight - self.max_in_flight + 1, self.drained.rate())
        model = _direct_model(key)
        needs = {"": model} if model else self.pipeline_models.get(key)
        if needs:
            self._check_models(needs, None if model else key)

    @contextmanager
    def admit(self, key: str) -> Iterator[None]:
        """Hold one slot of the total and of ``key``'s own limit while the block runs. The
        model slots of the request are taken by ``reserve`` once its inputs are known (the
        executor's), so that identical requests, which share one computation, share them."""
        self.check(key)
        held = self.by_key.get(key, 0)
        self.in_flight += 1
        self.by_key[key] = held + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.by_key[key] - 1
            if left:
                self.by_key[key] = left
            else:
                del self.by_key[key]
            self.drained.record()
            if key in self.limits:
                self._drain(self._drained_by_key, key).record()

    # -- model deployments: Serve bounds their queues; we refuse before a step would meet
    # a full one, and turn Serve's own refusal into the same 503 --
    def _deployment(self, model: str) -> str:
        queue = self.queues.get(model)
        return queue.deployment if queue is not None else model

    def reserve(self, needs: Mapping[str, str], pipeline: str | None = None,
                shared: Mapping[str, str] | None = None) -> Reservation:
        """Take one slot of each step's model (``needs``: step → model), or raise the 503
        naming the first full one and take nothing. Check and take happen with no ``await``
        between them, so concurrent runs on this event loop cannot both take the last slot.

        ``shared`` maps a step to a key that identical work has too (same inputs, a cache
        that joins computations in flight): all holders of one key hold one slot, as they
        will make one model call between them.
        """
        shared = shared or {}
        self._check_models({s: m for s, m in needs.items() if shared.get(s) not in
                            self._shared}, pipeline)
        held: dict[str, tuple[str, str | None]] = {}
        for step, model in needs.items():
            deployment, share = self._deployment(model), shared.get(step)
            held[step] = (deployment, share)
            if share is not None and share in self._shared:
                self._shared[share] += 1
                continue
            if share is not None:
                self._shared[share] = 1
            self.model_held[deployment] = self.model_held.get(deployment, 0) + 1
        return Reservation(self, held)

    def _unhold(self, deployment: str, share: str | None) -> None:
        if share is not None:
            left = self._shared.pop(share, 1) - 1
            if left > 0:
                self._shared[share] = left
                return
        left = self.model_held.get(deployment, 0) - 1
        if left > 0:
            self.model_held[deployment] = left
        else:
            self.model_held.pop(deployment, None)

    def _check_models(self, needs: Mapping[str, str], pipeline: str | None) -> None:
        wanted: dict[str, int] = {}
        first: dict[str, tuple[str, str]] = {}  # deployment → (step, model), for the message
        for step, model in needs.items():
            deployment = self._deployment(model)
            wanted[deployment] = wanted.get(deployment, 0) + 1
            first.setdefault(deployment, (step, model))
        now = self.clock()
        for deployment, n in wanted.items():
            capacity = self._capacity.get(deployment)
            held = self.model_held.get(deployment, 0)
            if self._full_until.get(deployment, 0.0) > now:
                backlog, why = 1, "Serve refused a call to it for a full queue just now"
            elif capacity is not None and held + min(n, capacity) > capacity:
                # a pipeline with more steps on one model than its queue holds still runs
                # when that queue is empty: its steps cannot all be calling at once anyway
                backlog = held + min(n, capacity) - capacity
                why = f"{held} of the {capacity} calls this router replica may queue are taken"
            else:
                continue
            step, model = first[deployment]
            message = f"model {model!r} is at its queue limit ({why}); "
            if pipeline is not None:
                message += (f"pipeline {pipeline!r} (step {step!r}) was refused before any "
                            "step ran; ")
            raise self.refuse(f"model:{model}", message + "retry after the Retry-After "
                              "header's delay", backlog,
                              self._drain(self._model_drain, deployment).rate())

    def model_done(self, model: str) -> None:
        """A call to ``model`` finished (either way): one more point for its drain rate, and
        its queue has room again if Serve had refused it."""
        deployment = self._deployment(model)
        self._drain(self._model_drain, deployment).record()
        self._full_until.pop(deployment, None)

    def model_full(self, model: str, queued: int | None = None) -> Overloaded:
        """The 503 for a model whose deployment queue is full (Serve's BackPressureError).
        Until one of its calls finishes (or the Retry-After passes), new work that needs it
        is refused at admission instead of being sent to meet the same refusal."""
        deployment = self._deployment(model)
        err = self.refuse(f"model:{model}", f"model {model!r} is at its queue limit; retry "
                          "after the Retry-After header's delay", queued or 1,
                          self._drain(self._model_drain, deployment).rate())
        self._full_until[deployment] = self.clock() + err.retry_after_s
        return err

    # -- deadlines --
    def expired_before_start(self, where: str, field: str | None) -> StepTimeout:
        """The 504 for work refused because the request's deadline passed before it began."""
        self.expired += 1
        self._notify("expired", where, {})
        return StepTimeout(f"{where} could not start before the request's deadline "
                           "(X-Request-Timeout) ran out", field=field)


def _direct_model(key: str) -> str | None:
    """The model of a direct call's admission key (``model:<name>``), else ``None``."""
    return key[len("model:"):] if key.startswith("model:") else None


def parse_request_timeout(value: str | None) -> float | None:
    """Seconds from ``X-Request-Timeout`` (``None`` when absent), or a 422 naming the header."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_REQUEST_TIMEOUT_S:
        raise BadInput(f"X-Request-Timeout must be a number of seconds in (0, "
                       f"{MAX_REQUEST_TIMEOUT_S:g}], got {value!r}", field="X-Request-Timeout")
    return seconds


def deadline_from(timeout_s: float | None, clock: Callable[[], float] = time.monotonic
                  ) -> float | None:
    """The monotonic instant a request must be done by (``None``: no deadline)."""
    return None if timeout_s is None else clock() + timeout_s
