"""The gateway's core, free of HTTP and Ray: models, pipelines, executor and cache together.

The FastAPI layer (``fusion.http.app``) turns requests into calls on this object; the Serve
ingress (``fusion.serve.ingress``) builds it with handles to the model deployments. Tests build it
with fake model callers and drive it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any, Protocol

from fusion.cache.keys import digest
from fusion.config import AppConfig
from fusion.core.admission import Admission, model_queues, model_steps
from fusion.core.batch import BatchResult, call_many
from fusion.core.executor import Executor, check_pipeline_inputs
from fusion.core.gather import Gatherer
from fusion.core.learning import FusionLearning
from fusion.core.run_types import CachePolicy, EventSink, RunResult, StepReport, emit
from fusion.core.tenants import Tenants
from fusion.errors import BadInput, FusionError, NotFound, Overloaded, SpecError, StepTimeout
from fusion.observe import NULL_OBSERVER, Observer, outcome_of
from fusion.pipeline.spec import PipelineSpec, load_pipelines
from fusion.tasks import ModelTasks
from fusion.values import check_limits

log = logging.getLogger("fusion.core.gateway")


class ModelBackendClient(Protocol):
    """How the gateway reaches models: Serve handles in production, fakes in unit tests."""

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]: ...

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One call carrying many items of one task; results in order (``fusion.core.batch``)."""
        ...

    def stream(self, model: str, task: str, inputs: dict[str, Any]) -> AsyncIterator[dict]: ...

    async def info(self, model: str) -> dict[str, Any]: ...


def served_tasks(config: AppConfig) -> dict[str, ModelTasks]:
    return {m.name: m.tasks for m in config.models}


