"""What the schemas cannot say about the RayService and its neighbours (ops/k8s).

The serve config is valid for Serve and for the gateway and autoscales; what Serve starts
fits the smallest cluster and leaves GPU room; GPU pods land on GPU nodes; every pod asks
for CPU, memory and ephemeral storage; the model cache is shared per node; every Secret a
pod names exists with its key; images are pinned; Redis is a password-protected LRU cache.
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fusion.config import gpus_short, starting_replicas
from fusion.core.gateway import served_tasks
from fusion.core.startup import load_config
from fusion.pipeline.spec import load_pipelines
from tests.unit import k8s_render
from tests.unit.k8s_render import (
    K8S,
    OVERLAYS,
    ROOT,
    containers,
    one,
    pod_specs,
    serve_config,
    walk,
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return k8s_render.rendered()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_valid_for_serve_and_the_gateway(rendered, overlay):
    config = serve_config(rendered[overlay])
    app = ServeDeploySchema.model_validate(config).applications[0]
    assert app.import_path == "fusion.serve.app:build_app"
    gateway = load_config(app.args)
    assert load_pipelines(served_tasks(gateway), gateway.pipeline_dirs, gateway.pipelines)
    assert gateway.router.autoscaling and gateway.router.autoscaling.min_replicas >= 2
    assert all(m.autoscaling and m.autoscaling.max_replicas > 1 for m in gateway.models)
    assert not gateway.cache.redis_url, "REDIS_URL comes from the Secret, not the config"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_is_deliberate_about_scaling_and_upgrades(rendered, overlay):
    spec = one(rendered[overlay], "RayService")["spec"]
    assert spec["upgradeStrategy"]["type"] in {"NewCluster", "None"}
    # deprecated and ignored since KubeRay 1.1 (ray-project/kuberay#1685)
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & \
        set(spec)
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] < group["maxReplicas"]
    # the Ray version inside the image is the one KubeRay is told about
    containerfile = (ROOT / "ops/Containerfile").read_text()
    assert f"ARG RAY_VERSION={cluster['rayVersion']}\n" in containerfile
    assert importlib.metadata.version("ray") == cluster["rayVersion"], "the Ray tested here"


def resources(spec: dict) -> dict:
    return spec["containers"][0]["resources"]


def quantity(value: str | int) -> float:
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_starting_replicas_fit_the_smallest_cluster_with_room_to_grow(rendered, overlay):
    """What Serve starts must fit on minReplicas workers (the head runs no replicas), and a
    GPU profile must leave room for one more replica of any model on its GPUs: shares that
    fill them exactly (the old RayService) leave Serve's first scale-up waiting for a pod."""
    service = one(rendered[overlay], "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gateway = load_config(serve_config(rendered[overlay])["applications"][0]["args"])
    cpus = gpus = 0.0
    for group in cluster["workerGroupSpecs"]:
        limits = resources(group["template"]["spec"])["limits"]
        cpus += group["minReplicas"] * quantity(limits["cpu"])
        gpus += group["minReplicas"] * quantity(limits.get("nvidia.com/gpu", 0))
    wanted_cpus = gateway.router.num_cpus * starting_replicas(gateway.router) + sum(
        m.num_cpus * starting_replicas(m) for m in gateway.models)
    assert wanted_cpus <= cpus, f"{overlay}: replicas need {wanted_cpus} CPUs of {cpus}"
    assert gateway.gpus == int(gpus), f"{overlay}: args.gpus is not the GPUs the workers have"
    shares = [m.num_gpus for m in gateway.models for _ in range(starting_replicas(m))]
    assert gpus_short(gateway.models, int(gpus)) is None
    if gpus:
        assert sum(shares) + max(shares) <= gpus + 1e-9, f"{overlay}: no GPU headroom"


def test_gpu_workers_land_on_gpu_nodes_and_cpu_workers_ask_for_none(rendered):
    for overlay in OVERLAYS:
        for where, spec in pod_specs(one(rendered[overlay], "RayService")):
            limits = resources(spec)["limits"]
            if overlay == "gpu" and where != "head":
                assert limits["nvidia.com/gpu"] == resources(spec)["requests"][
                    "nvidia.com/gpu"] == "1"
                assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists",
                        "effect": "NoSchedule"} in spec["tolerations"]
            else:
                assert "nvidia.com/gpu" not in limits and "tolerations" not in spec


def test_gpu_overlay_serves_the_hub_profile(rendered):
    """README: the gpu overlay runs ops/serve/hub.yaml's models (the old RayService had
    dropped nli); only the GPU shares differ, to leave room on the GPU."""
    hub = yaml.safe_load((ROOT / "ops/serve/hub.yaml").read_text())["applications"][0]["args"]
    k8s = serve_config(rendered["gpu"])["applications"][0]["args"]

    def models(args: dict) -> dict:
        return {m["name"]: {k: v for k, v in m.items() if k != "num_gpus"}
                for m in args["models"]}

    assert models(k8s) == models(hub), "keep ops/k8s/overlays/gpu in step with hub.yaml"
    assert k8s["router"] == hub["router"]


