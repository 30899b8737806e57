"""Run a validated pipeline graph: each step starts as soon as its inputs are ready.

The executor knows models only through ``ModelCaller`` (``call`` and ``stream``), and the
cache only through ``StepStore`` — so it is unit-tested with fakes, with no Ray and no torch.
In Serve, the caller is a table of ``DeploymentHandle``s (``fusion.serve.ingress``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from fusion.cache.keys import digest
from fusion.core.admission import Admission, model_steps, shared_steps
from fusion.core.rank import rank_step
from fusion.core.run_types import (
    CachePolicy,
    EventSink,
    ModelCaller,
    RunResult,
    StepReport,
    StepStore,
    emit,
)
from fusion.errors import BadInput, FusionError, NotFound, StepFailed, StepTimeout, unwrap
from fusion.observe import NULL_OBSERVER, Observer, outcome_of
from fusion.pipeline.fuse import fuse_explained
from fusion.pipeline.learn import fuse_with_profile
from fusion.pipeline.rank import RANK_TASK_NAME
from fusion.pipeline.spec import PipelineSpec, StepSpec, builtin_task
from fusion.pipeline.template import TEMPLATE_TASK, fill_template
from fusion.tasks import ModelTasks, TaskSpec
from fusion.values import check_inputs, check_value


class Executor:
    """Runs pipelines and single model calls, caching every step under a content address."""

    gather: Any = None  # a ``fusion.core.gather.Gatherer``, set by the Gateway when one is on
    # (pipeline, fuse step) -> its active fusion profile ``(id, params)`` or None: set by the
    # Gateway (``fusion.core.learning``); None here means hand-written weights everywhere
    profiles: Callable[[str, str], tuple[str, dict] | None] | None = None

    def __init__(self, caller: ModelCaller, models: dict[str, ModelTasks],
                 fingerprint: Callable[[str], Awaitable[str]],
                 cache: StepStore | None = None, default_ttl_s: float | None = None,
                 admission: Admission | None = None,
                 observer: Observer = NULL_OBSERVER) -> None:
        self.caller = caller
        self.admission = admission or Admission(1 << 30)
        self.observer = observer
        self.models = models
        self.fingerprint = fingerprint
        self.cache = cache
        self.default_ttl_s = default_ttl_s

    def _joins(self, policy: CachePolicy) -> bool:
        """Identical work joins one computation in flight only with a cache and the default
        policy (``StepStore``): then it needs one model slot between all of it."""
        return self.cache is not None and policy.read and policy.write

    def task_spec(self, model: str, task: str) -> TaskSpec:
        if model not in self.models:
            raise NotFound(f"unknown model {model!r}; served: {sorted(self.models)}", "model")
        mt = self.models[model]
        if task not in mt.tasks:
            raise NotFound(f"model {model!r} has no task {task!r}; it serves "
                           f"{list(mt.tasks)}", "task")
        return mt.spec(task)

    async def call_model(self, model: str, task: str, inputs: dict[str, Any],
                         policy: CachePolicy = CachePolicy(), *, ttl_s: float | None = None,
                         use_cache: bool = True, timeout_s: float | None = None,
                         on_event: EventSink | None = None, step: str = "",
                         deadline: float | None = None) -> tuple[dict, StepReport]:
        """One cached model call; inputs are checked against the task catalog first.

        ``deadline`` (``time.monotonic`` seconds) is the request's: the call gets what is left
        of it (or ``timeout_s`` if smaller), and is refused, uncalled, if nothing is left.
        """
        spec = self.task_spec(model, task)
        checked = check_inputs(spec, inputs, where=f"{model}/{task}",
                               prefix=f"steps.{step}." if step else "inputs.")
        uncached = spec.uncacheable(checked) if spec.uncacheable else None
        use_cache = use_cache and uncached is None
        streams = on_event is not None and (spec.streams_progress or spec.streams_tokens)
        by_deadline = False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.admission.expired_before_start(
                    _where(step, model, task), f"steps.{step}" if step else None)
            if timeout_s is None or left < timeout_s:
                timeout_s, by_deadline = left, True
        reservation = None
        if not step:  # a direct call (a pipeline's steps hold the slots of their run)
            joins = use_cache and self._joins(policy)
            reservation = self.admission.reserve({"": model}, shared={
                "": digest([model, task, checked])} if joins else None)
        started = time.perf_counter()

        async def compute() -> dict:
            with self.observer.span(f"model {model}/{task}", {"fusion.model": model,
                                                              "fusion.task": task}):
                if streams:
                    return await self._stream(model, task, checked, on_event, step or task)
                return await self.caller.call(model, task, checked)

        try:
            result, report = await self._cached_call(model, task, checked, compute, policy,
                                                     ttl_s, use_cache, timeout_s, step,
                                                     started, by_deadline)
            report.uncached = uncached
            if streams and spec.streams_tokens and (report.cached or report.coalesced):
                await replay_tokens(on_event, step or task, result.get("text", ""))
            return result, report
        except Exception as exc:
            err = unwrap(exc)  # Ray wraps a replica's exception; the client wants the original
            if not isinstance(err, FusionError) or step:
                raise  # a step's errors are qualified by ``step_error``
            if err.field and not err.field.startswith(("inputs.", "steps.")):
                err.field = f"inputs.{err.field}"  # a replica names its own input
            raise err from None
        finally:
            if reservation is not None:
                reservation.release_all()

    async def _cached_call(self, model: str, task: str, checked: dict, compute, policy,
                           ttl_s: float | None, use_cache: bool, timeout_s: float | None,
                           step: str, started: float, by_deadline: bool = False
                           ) -> tuple[dict, StepReport]:
        cached = coalesced = False
        try:
            if self.gather is not None and self.gather.takes(model, task):
                job = self.gather.submit(model, task, checked,
                                         policy if use_cache else CachePolicy(False, False),
                                         ttl_s or self.default_ttl_s)
                result, outcome = await asyncio.wait_for(job, timeout_s)
                cached, coalesced = outcome.cached, outcome.coalesced
            elif self.cache is not None and use_cache and (policy.read or policy.write):
                key = self.cache.step_key(await self.fingerprint(model), task, checked)
                job = self.cache.get_or_compute(
                    key, compute, ttl_s=ttl_s or self.default_ttl_s, read=policy.read,
                    write=policy.write, labels=(model, task))
                with self.observer.span("cache", {"fusion.model": model,
                                                  "fusion.task": task}) as span:
                    result, outcome = await asyncio.wait_for(job, timeout_s)
                    if span is not None:
                        span.set_attribute("fusion.cache.outcome", "coalesced" if
                                           outcome.coalesced else "hit" if outcome.cached
                                           else "miss")
                cached, coalesced = outcome.cached, outcome.coalesced
            else:
                result = await asyncio.wait_for(compute(), timeout_s)
        except asyncio.TimeoutError:
            limit = (f"the request's deadline (X-Request-Timeout; {timeout_s:.3g}s were left)"
                     if by_deadline else f"{timeout_s}s")
            raise StepTimeout(f"{_where(step, model, task)} did not finish within {limit}",
                              field=f"steps.{step}" if step else None) from None
        return result, StepReport(round((time.perf_counter() - started) * 1000, 3), cached,
                                  coalesced)

    async def _stream(self, model: str, task: str, inputs: dict, on_event: EventSink,
                      step: str) -> dict:
        result: dict | None = None
        async for event in self.caller.stream(model, task, inputs):
            if "progress" in event:
                p = event["progress"]
                await emit(on_event, {"event": "progress", "step": step,
                                       "progress": p["step"], "total": p["total"]})
            elif "token" in event:
                await emit(on_event, {"event": "token", "step": step, "text": event["token"]})
            elif "result" in event:
                result = event["result"]
        if result is None:
            raise StepFailed(f"{_where(step, model, task)} ended its stream without a result")
        return result

    async def run(self, spec: PipelineSpec, inputs: dict[str, Any],
                  policy: CachePolicy = CachePolicy(),
                  on_event: EventSink | None = None, deadline: float | None = None
                  ) -> RunResult:
        return await self.run_checked(spec, check_pipeline_inputs(spec, inputs), policy,
                                      on_event, deadline)

    async def run_checked(self, spec: PipelineSpec, values: dict[str, Any],
                          policy: CachePolicy = CachePolicy(),
                          on_event: EventSink | None = None, deadline: float | None = None
                          ) -> RunResult:
        """``run`` for inputs that ``check_pipeline_inputs`` has already checked.

        Before any step starts, the run reserves a slot of every model its steps may call
        (``Admission.reserve``): a full one refuses the whole run with 503 now, rather than
        after the steps before it spent their model time. Each step frees its slot as it ends.
        """
        # identical runs join one computation per step (a cached step whose answer is never
        # sampled, with the default policy: ``StepStore``), so they share its model slot
        shared = shared_steps(spec, values, lambda s: s.cache and self.task_spec(
            s.model, s.task).uncacheable is None) if self._joins(policy) else None
        reservation = self.admission.reserve(model_steps(spec), spec.name, shared)
        results: dict[str, dict | None] = {}
        reports: dict[str, StepReport] = {}
        fused: dict[str, dict[str, Any]] = {}
        tasks: dict[str, asyncio.Task] = {}
        for name, step in spec.steps.items():  # topological order: deps exist already
            deps = [tasks[d] for d in step.needs]
            tasks[name] = asyncio.create_task(
                self._run_step(step, deps, values, results, reports, policy, on_event,
                               deadline, spec.name, fused))
            # done, failed, skipped or cancelled (even before it started): its slot is freed
            tasks[name].add_done_callback(lambda _, n=name: reservation.release(n))
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        finally:
            reservation.release_all()
        outputs = {}
        for name, alternatives in spec.outputs.items():
            outputs[name] = next((v for r in alternatives
                                  if (v := r.resolve(values, results)) is not None), None)
        return RunResult(outputs, {n: reports[n] for n in spec.steps}, fused)

    async def _run_step(self, step: StepSpec, deps: list[asyncio.Task], values: dict,
                        results: dict, reports: dict, policy: CachePolicy,
                        on_event: EventSink | None, deadline: float | None,
                        pipeline: str = "", fused: dict | None = None) -> None:
        for dep in deps:
            await dep
        started = time.perf_counter()
        with self.observer.span(f"step {step.name}", {"fusion.pipeline": pipeline,
                                                      "fusion.step": step.name}):
            try:
                await self._step_body(step, values, results, reports, policy, on_event,
                                      deadline, pipeline, fused)
            except asyncio.CancelledError:
                raise
            except FusionError as err:
                self.observer.step(pipeline, step.name, step.uses_model or step.task, step.task,
                                   "error", time.perf_counter() - started, err.status)
                raise
        report = reports[step.name]
        self.observer.step(pipeline, step.name, step.uses_model or step.task, step.task,
                           outcome_of(report), report.ms / 1000)

    async def _step_body(self, step: StepSpec, values: dict, results: dict, reports: dict,
                         policy: CachePolicy, on_event: EventSink | None,
                         deadline: float | None, pipeline: str = "",
                         fused: dict | None = None) -> None:
        inputs = {k: b.resolve(values, results) for k, b in step.bindings.items()}
        if (step.when is not None and not step.when.holds(values, results)) or \
                self._starved(step, inputs):
            results[step.name] = None
            reports[step.name] = report = StepReport(skipped=True)
            await emit(on_event, {"event": "step", "step": step.name, **asdict(report)})
            return
        inputs = {k: v for k, v in inputs.items() if v is not None}
        # the step begins: its condition held. Sent before the cache look-up too, which can
        # wait on an identical computation in flight (coalesced); ``step`` says how it went
        await emit(on_event, {"event": "start", "step": step.name, "model": step.model,
                              "task": step.task})
        try:
            if step.model is None and step.task == TEMPLATE_TASK:
                started = time.perf_counter()
                result = {"text": fill_template(step.template or "", inputs)}
                report = StepReport(round((time.perf_counter() - started) * 1000, 3))
            elif step.model is None and step.task == RANK_TASK_NAME:
                started = time.perf_counter()  # its documents' scores are cached one by one
                result = await rank_step(self, inputs, policy)
                report = StepReport(round((time.perf_counter() - started) * 1000, 3))
            elif step.model is None:
                started = time.perf_counter()
                labels, explanation = self._fuse(pipeline, step, inputs, fused)
                result = {"labels": labels,
                          "explanation": explanation if inputs.get("explain") else None}
                report = StepReport(round((time.perf_counter() - started) * 1000, 3))
            else:
                result, report = await self.call_model(
                    step.model, step.task, inputs, policy, ttl_s=step.cache_ttl_s,
                    use_cache=step.cache, timeout_s=step.timeout_s, on_event=on_event,
                    step=step.name, deadline=deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # name the step; keep a client error a client error
            raise step_error(step, exc) from exc
        results[step.name], reports[step.name] = result, report
        await emit(on_event, {"event": "step", "step": step.name, **asdict(report)})

    def _fuse(self, pipeline: str, step: StepSpec, inputs: dict[str, Any],
              fused: dict | None) -> tuple[list[dict], dict[str, Any]]:
        """A fuse step: under the step's active fusion profile if it has one (fitted on
        these sources), else with the hand-written weights; recorded in ``fused``."""
        rankings, names = list(inputs["labels"]), source_names(step)
        active = self.profiles(pipeline, step.name) if self.profiles and pipeline else None
        if active is not None and set(names) <= set(active[1]["sources"]):
            labels, explanation = fuse_with_profile(active[0], active[1], rankings, names)
        else:
            active = None
            labels, explanation = fuse_explained(
                rankings, inputs.get("weights"), inputs.get("method", "weighted_mean"), names)
            explanation["profile"] = None
        if fused is not None:
            fused[step.name] = {"sources": names, "rankings": rankings,
                                "weights": inputs.get("weights"),
                                "method": inputs.get("method", "weighted_mean"),
                                "profile": active[0] if active else None,
                                "top": labels[0]["label"] if labels else None}
        return labels, explanation

    def _starved(self, step: StepSpec, inputs: dict[str, Any]) -> bool:
        """A required input is missing because the step producing it was skipped."""
        spec = builtin_task(step) if step.model is None else \
            self.task_spec(step.model, step.task)
        for key, b in step.bindings.items():
            if inputs.get(key) is None and spec.inputs[key].required:
                if b.ref is not None and b.ref.kind == "steps":
                    return True
                if b.ref is not None:
                    raise BadInput(f"input {b.ref.name!r} is required by step {step.name!r}",
                                   field=f"inputs.{b.ref.name}")
        if step.model is None and step.task not in (TEMPLATE_TASK, RANK_TASK_NAME):
            return not any(inputs.get("labels") or [])  # fuse: nothing to fuse
        return False


_CHUNK = re.compile(r"\s*\S+\s*|\s+")


async def replay_tokens(on_event: EventSink | None, step: str, text: str) -> None:
    """A cached (or coalesced) answer of a token-streaming task, sent as a stream too: one
    ``token`` event per word, so a client reads the same events either way."""
    for chunk in _CHUNK.findall(text):
        await emit(on_event, {"event": "token", "step": step, "text": chunk})


def check_pipeline_inputs(spec: PipelineSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise BadInput("inputs must be an object", field="inputs")
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        raise BadInput(f"pipeline {spec.name!r} has no input {unknown[0]!r}; it takes "
                       f"{sorted(spec.inputs)}", field=f"inputs.{unknown[0]}")
    values: dict[str, Any] = {}
    for name, decl in spec.inputs.items():
        if inputs.get(name) is None:
            if decl.required:
                raise BadInput(f"missing required input {name!r}", field=f"inputs.{name}")
            values[name] = decl.default
        else:
            values[name] = check_value(decl.type, inputs[name], f"inputs.{name}")
    return values


def step_error(step: StepSpec, exc: BaseException) -> FusionError:
    """The error a client sees for a failed step: same class, the step named, and the field
    traced back to the pipeline input it came from (``inputs.image``) where there is one."""
    err = unwrap(exc)
    if not isinstance(err, FusionError):
        return StepFailed(f"step {step.name!r} failed: {type(err).__name__}: {err}",
                          field=f"steps.{step.name}")
    field = err.field
    if field and not field.startswith(("inputs.", "steps.")):
        name = field.split("[")[0].split(".")[0]
        binding = step.bindings.get(name)
        ref = binding.ref if binding is not None else None
        if ref is not None and ref.kind == "inputs" and not ref.path:
            field = f"inputs.{ref.name}{field[len(name):]}"
        else:
            field = f"steps.{step.name}.{field}"
    message = err.message if err.message.startswith(f"step {step.name!r}") else \
        f"step {step.name!r}: {err.message}"
    qualified = type(err)(message, field=field)
    for name, value in vars(err).items():  # what a subclass carries (Overloaded: retry_after_s)
        if name not in ("message", "field"):
            setattr(qualified, name, value)
    return qualified


def _where(step: str, model: str, task: str) -> str:
    return f"step {step!r}" if step else f"{model}/{task}"


def source_names(step: StepSpec) -> list[str]:
    """Names of a fuse step's sources, for its explanation: the step each ranking comes from
    (``clip`` for ``$steps.clip.labels``), else its position."""
    binding = step.bindings["labels"]
    items = binding.items if binding.items is not None else ()
    names = [b.ref.name if b.ref is not None else f"labels[{i}]" for i, b in enumerate(items)]
    return [n if names.count(n) == 1 else f"{n}[{i}]" for i, n in enumerate(names)]