class Gateway:
    def __init__(self, config: AppConfig, client: ModelBackendClient, cache: Any = None,
                 pipelines: dict[str, PipelineSpec] | None = None,
                 admission: Admission | None = None,
                 observer: Observer = NULL_OBSERVER) -> None:
        self.config = config
        self.observer = observer
        self.client = client
        self.models = served_tasks(config)
        self.pipelines = pipelines if pipelines is not None else load_pipelines(
            self.models, config.pipeline_dirs, config.pipelines)
        self.cache = cache
        self.tenants = Tenants(config, observer.recorder)
        self._infos: dict[str, dict] = {}
        self._info_lock = asyncio.Lock()
        self.admission = admission or admission_for(config, self.pipelines)
        self.executor = Executor(client, self.models, self.fingerprint, cache,
                                 default_ttl_s=config.cache.ttl_s, admission=self.admission,
                                 observer=observer)
        self.executor.gather = Gatherer.from_config(config, self.executor, observer)
        self.learning = FusionLearning(config, self.pipelines, observer.recorder)
        self.executor.profiles = self.learning.active

    async def model_info(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; served: {sorted(self.models)}", "model")
        if name not in self._infos:
            async with self._info_lock:
                if name not in self._infos:
                    self._infos[name] = await self.client.info(name)
        return self._infos[name]

    async def fingerprint(self, name: str) -> str:
        return (await self.model_info(name))["fingerprint"]

    async def list_models(self) -> list[dict[str, Any]]:
        """Each model's info, with every task's input types (so clients can encode inputs);
        only the models the calling key may use."""
        names = self.tenants.visible_models(self.models)
        infos = await asyncio.gather(*(self.model_info(n) for n in names))
        return [{**info, "inputs": {task: {k: p.type for k, p in
                                           self.models[name].spec(task).inputs.items()}
                                    for task in self.models[name].tasks}}
                for name, info in zip(names, infos, strict=True)]

    def pipeline(self, name: str) -> PipelineSpec:
        if name not in self.pipelines:
            raise NotFound(f"unknown pipeline {name!r}; available: {sorted(self.pipelines)}",
                           "pipeline")
        return self.pipelines[name]

    async def call_model(self, model: str, task: str, inputs: dict[str, Any],
                         policy: CachePolicy = CachePolicy(),
                         on_event: EventSink | None = None,
                         deadline: float | None = None) -> tuple[dict, StepReport]:
        self._check_limits(inputs)
        self.executor.task_spec(model, task)  # an unknown name is a 404, not a 503
        started = time.perf_counter()
        try:
            async with self.tenants.guard("model", model, task) as guard:
                with self.admission.admit(f"model:{model}"):
                    outputs, report = await self.executor.call_model(
                        model, task, inputs, policy, on_event=on_event, deadline=deadline)
                guard.done(cache_hits=int(report.cached),
                           compute_s=0.0 if report.cached else report.ms / 1000,
                           **_tokens(outputs))
        except FusionError as err:
            if err.status != 404:  # a made-up model or task is not a label value
                self.observer.step("", "", model, task, "error",
                                   time.perf_counter() - started, err.status)
            raise
        self.observer.step("", "", model, task, outcome_of(report), report.ms / 1000)
        return outputs, report

    async def call_many(self, model: str, task: str, items: list[Any],
                        policy: CachePolicy = CachePolicy(),
                        deadline: float | None = None) -> BatchResult:
        """Many items of one task as one batch: ``POST /v1/models/{name}/{task}`` with a
        list of inputs, and ``/v1/embeddings`` with a list of texts."""
        limits = self.config.limits
        if not isinstance(items, list) or not items:
            raise BadInput("inputs must be an object or a non-empty list of objects",
                           field="inputs")
        most, knob = self.list_limit(model, task)
        if len(items) > most:
            raise BadInput(f"inputs has {len(items)} items, over the {most} limit "
                           f"(limits.{knob})", field="inputs")
        for i, item in enumerate(items):
            if isinstance(item, dict):
                check_limits(item, limits.max_text_chars, limits.max_list_items,
                             prefix=f"inputs[{i}].")
        self.executor.task_spec(model, task)  # an unknown name is a 404, not a 503
        async with self.tenants.guard("model", model, task, cost=len(items)) as guard:
            batch = await self._call_many(model, task, items, policy, deadline)
            hits = sum(batch.cached)
            guard.done(items=len(items), cache_hits=hits,
                       compute_s=0.0 if hits == len(items) else batch.ms / 1000)
            return batch

    async def _call_many(self, model: str, task: str, items: list[Any], policy: CachePolicy,
                         deadline: float | None) -> BatchResult:
        with self.admission.admit(f"model:{model}"):
            job = call_many(self.executor, model, task, items, policy)
            if deadline is None:
                return await job
            left = deadline - time.monotonic()
            if left <= 0:
                job.close()
                raise self.admission.expired_before_start(f"{model}/{task}", None)
            try:
                return await asyncio.wait_for(job, left)
            except asyncio.TimeoutError:
                raise StepTimeout(f"{model}/{task} did not finish within the request's "
                                  f"deadline (X-Request-Timeout; {left:.3g}s were left)"
                                  ) from None

    def list_limit(self, model: str, task: str) -> tuple[int, str]:
        """The most items one list request may carry, and the knob that sets it: embedding
        tasks take OpenAI's sizes (indexing a document set sends thousands of texts), the
        rest the general list limit."""
        limits = self.config.limits
        mt = self.models.get(model)
        if mt is not None and task in mt.tasks and (
                "embedding" in mt.spec(task).outputs.values() or task == "rerank"):
            return limits.max_embedding_inputs, "max_embedding_inputs"
        return limits.max_list_items, "max_list_items"

    def _check_limits(self, inputs: dict[str, Any]) -> None:
        if isinstance(inputs, dict):
            limits = self.config.limits
            check_limits(inputs, limits.max_text_chars, limits.max_list_items)

    async def run_pipeline(self, name: str, inputs: dict[str, Any],
                           policy: CachePolicy = CachePolicy(),
                           on_event: EventSink | None = None, deadline: float | None = None,
                           request_id: str | None = None) -> RunResult:
        """Run a pipeline; a whole-pipeline cache hit skips even the step-cache look-ups.

        The pipeline key covers the spec's digest and the fingerprint of every model it
        uses, so editing the pipeline or upgrading a model never serves an old answer.
        ``deadline`` (monotonic seconds) bounds every step. The run holds one admission slot
        (``fusion.core.admission``) throughout, and a slot of each model its steps may call,
        or is refused at once with 503 before any step ran.

        A pipeline with a fuse step runs under the step's active fusion profile (read at most
        ``feedback.poll_s`` old), and its answer is recorded under ``request_id`` for
        feedback (``fusion.core.learning``).
        """
        spec = self.pipeline(name)
        self._check_limits(inputs)
        checked = check_pipeline_inputs(spec, inputs)
        learns = self.learning.learns(name)
        if learns:
            await self.learning.refresh()
        steps = sum(1 for s in spec.steps.values() if s.model)  # each model step counts
        async with self.tenants.guard("pipeline", name, cost=max(1, steps)) as guard:
            with self.admission.admit(name):
                result = await self._run_checked(spec, checked, policy, on_event, deadline)
            computed = [r.ms for r in result.steps.values() if not (r.cached or r.skipped)]
            guard.done(cache_hits=int(result.cache == "hit"), compute_s=sum(computed) / 1000)
        if learns and request_id:
            await self.learning.record(request_id, name, result.fused)
        return result

    async def _run_checked(self, spec: PipelineSpec, checked: dict[str, Any],
                           policy: CachePolicy, on_event: EventSink | None,
                           deadline: float | None) -> RunResult:
        name = spec.name
        key = None
        if self.cache is not None and (policy.read or policy.write) and \
                not self._generates(spec):
            models = sorted({s.uses_model for s in spec.steps.values() if s.uses_model})
            prints = [await self.fingerprint(m) for m in models]
            parts = [spec.digest, models, prints]
            if profiles := self.learning.profile_key(name):  # a promotion is a new answer
                parts.append(profiles)
            key = self.cache.pipeline_key(digest(parts), checked)
        if key is not None and policy.read:
            with self.observer.span("cache pipeline", {"fusion.pipeline": name}) as span:
                hit = await self.cache.get(key, labels=("pipeline", name))
                if span is not None:
                    span.set_attribute("fusion.cache.outcome", "miss" if hit is None else "hit")
            if hit is not None:
                steps = {s: StepReport(cached=not skipped, skipped=skipped)
                         for s, skipped in hit["skipped"].items()}
                for step, report in steps.items():
                    await emit(on_event, {"event": "step", "step": step, **asdict(report)})
                return RunResult(hit["outputs"], steps, hit.get("fused") or {})
        result = await self.executor.run_checked(spec, checked, policy, on_event, deadline)
        if key is not None and policy.write:
            ttl = spec.cache_ttl_s or self.config.cache.ttl_s
            await self.cache.put(key, {"outputs": result.outputs, "skipped": {
                s: r.skipped for s, r in result.steps.items()}, "fused": result.fused}, ttl,
                labels=("pipeline", name))
        return result


    def _generates(self, spec: PipelineSpec) -> bool:
        """Whether a step generates text (llm): such a pipeline skips the whole-pipeline
        cache, which could hold a sampled answer and would replay no tokens; its steps are
        cached one by one where deterministic (``TaskSpec.uncacheable``)."""
        return any(s.model and self.executor.task_spec(s.model, s.task).streams_tokens
                   for s in spec.steps.values())


def _tokens(outputs: Any) -> dict[str, int]:
    """The prompt and completion tokens an LLM answer reports (``usage``), else none."""
    usage = outputs.get("usage") if isinstance(outputs, dict) else None
    if not isinstance(usage, dict):
        return {}
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}


