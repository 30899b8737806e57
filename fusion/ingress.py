"""The Serve ingress: the FastAPI app of ``fusion.api`` over handles to the model deployments.

Everything Ray-specific about reaching a model lives in ``HandleClient``; the rest of the
request path is the same code the unit tests drive without Ray.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from fusion.api import create_api
from fusion.cache import StepCache
from fusion.config import AppConfig
from fusion.errors import FusionError, NotFound, Overloaded, StepFailed, unwrap
from fusion.gateway import Gateway, install, installed

log = logging.getLogger("fusion.ingress")

def current_gateway() -> Gateway:
    gateway = installed()
    if gateway is None:
        raise Overloaded("the gateway is still starting", field=None)
    return gateway


api = create_api(current_gateway)


class HandleClient:
    """``ModelBackendClient`` over Serve handles: one per model deployment."""

    def __init__(self, handles: dict[str, DeploymentHandle]) -> None:
        self.handles = handles

    def _handle(self, model: str) -> DeploymentHandle:
        if model not in self.handles:
            raise NotFound(f"unknown model {model!r}", field="model")
        return self.handles[model]

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._handle(model).call.remote(task, inputs)
        except Exception as exc:
            raise model_error(model, task, exc) from exc

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return await self._handle(model).call_many.remote(task, items)
        except Exception as exc:
            raise model_error(model, task, exc) from exc

    async def stream(self, model: str, task: str, inputs: dict[str, Any]) -> AsyncIterator[dict]:
        gen = self._handle(model).options(stream=True).call_stream.remote(task, inputs)
        try:
            async for event in gen:
                yield event
        except Exception as exc:
            raise model_error(model, task, exc) from exc

    async def info(self, model: str) -> dict[str, Any]:
        return await self._handle(model).info.remote()


def model_error(model: str, task: str, exc: BaseException) -> BaseException:
    """What a failed model call means to a client: its own mistake (the replica's
    ``FusionError``, unwrapped), a busy or restarting model (503, worth a retry), or a model
    that failed on valid input (502)."""
    err = unwrap(exc)
    if isinstance(err, FusionError):
        return err
    if isinstance(err, BackPressureError):
        return Overloaded(f"model {model!r} is at its queue limit; retry shortly")
    if isinstance(err, RayActorError | DeploymentUnavailableError):
        return Overloaded(f"model {model!r} has no live replica right now; retry shortly")
    return StepFailed(f"{model}/{task} failed: {type(err).__name__}: {err}")


def serve_metrics_hook() -> Callable[[str, dict, float], None]:
    """Mirror the cache's counters into Prometheus through Ray Serve's metrics API."""
    from ray.serve import metrics

    counters: dict[str, metrics.Counter] = {}
    healthy = metrics.Gauge("fusion_cache_healthy",
                            description="1 while the cache backend answers, else 0")

    def on_event(name: str, labels: dict, value: float) -> None:
        if name == "healthy":
            healthy.set(value)
            return
        if name not in counters:
            counters[name] = metrics.Counter(
                f"fusion_cache_{name}_total", description=f"cache {name} by model and task",
                tag_keys=("model", "task"))
        counters[name].inc(value, tags={"model": labels.get("model", ""),
                                        "task": labels.get("task", "")})

    return on_event


def make_cache(config: AppConfig) -> StepCache | None:
    if not config.cache.enabled:
        return None
    return StepCache.from_config(config.cache, on_event=serve_metrics_hook())


@serve.deployment(name="router")
@serve.ingress(api)
class Router:
    """Ingress deployment: builds the gateway once per replica."""

    def __init__(self, config: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        cfg = AppConfig.model_validate(config)
        gateway = Gateway(cfg, HandleClient(handles), make_cache(cfg))
        install(gateway)
        log.info("router ready: %d models, pipelines %s", len(handles),
                 sorted(gateway.pipelines))
