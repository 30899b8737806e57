"""The gateway's core, free of HTTP and Ray: models, pipelines, executor and cache together.

The FastAPI layer (``fusion.api``) turns requests into calls on this object; the Serve
ingress (``fusion.ingress``) builds it with handles to the model deployments. Tests build it
with fake model callers and drive it in-process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any, Protocol

from fusion.auth import KeyRing
from fusion.batch import BatchResult, call_many
from fusion.cache.keys import digest
from fusion.config import AppConfig
from fusion.errors import BadInput, NotFound
from fusion.executor import (
    CachePolicy,
    EventSink,
    Executor,
    RunResult,
    StepReport,
    check_pipeline_inputs,
    emit,
)
from fusion.spec import PipelineSpec, load_pipelines
from fusion.tasks import ModelTasks
from fusion.values import check_limits

log = logging.getLogger("fusion.gateway")


class ModelBackendClient(Protocol):
    """How the gateway reaches models: Serve handles in production, fakes in unit tests."""

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]: ...

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One call carrying many items of one task; results in order (``fusion.batch``)."""
        ...

    def stream(self, model: str, task: str, inputs: dict[str, Any]) -> AsyncIterator[dict]: ...

    async def info(self, model: str) -> dict[str, Any]: ...


def served_tasks(config: AppConfig) -> dict[str, ModelTasks]:
    return {m.name: m.tasks for m in config.models}


class Gateway:
    def __init__(self, config: AppConfig, client: ModelBackendClient, cache: Any = None,
                 pipelines: dict[str, PipelineSpec] | None = None) -> None:
        self.config = config
        self.client = client
        self.models = served_tasks(config)
        self.pipelines = pipelines if pipelines is not None else load_pipelines(
            self.models, config.pipeline_dirs, config.pipelines)
        self.cache = cache
        self.keyring = KeyRing.from_config(config.auth)
        self._infos: dict[str, dict] = {}
        self._info_lock = asyncio.Lock()
        self.executor = Executor(client, self.models, self.fingerprint, cache,
                                 default_ttl_s=config.cache.ttl_s)

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
        """Each model's info, with every task's input types (so clients can encode inputs)."""
        infos = await asyncio.gather(*(self.model_info(n) for n in self.models))
        return [{**info, "inputs": {task: {k: p.type for k, p in
                                           self.models[name].spec(task).inputs.items()}
                                    for task in self.models[name].tasks}}
                for name, info in zip(self.models, infos, strict=True)]

    def pipeline(self, name: str) -> PipelineSpec:
        if name not in self.pipelines:
            raise NotFound(f"unknown pipeline {name!r}; available: {sorted(self.pipelines)}",
                           "pipeline")
        return self.pipelines[name]

    async def call_model(self, model: str, task: str, inputs: dict[str, Any],
                         policy: CachePolicy = CachePolicy(),
                         on_event: EventSink | None = None) -> tuple[dict, StepReport]:
        self._check_limits(inputs)
        return await self.executor.call_model(model, task, inputs, policy, on_event=on_event)

    async def call_many(self, model: str, task: str, items: list[Any],
                        policy: CachePolicy = CachePolicy()) -> BatchResult:
        """Many items of one task as one batch: ``POST /v1/models/{name}/{task}`` with a
        list of inputs, and ``/v1/embeddings`` with a list of texts."""
        limits = self.config.limits
        if not isinstance(items, list) or not items:
            raise BadInput("inputs must be an object or a non-empty list of objects",
                           field="inputs")
        if len(items) > limits.max_list_items:
            raise BadInput(f"inputs has {len(items)} items, over the {limits.max_list_items} "
                           "limit (limits.max_list_items)", field="inputs")
        for i, item in enumerate(items):
            if isinstance(item, dict):
                check_limits(item, limits.max_text_chars, limits.max_list_items,
                             prefix=f"inputs[{i}].")
        return await call_many(self.executor, model, task, items, policy)

    def _check_limits(self, inputs: dict[str, Any]) -> None:
        if isinstance(inputs, dict):
            limits = self.config.limits
            check_limits(inputs, limits.max_text_chars, limits.max_list_items)

    async def run_pipeline(self, name: str, inputs: dict[str, Any],
                           policy: CachePolicy = CachePolicy(),
                           on_event: EventSink | None = None) -> RunResult:
        """Run a pipeline; a whole-pipeline cache hit skips even the step-cache look-ups.

        The pipeline key covers the spec's digest and the fingerprint of every model it
        uses, so editing the pipeline or upgrading a model never serves an old answer.
        """
        spec = self.pipeline(name)
        self._check_limits(inputs)
        checked = check_pipeline_inputs(spec, inputs)
        key = None
        if self.cache is not None and (policy.read or policy.write):
            models = sorted({s.model for s in spec.steps.values() if s.model})
            prints = [await self.fingerprint(m) for m in models]
            key = self.cache.pipeline_key(digest([spec.digest, models, prints]), checked)
        if key is not None and policy.read:
            hit = await self.cache.get(key, labels=("pipeline", name))
            if hit is not None:
                steps = {s: StepReport(cached=not skipped, skipped=skipped)
                         for s, skipped in hit["skipped"].items()}
                for step, report in steps.items():
                    await emit(on_event, {"event": "step", "step": step, **asdict(report)})
                return RunResult(hit["outputs"], steps)
        result = await self.executor.run_checked(spec, checked, policy, on_event)
        if key is not None and policy.write:
            ttl = spec.cache_ttl_s or self.config.cache.ttl_s
            await self.cache.put(key, {"outputs": result.outputs, "skipped": {
                s: r.skipped for s, r in result.steps.items()}}, ttl, labels=("pipeline", name))
        return result


# The gateway of this process (one per router replica). A module-level slot, read and written
# only through these functions: Ray pickles the ingress class by value, so a ``global`` written
# in its constructor would land in a copy of the module's namespace, not in this module.
_installed: Gateway | None = None


def install(gateway: Gateway) -> None:
    global _installed
    _installed = gateway


def installed() -> Gateway | None:
    return _installed
