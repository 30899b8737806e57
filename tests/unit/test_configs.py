"""Every shipped serve config is valid for Serve and for the gateway, without deploying it.

``ops/serve/*.yaml`` and the RayService's ``serveConfigV2`` are checked against Serve's own
schema, then their ``args`` against the gateway's config model and pipelines: a typo in a
model field or a pipeline that names a model a profile lacks fails here, not on a cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fusion.app import DEPLOYMENT_CLASSES, load_config
from fusion.gateway import served_tasks
from fusion.spec import load_pipelines

ROOT = Path(__file__).resolve().parents[2]


def serve_configs() -> list[tuple[str, dict]]:
    found = [(str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()))
             for p in sorted((ROOT / "ops/serve").glob("*.yaml"))]
    service = yaml.safe_load((ROOT / "ops/k8s/rayservice.yaml").read_text())
    found.append(("ops/k8s/rayservice.yaml", yaml.safe_load(service["spec"]["serveConfigV2"])))
    return found


@pytest.mark.parametrize("name, config", serve_configs(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_serve_config_is_valid(name, config):
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "fusion.app:build_app"
    gateway = load_config(app.args)
    assert {m.family for m in gateway.models} <= set(DEPLOYMENT_CLASSES)
    pipelines = load_pipelines(served_tasks(gateway), gateway.pipeline_dirs, gateway.pipelines)
    assert pipelines, f"{name} serves no built-in pipeline"
    for model in gateway.models:
        assert model.num_cpus + model.num_gpus > 0, f"{name}: {model.name} asks for nothing"


def test_local_profile_serves_every_builtin_pipeline_on_two_cpus():
    config = yaml.safe_load((ROOT / "ops/serve/local.yaml").read_text())
    gateway = load_config(config["applications"][0]["args"])
    assert len(load_pipelines(served_tasks(gateway))) == 6
    cpus = sum(m.num_cpus * m.num_replicas for m in gateway.models) + \
        gateway.router.num_cpus * gateway.router.num_replicas
    assert cpus <= 2, "the local profile must fit in the 2 CPUs Ray sees on a laptop or CI"
    assert all(m.num_gpus == 0 for m in gateway.models)
