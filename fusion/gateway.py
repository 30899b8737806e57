"""The gateway's core, free of HTTP and Ray: models, pipelines, executor and cache together.

The FastAPI layer (``fusion.api``) turns requests into calls on this object; the Serve
ingress (``fusion.ingress``) builds it with handles to the model deployments. Tests build it
with fake model callers and drive it in-process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fusion.auth import KeyRing
from fusion.config import AppConfig
from fusion.errors import NotFound
from fusion.executor import CachePolicy, EventSink, Executor, RunResult, StepReport
from fusion.spec import PipelineSpec, load_pipelines
from fusion.tasks import ModelTasks

log = logging.getLogger("fusion.gateway")


class ModelBackendClient(Protocol):
    """How the gateway reaches models: Serve handles in production, fakes in unit tests."""

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]: ...

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
        return list(await asyncio.gather(*(self.model_info(n) for n in self.models)))

    def pipeline(self, name: str) -> PipelineSpec:
        if name not in self.pipelines:
            raise NotFound(f"unknown pipeline {name!r}; available: {sorted(self.pipelines)}",
                           "pipeline")
        return self.pipelines[name]

    async def call_model(self, model: str, task: str, inputs: dict[str, Any],
                         policy: CachePolicy = CachePolicy(),
                         on_event: EventSink | None = None) -> tuple[dict, StepReport]:
        return await self.executor.call_model(model, task, inputs, policy, on_event=on_event)

    async def run_pipeline(self, name: str, inputs: dict[str, Any],
                           policy: CachePolicy = CachePolicy(),
                           on_event: EventSink | None = None) -> RunResult:
        return await self.executor.run(self.pipeline(name), inputs, policy, on_event)