def test_every_pod_has_requests_limits_and_ephemeral_storage(rendered):
    for objects in rendered.values():
        for obj in objects:
            for where, spec in pod_specs(obj):
                for c in containers(spec):
                    res = c["resources"]
                    for field in ["cpu", "memory"]:
                        assert field in res["requests"] and field in res["limits"], (where, c)
                    if c in spec["containers"]:
                        assert "ephemeral-storage" in res["requests"], (where, c["name"])


def test_workers_share_the_node_model_cache(rendered):
    for overlay in OVERLAYS:
        cluster = one(rendered[overlay], "RayService")["spec"]["rayClusterConfig"]
        for group in cluster["workerGroupSpecs"]:
            spec = group["template"]["spec"]
            volume = next(v for v in spec["volumes"] if v["name"] == "model-cache")
            assert volume["hostPath"]["type"] == "DirectoryOrCreate"
            mount = next(m["mountPath"] for m in spec["containers"][0]["volumeMounts"]
                         if m["name"] == "model-cache")
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            assert env["HF_HOME"].startswith(mount + "/")
            assert env["FUSION_MODEL_DIR"].startswith(mount + "/")


def test_every_referenced_secret_exists_with_its_key(rendered):
    for name, objects in rendered.items():
        secrets = {o["metadata"]["name"]: set(o.get("data", {})) for o in objects
                   if o["kind"] == "Secret"}
        refs = list(walk(objects, "secretKeyRef"))
        assert len(refs) >= 8, name
        for ref in refs:
            assert ref["key"] in secrets.get(ref["name"], set()), f"{name}: {ref}"
        for obj in objects:
            for where, spec in pod_specs(obj):
                for volume in spec.get("volumes", []):
                    if "secret" in volume:
                        assert volume["secret"]["secretName"] in secrets, (name, where)
            if obj["kind"] == "Ingress":  # TLS Secrets come from cert-manager
                assert obj["spec"]["tls"] and "cert-manager.io/cluster-issuer" in \
                    obj["metadata"]["annotations"]


def test_gateway_pods_read_redis_and_keys_from_secrets(rendered):
    for overlay in OVERLAYS:
        for where, spec in pod_specs(one(rendered[overlay], "RayService")):
            env = {e["name"]: e for e in spec["containers"][0]["env"]}
            for var in ["REDIS_URL", "FUSION_API_KEYS", "FUSION_ADMIN_KEYS"]:
                assert "secretKeyRef" in env[var]["valueFrom"], (overlay, where, var)
                assert "value" not in env[var]


def test_example_redis_url_names_the_shipped_redis():
    env = dict(line.split("=", 1) for line in
               (K8S / "base/gateway.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    password = dict(line.split("=", 1) for line in
                    (K8S / "base/redis.env.example").read_text().splitlines()
                    if line and not line.startswith("#"))["REDIS_PASSWORD"]
    assert env["REDIS_URL"] == f"redis://:{password}@fusion-redis:6379/0"
    assert env["FUSION_API_KEYS"] and env["FUSION_ADMIN_KEYS"]
    assert "*.env" in (ROOT / ".gitignore").read_text()


def image_ok(image: str) -> str | None:
    name, _, tag = image.rpartition(":")
    if "@sha256:" in image:
        return None
    if not name or "/" in tag:
        return "no tag"
    if tag == "latest":
        return ":latest"
    if "." not in name.split("/")[0] and ":" not in name.split("/")[0]:
        return "no registry (would resolve to Docker Hub's library namespace)"
    return None


def test_images_are_pinned_and_name_their_registry(rendered):
    assert image_ok("fusion-gateway:latest")
    assert image_ok("registry.example.com/fusion-gateway:latest") == ":latest"
    assert image_ok("fusion-gateway:0.1.0")
    assert image_ok("registry.example.com/fusion-gateway")
    assert image_ok("localhost:5000/fusion-gateway:1") is None
    for name, objects in rendered.items():
        images = list(walk(objects, "image"))
        assert len(images) >= 4, name
        for image in images:
            assert image_ok(image) is None, f"{name}: {image}: {image_ok(image)}"


def test_redis_is_a_password_protected_lru_cache_without_persistence(rendered):
    redis = one(rendered["gpu"], "StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["command"] + container["args"])
    assert "--maxmemory-policy allkeys-lru" in command
    assert "--save ''" in command and "--appendonly no" in command
    maxmemory = re.search(r"--maxmemory (\d+)gb", command)
    assert maxmemory, command
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) > 1024 * int(maxmemory.group(1))
    assert "requirepass" in command and "$REDIS_PASSWORD" in command
    assert {e["name"] for e in container["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}
    service = next(o for o in rendered["gpu"] if o["kind"] == "Service"
                   and o["metadata"]["name"] == "fusion-redis")
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]


