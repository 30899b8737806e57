"""Build the Serve application from arguments: ``serve run ops/serve/local.yaml`` calls this.

Validation happens here, in the driver, before any replica starts: a bad config or pipeline
stops ``serve run`` with a message naming the file, the step and the problem.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from fusion.bundles import bundle_groups, bundle_size
from fusion.config import AppConfig, AutoscalingConfig, ModelConfig
from fusion.core.startup import check_app, check_exposure, load_config
from fusion.registry import deployment_path, import_object


def replica_options(num_replicas: int, autoscaling: AutoscalingConfig | None,
                    actor_options: dict[str, Any], resources: dict[str, float]
                    ) -> dict[str, Any]:
    """Replica count (fixed, or Serve's autoscaler) and actor resources for ``.options``."""
    actor = {**actor_options, **({"resources": dict(resources)} if resources else {})}
    if autoscaling is None:
        return {"num_replicas": num_replicas, "ray_actor_options": actor}
    return {"autoscaling_config": autoscaling.to_serve(), "ray_actor_options": actor}


def model_deployment(model: ModelConfig, model_dir: str | None,
                     observability: dict[str, Any] | None = None) -> Application:
    """The model's Serve deployment: its family's declared class (``fusion.registry``)."""
    deployment = import_object(deployment_path(model))
    return deployment.options(
        name=model.name,
        **replica_options(model.num_replicas, model.autoscaling,
                          {"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
                          model.resources),
        max_ongoing_requests=model.max_ongoing_requests,
        max_queued_requests=model.max_queued_requests,
    ).bind(model.model_dump(mode="json"), model_dir, observability)


def bundle_deployment(name: str, members: list[ModelConfig], model_dir: str | None,
                      observability: dict[str, Any] | None = None) -> Application:
    """One deployment hosting several models in each replica (``fusion.bundles``)."""
    from fusion.serve.bundle import BundleDeployment

    size = bundle_size(members)
    return BundleDeployment.options(
        name=name,
        **replica_options(size.num_replicas, None,
                          {"num_cpus": size.num_cpus, "num_gpus": size.num_gpus},
                          size.resources),
        max_ongoing_requests=size.max_ongoing_requests,
        max_queued_requests=size.max_queued_requests,
    ).bind([m.model_dump(mode="json") for m in members], model_dir, observability)


def build_app(args: dict[str, Any] | AppConfig) -> Application:
    """The application: one deployment per model or bundle, and the router in front."""
    from fusion.serve.ingress import Router, serve_http_host

    config = load_config(args)
    check_app(config)  # refuse early, before any replica: a bad config stops serve run
    check_exposure(config, serve_http_host())
    observability = config.observability.model_dump(mode="json")
    handles = {m.name: model_deployment(m, config.model_dir, observability)
               for m in config.models if not m.bundle}
    for name, members in bundle_groups(config.models).items():
        bundle = bundle_deployment(name, members, config.model_dir, observability)
        handles.update({m.name: bundle for m in members})  # one deployment, many names
    router = config.router
    return Router.options(
        **replica_options(router.num_replicas, router.autoscaling,
                          {"num_cpus": router.num_cpus}, router.resources),
        max_ongoing_requests=config.router.max_ongoing_requests,
    ).bind(config.model_dump(mode="json"), handles)

