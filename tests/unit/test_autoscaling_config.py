"""Autoscaling and placement in the gateway config reach Serve's deployment options.

Checked without starting Ray: the config refuses contradictions with the field named, and
``build_app`` hands Serve an ``autoscaling_config`` it accepts (Serve validates it again when
``.options`` is called, so a field we spell differently from Serve fails here).
"""

from __future__ import annotations

import pytest

from fusion.core.startup import load_config
from fusion.errors import SpecError
from fusion.serve.app import build_app

TEXT = {"name": "text", "family": "text", "backend": "classifier",
        "source": "tiny:text-classifier"}


def config(**model_extra) -> dict:
    return {"models": [{**TEXT, **model_extra}], "pipeline_dirs": []}


def deployments(app) -> dict:
    """Name → Serve deployment of the router and every model bound under it."""
    router = app._bound_deployment
    found = {router.name: router}
    for handle in app._bound_deployment.init_args[1].values():
        found[handle._bound_deployment.name] = handle._bound_deployment
    return found


def test_model_autoscaling_reaches_serve():
    app = build_app(config(autoscaling={
        "min_replicas": 1, "initial_replicas": 2, "max_replicas": 3,
        "target_ongoing_requests": 4, "upscale_delay_s": 1, "downscale_delay_s": 5}))
    auto = deployments(app)["text"]._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (1, 2, 3)
    assert auto.target_ongoing_requests == 4
    assert (auto.upscale_delay_s, auto.downscale_delay_s) == (1, 5)


def test_router_autoscaling_and_resources_reach_serve():
    args = config(resources={"node2": 0.5})
    args["router"] = {"autoscaling": {"min_replicas": 2, "max_replicas": 4},
                      "resources": {"edge": 1}}
    found = deployments(build_app(args))
    router = found["router"]
    assert router._deployment_config.autoscaling_config.max_replicas == 4
    assert router.ray_actor_options["resources"] == {"edge": 1}
    assert found["text"].ray_actor_options["resources"] == {"node2": 0.5}
    assert found["text"]._deployment_config.autoscaling_config is None


def test_fixed_replica_count_without_autoscaling():
    found = deployments(build_app(config(num_replicas=3)))
    assert found["text"]._deployment_config.num_replicas == 3
    assert found["text"]._deployment_config.autoscaling_config is None
    assert "resources" not in found["text"].ray_actor_options


@pytest.mark.parametrize("auto, message", [
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) must be <= max_replicas (2)"),
    ({"min_replicas": 1, "initial_replicas": 5, "max_replicas": 2},
     "initial_replicas (5) must lie between"),
    ({"min_replicas": 0, "initial_replicas": 0, "max_replicas": 0}, "max_replicas"),
    ({"min_replicas": 1}, "max_replicas"),
    ({"max_replicas": 2, "target_ongoing_requests": 0}, "target_ongoing_requests"),
    ({"max_replicas": 2, "upscale_delay": 1}, "upscale_delay"),
])
def test_bad_autoscaling_is_refused_naming_the_field(auto, message):
    with pytest.raises(SpecError) as err:
        load_config(config(autoscaling=auto))
    assert "models.0" in str(err.value) and message in str(err.value)


def test_num_replicas_and_autoscaling_are_exclusive():
    with pytest.raises(SpecError, match="either num_replicas .* or autoscaling"):
        load_config(config(num_replicas=2, autoscaling={"max_replicas": 3}))
    args = config()
    args["router"] = {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}
    with pytest.raises(SpecError, match="router: .*either num_replicas"):
        load_config(args)


def test_router_target_cannot_exceed_its_concurrency_limit():
    args = config()
    args["router"] = {"max_ongoing_requests": 8, "max_in_flight": 8,
                      "autoscaling": {"max_replicas": 2, "target_ongoing_requests": 16}}
    with pytest.raises(SpecError, match="target_ongoing_requests must not exceed"):
        load_config(args)


def test_scale_to_zero_is_allowed_for_a_model():
    cfg = load_config(config(autoscaling={"min_replicas": 0, "max_replicas": 2}))
    assert cfg.models[0].autoscaling.to_serve()["min_replicas"] == 0
    assert "initial_replicas" not in cfg.models[0].autoscaling.to_serve()


def test_cluster_profiles_autoscale_at_both_levels():
    """Serve's autoscaler asks for replicas; on Kubernetes only the Ray autoscaler can add the
    nodes they need, so the RayService must enable it or scaling stops at the first node."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    service = yaml.safe_load((root / "ops/k8s/base/rayservice.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert all(g["maxReplicas"] > g["minReplicas"] for g in cluster["workerGroupSpecs"])
    overlays = sorted((root / "ops/k8s/overlays").glob("*/serve-config.yaml"))
    assert len(overlays) == 2
    serve_configs = [yaml.safe_load(yaml.safe_load(p.read_text())["spec"]["serveConfigV2"])
                     for p in overlays]
    serve_configs.append(yaml.safe_load((root / "ops/serve/hub.yaml").read_text()))
    for serve_config in serve_configs:
        cfg = load_config(serve_config["applications"][0]["args"])
        assert cfg.router.autoscaling and cfg.router.autoscaling.min_replicas >= 2
        assert all(m.autoscaling and m.autoscaling.max_replicas > 1 for m in cfg.models)


def test_model_target_cannot_exceed_its_concurrency_limit():
    args = config()
    args["models"][0] |= {"max_batch_size": 4, "max_ongoing_requests": 8,
                          "autoscaling": {"max_replicas": 2, "target_ongoing_requests": 16}}
    with pytest.raises(SpecError, match="target_ongoing_requests must not exceed"):
        load_config(args)
