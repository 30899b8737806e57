"""What both runtimes do before serving: read and check the config, build cache and observer.

The Serve app builder and the embedded runtime call the same functions, so a config that one
refuses the other refuses too, with the same message naming the file, step or model.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from fusion.cache import StepCache
from fusion.config import AppConfig
from fusion.core.gateway import Gateway, admission_for, install, served_tasks
from fusion.core.keys import KeyRing
from fusion.errors import SpecError
from fusion.observe import Observer, Recorder
from fusion.pipeline.spec import PipelineSpec, load_pipelines
from fusion.registry import CUSTOM, check_custom_backend
from fusion.tracing import tracing_from

log = logging.getLogger("fusion.core.startup")


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve beyond this machine
        return False


def check_exposure(config: AppConfig, host: str | None) -> None:
    """Refuse to listen beyond loopback with no key and anonymous access not chosen (as
    Redis' protected mode does): ``serve run`` of a profile that binds ``0.0.0.0`` on a GPU
    box would otherwise put every model and the admin routes on the network. ``host`` None:
    the runtime could not tell (a warning, not a refusal)."""
    ring = KeyRing.from_config(config.auth)
    if ring.enabled or config.auth.anonymous is not None:
        return
    if host is None:
        log.warning("could not tell which address the gateway listens on; with no API key "
                    "configured it answers anyone who reaches it")
        return
    if not is_loopback(host):
        raise SpecError(
            f"the gateway listens on {host} (beyond loopback) and no API key is configured: "
            "set FUSION_API_KEYS / FUSION_ADMIN_KEYS (or auth.key_hashes / "
            "auth.admin_key_hashes), or allow anonymous access explicitly with "
            "auth: {anonymous: true}")


def announce_auth(config: AppConfig) -> list[str]:
    """What start-up says about access (logged; returned for tests)."""
    ring = KeyRing.from_config(config.auth)
    lines = []
    if not ring.admins:
        lines.append("admin routes (/v1/admin/*, DELETE /v1/cache) are disabled: no admin "
                     "key is configured (FUSION_ADMIN_KEYS or auth.admin_key_hashes)")
    anonymous = config.auth.anonymous if config.auth.anonymous is not None \
        else not ring.enabled
    if anonymous:
        lines.append("anonymous access is on: requests without an API key are served")
    for line in lines:
        log.warning(line)
    return lines


def load_config(args: dict[str, Any] | AppConfig) -> AppConfig:
    if isinstance(args, AppConfig):
        return args
    try:
        return AppConfig.model_validate(args or {})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SpecError("invalid gateway config:\n" + "\n".join(lines)) from None


def check_app(config: AppConfig) -> dict[str, PipelineSpec]:
    """Everything a start-up refuses, before any model loads: custom backends (imported and
    checked), pipelines against the served tasks, admission limits."""
    for m in config.models:
        if m.family == CUSTOM:
            check_custom_backend(m.name, m.backend or "", m.tasks.specs)
    pipelines = load_pipelines(served_tasks(config), config.pipeline_dirs, config.pipelines)
    admission_for(config, pipelines)
    return pipelines


def cache_metrics_hook(recorder: Recorder) -> Callable[[str, dict, float], None]:
    """Mirror the cache's counters into Prometheus (``fusion_cache_*``)."""

    def on_event(name: str, labels: dict, value: float) -> None:
        if name == "healthy":
            recorder.set("fusion_cache_healthy", value, {})
            return
        recorder.inc(f"fusion_cache_{name}_total", {"model": labels.get("model", ""),
                                                    "task": labels.get("task", "")}, value)

    return on_event


def make_cache(config: AppConfig, recorder: Recorder | None) -> StepCache | None:
    if not config.cache.enabled:
        return None
    hook = cache_metrics_hook(recorder) if recorder is not None else None
    return StepCache.from_config(config.cache, on_event=hook)


def make_observer(config: AppConfig, recorder: Recorder | None) -> Observer:
    """Metrics (the runtime's ``recorder``) when on, tracing when an OTLP endpoint is
    configured, the access log."""
    obs = config.observability
    return Observer(recorder if obs.metrics else None,
                    tracing_from(obs.otlp_endpoint, obs.service_name), obs.access_log)


def start_gateway(config: AppConfig, caller: Any, recorder: Recorder | None) -> Gateway:
    """The gateway of this process over ``caller`` (the runtime's ``ModelCaller``), installed
    and exporting its series: both runtimes assemble it here. The caller gets the gateway's
    admission (one place for every refusal and its hooks) and observer (trace context)."""
    announce_auth(config)
    observer = make_observer(config, recorder)
    cache = make_cache(config, observer.recorder)
    gateway = Gateway(config, caller, cache, observer=observer)
    caller.admission = gateway.admission
    caller.observer = observer
    observer.start(gateway.pipelines, gateway.models,
                   cache.backend.healthy if cache is not None else None)
    install(gateway)
    return gateway
