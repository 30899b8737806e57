"""Every shipped serve config is valid for Serve and for the gateway, without deploying it.

``ops/serve/*.yaml`` and the RayService overlays' ``serveConfigV2`` are checked against Serve's own
schema, then their ``args`` against the gateway's config model and pipelines: a typo in a
model field or a pipeline that names a model a profile lacks fails here, not on a cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fusion.config import ModelConfig, gpus_short
from fusion.core.gateway import served_tasks
from fusion.core.startup import load_config
from fusion.errors import SpecError
from fusion.pipeline.spec import load_pipelines
from fusion.registry import CUSTOM, families

ROOT = Path(__file__).resolve().parents[2]


def serve_configs() -> list[tuple[str, dict]]:
    found = [(str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()))
             for p in sorted((ROOT / "ops/serve").glob("*.yaml"))]
    for patch in sorted((ROOT / "ops/k8s/overlays").glob("*/serve-config.yaml")):
        serve = yaml.safe_load(patch.read_text())["spec"]["serveConfigV2"]
        found.append((str(patch.relative_to(ROOT)), yaml.safe_load(serve)))
    return found


@pytest.mark.parametrize("name, config", serve_configs(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_serve_config_is_valid(name, config):
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "fusion.serve.app:build_app"
    gateway = load_config(app.args)
    assert {m.family for m in gateway.models} <= {*families(), CUSTOM}
    pipelines = load_pipelines(served_tasks(gateway), gateway.pipeline_dirs, gateway.pipelines)
    assert pipelines, f"{name} serves no built-in pipeline"
    for model in gateway.models:
        assert model.num_cpus + model.num_gpus > 0, f"{name}: {model.name} asks for nothing"


def test_local_profile_serves_every_builtin_pipeline_on_two_cpus():
    config = yaml.safe_load((ROOT / "ops/serve/local.yaml").read_text())
    gateway = load_config(config["applications"][0]["args"])
    # 6, the LLM pipelines ask_image, ask_audio, describe_then_draw, the retrieval ones
    # ask_documents, search_images, and shapes_fused
    assert len(load_pipelines(served_tasks(gateway))) == 12
    cpus = sum(m.num_cpus * m.num_replicas for m in gateway.models) + \
        gateway.router.num_cpus * gateway.router.num_replicas
    assert cpus <= 2, "the local profile must fit in the 2 CPUs Ray sees on a laptop or CI"
    assert all(m.num_gpus == 0 for m in gateway.models)


@pytest.mark.parametrize("name, config", serve_configs(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_profile_declares_the_gpus_its_models_need(name, config):
    """Each profile says how many GPUs it is sized for, and its models' shares fit on them
    (hub.yaml once asked for 1.1 GPUs: on one GPU its last deployment never started)."""
    args = config["applications"][0]["args"]
    assert isinstance(args.get("gpus"), int), f"{name}: declare args.gpus"
    gateway = load_config(args)
    shares = sum(m.num_gpus * m.num_replicas for m in gateway.models)
    assert shares <= gateway.gpus + 1e-9, f"{name}: models ask for {shares:g} GPUs"
    assert gpus_short(gateway.models, gateway.gpus) is None
    if gateway.gpus:  # a GPU profile puts every model on the GPU
        assert all(m.num_gpus > 0 for m in gateway.models), name


def _models(*shares: float) -> list[ModelConfig]:
    return [ModelConfig(name=f"m{i}", family="text", source="tiny:text-embedding",
                        num_gpus=s) for i, s in enumerate(shares)]


def test_gpu_shares_must_pack_onto_whole_gpus():
    assert gpus_short(_models(0.5, 0.5), 1) is None
    assert gpus_short(_models(0.6, 0.6), 2) is None
    assert gpus_short(_models(0.1, 0.2, 0.3, 0.4), 1) is None
    assert gpus_short(_models(2, 0.5, 0.5), 3) is None
    assert gpus_short(_models(0, 0), 0) is None
    # the old hub.yaml: 1.1 on one GPU
    assert "1.1 GPUs" in gpus_short(_models(0.1, 0.1, 0.1, 0.2, 0.1, 0.2, 0.3), 1)
    # adds up to 1.8 <= 2, but three 0.6 shares do not pack onto two GPUs
    assert gpus_short(_models(0.6, 0.6, 0.6), 2)
    assert gpus_short(_models(1.5), 2)  # Ray takes shares above 1 as whole GPUs
    assert gpus_short(_models(0.5), 0)


def test_app_refuses_a_profile_that_does_not_fit_its_gpus():
    config = yaml.safe_load((ROOT / "ops/serve/hub.yaml").read_text())
    args = config["applications"][0]["args"]
    args["models"][0]["num_gpus"] = 0.2
    with pytest.raises(SpecError, match=r"args.gpus"):
        load_config(args)
    args["gpus"] = 2
    assert load_config(args).gpus == 2
