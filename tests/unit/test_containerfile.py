"""The gateway's image (ops/Containerfile) is layered for caching and runs as non-root.

No container engine runs in CI, so the file is read, not built: dependencies are installed
in a layer before any source reaches the final stage (a code change must not reinstall
torch), every COPY hands files to the ray user, the final user is not root, there is no
HEALTHCHECK (KubeRay probes the pods), and torch's CUDA build matches the base image's.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