def admission_for(config: AppConfig, pipelines: dict[str, PipelineSpec]) -> Admission:
    """The router's admission limits: the total, and each pipeline's own bound (the router
    config's ``pipeline_max_in_flight`` over the spec's ``max_in_flight``)."""
    limits = {n: p.max_in_flight for n, p in pipelines.items() if p.max_in_flight}
    unknown = sorted(set(config.router.pipeline_max_in_flight) - set(pipelines))
    if unknown:
        raise SpecError(f"router.pipeline_max_in_flight names unknown pipeline(s) {unknown}; "
                        f"served: {sorted(pipelines)}")
    limits.update(config.router.pipeline_max_in_flight)
    return Admission(config.router.max_in_flight, limits, model_queues=model_queues(
        config.models), pipeline_models={n: model_steps(p) for n, p in pipelines.items()})


# The gateway of this process (one per router replica). A module-level slot, read and written
# only through these functions: Ray pickles the ingress class by value, so a ``global`` written
# in its constructor would land in a copy of the module's namespace, not in this module.
_installed: Gateway | None = None


def install(gateway: Gateway | None) -> None:
    global _installed
    _installed = gateway


def installed() -> Gateway | None:
    return _installed


def current_gateway() -> Gateway:
    """This process's gateway, or 503 ``overloaded`` while the replica is still starting."""
    gateway = installed()
    if gateway is None:
        raise Overloaded("the gateway is still starting; retry shortly", retry_after_s=1.0)
    return gateway
