"""The Serve ingress: the FastAPI app of ``fusion.http.app`` over handles to the model deployments.

Everything Ray-specific about reaching a model lives in ``HandleClient``; the rest of the
request path is the same code the unit tests drive without Ray.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from fusion.config import AppConfig
from fusion.core.admission import Admission
from fusion.core.gateway import current_gateway
from fusion.core.startup import check_exposure, start_gateway
from fusion.errors import FusionError, NotFound, Overloaded, StepFailed, unwrap
from fusion.http.app import create_api
from fusion.observe import NULL_OBSERVER, Observer
from fusion.serve.metrics import ray_recorder

log = logging.getLogger("fusion.serve.ingress")

api = create_api(current_gateway, proxy_sets_request_id=True)  # Serve adds x-request-id


class HandleClient:
    """``ModelBackendClient`` over Serve handles: one per model deployment."""

    def __init__(self, handles: dict[str, DeploymentHandle],
                 admission: Admission | None = None,
                 observer: Observer = NULL_OBSERVER, bundled: set[str] | None = None) -> None:
        self.handles = handles
        self.bundled = bundled or set()  # models whose deployment is a bundle: name them
        self.admission = admission or Admission(1 << 30)
        self.observer = observer

    def _handle(self, model: str) -> DeploymentHandle:
        if model not in self.handles:
            raise NotFound(f"unknown model {model!r}", field="model")
        return self.handles[model]

    def _named(self, model: str) -> dict[str, str]:
        return {"model": model} if model in self.bundled else {}

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return await self._unary(model, task, "call", inputs)

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._unary(model, task, "call_many", items)

    async def _unary(self, model: str, task: str, method: str, payload: Any) -> Any:
        """One replica method call carrying the trace context (the replica continues the
        trace); a failure mapped to what it means to the client, a success counted as drained."""
        remote = getattr(self._handle(model), method).remote
        trace = self.observer.carrier()
        try:
            named = self._named(model)
            result = await (remote(task, payload, trace=trace, **named) if trace
                            else remote(task, payload, **named))
        except Exception as exc:
            raise model_error(model, task, exc, self.admission) from exc
        self.admission.model_done(model)
        return result

    async def stream(self, model: str, task: str, inputs: dict[str, Any]) -> AsyncIterator[dict]:
        trace = self.observer.carrier()
        stream = self._handle(model).options(stream=True).call_stream
        named = self._named(model)
        gen = (stream.remote(task, inputs, trace=trace, **named) if trace
               else stream.remote(task, inputs, **named))
        try:
            async for event in gen:
                yield event
        except Exception as exc:
            raise model_error(model, task, exc, self.admission) from exc
        self.admission.model_done(model)

    async def info(self, model: str) -> dict[str, Any]:
        return await self._handle(model).info.remote(**self._named(model))


def model_error(model: str, task: str, exc: BaseException,
                admission: Admission | None = None) -> BaseException:
    """What a failed model call means to a client: its own mistake (the replica's
    ``FusionError``, unwrapped), a busy or restarting model (503, worth a retry), or a model
    that failed on valid input (502). A full queue's Retry-After comes from how fast the
    model has been answering this router (``Admission.model_full``)."""
    err = unwrap(exc)
    if isinstance(err, FusionError):
        if admission is not None:
            admission.model_done(model)  # the replica answered: it drained one request
        return err
    if isinstance(err, BackPressureError):
        queued = err.args[0] if err.args and isinstance(err.args[0], int) else None
        return (admission or Admission(1 << 30)).model_full(model, queued)
    if isinstance(err, RayActorError | DeploymentUnavailableError):
        return Overloaded(f"model {model!r} has no live replica right now; retry shortly")
    return StepFailed(f"{model}/{task} failed: {type(err).__name__}: {err}")


@serve.deployment(name="router")
@serve.ingress(api)
class Router:
    """Ingress deployment: builds the gateway once per replica."""

    def __init__(self, config: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        cfg = AppConfig.model_validate(config)
        check_exposure(cfg, serve_http_host())  # also when the app was built without Ray
        client = HandleClient(handles, bundled={m.name for m in cfg.models if m.bundle})
        gateway = start_gateway(cfg, client, ray_recorder())
        log.info("router ready: %d models, pipelines %s", len(handles),
                 sorted(gateway.pipelines))


def serve_http_host() -> str | None:
    """The address Serve's HTTP proxies listen on (``http_options.host``), asked of the
    controller; None when it cannot tell (no controller reachable from here)."""
    if not ray.is_initialized():  # asking would start a Ray instance: nothing runs here yet
        return None
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return None
        return ray.get(client._controller.get_http_config.remote(), timeout=10).host
    except Exception:  # an internal API: a Ray upgrade may move it; the caller warns
        return None
