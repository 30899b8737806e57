"""The Kubernetes manifests (ops/k8s) render and would be accepted as shipped, without a cluster.

Each overlay is rendered with ``kubectl kustomize`` (with the example Secrets); every rendered
object is validated: core kinds with ``kubernetes-validate`` (strict: an unknown field fails),
the RayService and PodMonitor against their operators' CRD schemas vendored in
``k8s_schemas/`` (strict too: the API server would prune an unknown field silently, so a typo
or a removed field would be lost without a word). Then what the schemas cannot say: Secrets,
images, GPU room, selectors, Redis settings.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fusion.app import load_config
from fusion.config import gpus_short, starting_replicas
from fusion.gateway import served_tasks
from fusion.spec import load_pipelines

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops/k8s"
SCHEMAS = Path(__file__).parent / "k8s_schemas"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES = ["1.30.0", kubernetes_validate.latest_version()]  # oldest supported, newest
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- rendering

@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """ops/k8s copied with its Secrets made from the *.env.example files, plus an overlay
    ``all``: gpu with every component added, so the components are rendered and checked."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render ops/k8s (Debian package kubectl; .ci/run "
                    "installs it)")
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    for example in (root / "base").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    components = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
    shutil.copytree(root / "overlays/gpu", root / "overlays/all")  # as README says: the
    kustomization = root / "overlays/all/kustomization.yaml"      # components go in an overlay
    config = yaml.safe_load(kustomization.read_text())
    kustomization.write_text(yaml.safe_dump(
        config | {"components": [f"../../components/{c}" for c in components]}))
    return root


