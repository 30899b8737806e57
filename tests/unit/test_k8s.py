"""The Kubernetes manifests (ops/k8s) render and would be accepted as shipped, without a cluster.

Each overlay is rendered with ``kubectl kustomize`` (k8s_render.py); every rendered object is
validated: core kinds with ``kubernetes-validate`` (strict: an unknown field fails), the
RayService and PodMonitor against their operators' CRD schemas vendored in ``k8s_schemas/``
(strict too: the API server would prune an unknown field silently, so a typo or a removed
field would be lost without a word). Then the selectors that tie the objects together.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit import k8s_render
from tests.unit.k8s_render import OVERLAYS, Loader, one, serve_config

SCHEMAS = Path(__file__).parent / "k8s_schemas"
KUBERNETES = ["1.30.0", kubernetes_validate.latest_version()]  # oldest supported, newest


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return k8s_render.rendered()


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


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# labels KubeRay puts on every Ray pod it creates (ray-operator/controllers/ray/common/pod.go)
KUBERAY_LABELS = {"head": {"ray.io/node-type": "head"},
                  "worker": {"ray.io/node-type": "worker"}}


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
