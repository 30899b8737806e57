"""ops/k8s rendered with ``kubectl kustomize``, and helpers to read the result (tests only).

The overlays need the Secrets' env files, which are never committed: the render uses the
``*.env.example`` files beside them, as a user's first apply would after copying them.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops/k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def tree(where: Path) -> Path:
    """ops/k8s copied with its Secrets made from the *.env.example files, plus an overlay
    ``all``: gpu with every component added, so the components are rendered and checked."""
    root = where / "k8s"
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


@functools.cache
def rendered() -> dict[str, list[dict]]:
    """Every overlay (and ``all``), rendered once per test session."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render ops/k8s (apt package kubectl; ./ops/test.sh "
                    "installs it)")
    with tempfile.TemporaryDirectory(prefix="fusion-k8s-") as where:
        root = tree(Path(where))
        return {name: render(root, name) for name in [*OVERLAYS, "all"]}


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