def render(tree: Path, overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(tree / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize overlays/{overlay}: {out.stderr}"
    return [d for d in yaml.load_all(out.stdout, Loader=Loader) if d]


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    return {name: render(tree, name) for name in [*OVERLAYS, "all"]}


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template in a workload or a RayService."""
    if obj["kind"] == "RayService":
        cluster = obj["spec"]["rayClusterConfig"]
        specs = [("head", cluster["headGroupSpec"]["template"])]
        specs += [(g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"]]
        return [(w, t["spec"]) for w, t in specs]
    template = obj.get("spec", {}).get("template")
    return [(obj["metadata"]["name"], template["spec"])] if template else []


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def walk(value: Any, key: str):
    """Every value stored under ``key`` anywhere in a nested document."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v, key)


def serve_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def test_every_overlay_renders_the_whole_gateway(rendered):
    assert OVERLAYS == ["cpu", "gpu"]
    for name, objects in rendered.items():
        kinds = sorted(o["kind"] for o in objects)
        for kind in ["Namespace", "NetworkPolicy", "PodDisruptionBudget", "RayService",
                     "Secret", "Service", "StatefulSet"]:
            assert kind in kinds, f"overlays/{name} renders no {kind}"
        namespaced = [o for o in objects if o["kind"] != "Namespace"]
        assert {o["metadata"].get("namespace") for o in namespaced} == {"fusion"}, name
    assert {"PodMonitor", "Ingress"} <= {o["kind"] for o in rendered["all"]}


# ---------------------------------------------------------------- schemas

@functools.cache
def crd_schema(filename: str, version: str) -> dict:
    crd = yaml.load((SCHEMAS / filename).read_text(), Loader=Loader)
    return next(v for v in crd["spec"]["versions"]
                if v["name"] == version)["schema"]["openAPIV3Schema"]


CRDS = {("ray.io/v1", "RayService"): ("ray.io_rayservices.yaml", "v1"),
        ("monitoring.coreos.com/v1", "PodMonitor"):
            ("monitoring.coreos.com_podmonitors.yaml", "v1")}


def unknown_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (what the API server would prune silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                found += unknown_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                found += unknown_fields(v, extra, f"{path}.{k}")
            elif props is not None:
                found.append(f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            found += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return found


def check_custom(obj: dict) -> None:
    schema = crd_schema(*CRDS[(obj["apiVersion"], obj["kind"])])
    jsonschema.Draft7Validator(schema).validate(obj)
    assert unknown_fields(obj, schema) == [], f"{obj['kind']}: fields the CRD does not know"


@pytest.mark.parametrize("version", KUBERNETES)
def test_core_objects_validate_against_kubernetes(rendered, version):
    checked = 0
    for objects in rendered.values():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in CRDS:
                continue
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
    assert checked >= 2 * 9


def test_custom_resources_validate_against_their_crds(rendered):
    kinds = set()
    for objects in rendered.values():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in CRDS:
                check_custom(obj)
                kinds.add(obj["kind"])
    assert kinds == {"RayService", "PodMonitor"}


def test_crd_check_catches_a_typo_and_a_wrong_type(rendered):
    service = one(rendered["gpu"], "RayService")
    typo = yaml.safe_load(yaml.safe_dump(service))
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    with pytest.raises(AssertionError, match="fields the CRD does not know"):
        check_custom(typo)
    wrong = yaml.safe_load(yaml.safe_dump(service))
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        check_custom(wrong)
    with pytest.raises(kubernetes_validate.ValidationError):
        pdb = yaml.safe_load(yaml.safe_dump(one(rendered["gpu"], "StatefulSet")))
        pdb["spec"]["replica"] = 1
        kubernetes_validate.validate(pdb, KUBERNETES[0], strict=True)


# ---------------------------------------------------------------- the RayService

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_valid_for_serve_and_the_gateway(rendered, overlay):
    config = serve_config(rendered[overlay])
    app = ServeDeploySchema.model_validate(config).applications[0]
    assert app.import_path == "fusion.app:build_app"
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


# ---------------------------------------------------------------- Secrets and images

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


# ---------------------------------------------------------------- Redis, PDB, monitoring

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


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# labels KubeRay puts on every Ray pod it creates (ray-operator/controllers/ray/common/pod.go)
KUBERAY_LABELS = {"head": {"ray.io/node-type": "head"}, "worker": {"ray.io/node-type": "worker"}}


def test_disruption_budgets_and_monitors_select_the_ray_pods(rendered):
    objects = rendered["all"]
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    pods = {role: group["template"]["metadata"]["labels"] | KUBERAY_LABELS[role]
            for role, group in [("head", cluster["headGroupSpec"]),
                                ("worker", cluster["workerGroupSpecs"][0])]}
    budgets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    head = [b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"],
                                                   pods["head"])]
    worker = [b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"],
                                                     pods["worker"])]
    assert len(head) == 1 and head[0]["spec"]["maxUnavailable"] == 0
    assert len(worker) == 1 and worker[0]["spec"]["maxUnavailable"] == 1
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    for role, labels in pods.items():
        assert any(selects(m["spec"]["selector"]["matchLabels"], labels) for m in monitors)
        ports = {p["name"] for p in resources_ports(objects, role)}
        for m in monitors:
            if selects(m["spec"]["selector"]["matchLabels"], labels):
                assert {e["port"] for e in m["spec"]["podMetricsEndpoints"]} <= ports


def resources_ports(objects: list[dict], role: str) -> list[dict]:
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    group = cluster["headGroupSpec"] if role == "head" else cluster["workerGroupSpecs"][0]
    return group["template"]["spec"]["containers"][0]["ports"]


def test_ingress_routes_to_the_serve_service_kuberay_creates(rendered):
    objects = rendered["all"]
    ingress = one(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    name = one(objects, "RayService")["metadata"]["name"]
    assert backend["name"] == f"{name}-serve-svc"  # KubeRay: GenerateServeServiceName
    assert backend["port"]["number"] == serve_config(objects)["http_options"]["port"]
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


# ---------------------------------------------------------------- the image

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def containerfile_problems(text: str) -> list[str]:
    steps = instructions(text)
    stage = final_stage(steps)
    problems = []
    installs = [i for i, (w, a) in enumerate(stage) if w == "RUN" and "requirements" in a
                and "pip install" in a]
    code = [i for i, (w, a) in enumerate(stage) if w == "COPY" and
            ("--from=" in a or re.search(r"(^|\s)(\.|fusion|deployments|pipelines)/?\s", a))]
    if not installs:
        problems.append("no dependency layer")
    if not code:
        problems.append("the gateway never reaches the image")
    if installs and code and min(code) < min(installs):
        problems.append("source copied before the dependencies are installed")
    problems += [f"COPY without --chown: {a}" for w, a in steps
                 if w == "COPY" and "--chown=" not in a]
    users = [a for w, a in stage if w == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("the final user is root")
    if any(w == "HEALTHCHECK" for w, _ in steps):
        problems.append("HEALTHCHECK (KubeRay probes the pods)")
    if any(w == "RUN" and re.search(r"pip install[^&]*(-e|--editable)\s", a)
           for w, a in stage):
        problems.append("installed in place (editable)")
    return problems


def test_containerfile_installs_dependencies_first_and_runs_as_non_root():
    text = (ROOT / "ops/Containerfile").read_text()
    assert containerfile_problems(text) == []
    # the check itself fails on the old Containerfile's shape
    old = ("FROM rayproject/ray:2.60.0-py311-gpu\nWORKDIR /app\nCOPY pyproject.toml ./\n"
           "COPY fusion fusion\nRUN pip install --no-cache-dir . -r requirements.txt\n"
           "USER root\nHEALTHCHECK CMD true\n")
    assert set(containerfile_problems(old)) >= {
        "source copied before the dependencies are installed", "the final user is root",
        "HEALTHCHECK (KubeRay probes the pods)"}


def test_containerfile_pins_torch_to_the_base_images_cuda():
    text = (ROOT / "ops/Containerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert re.fullmatch(r"cu\d{3}", args["CUDA"])
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b.startswith("docker.io/rayproject/ray:${RAY_VERSION}-")
                         and b.endswith("-${CUDA}") for b in bases), bases
    assert '"torch==${TORCH_VERSION}+${CUDA}"' in text
    assert "download.pytorch.org/whl/${CUDA}" in text
    # the image runs the torch release the tests run
    assert args["TORCH_VERSION"] == importlib.metadata.version("torch").split("+")[0]
    assert args["TORCHVISION_VERSION"] == importlib.metadata.version("torchvision").split("+")[0]
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"
    assert "!fusion" in ignore and "!ops/container" in ignore


def test_image_requirements_are_the_projects_less_torch():
    import tomllib

    from ops.container.requirements import requirements

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = requirements(project, ["offline-models"], {"torch", "torchvision"})
    deps = project["project"]["dependencies"]
    assert set(reqs) == set(deps + project["project"]["optional-dependencies"][
        "offline-models"]) - {"torch", "torchvision"}
    assert "open-clip-torch>=2.26" in reqs  # a name that starts with "torch" is not skipped
