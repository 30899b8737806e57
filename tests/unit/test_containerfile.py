"""The gateway's image (ops/Containerfile) is layered for caching and runs as non-root.

No container engine runs in CI, so the file is read, not built: dependencies are installed
in a layer before any source reaches the final stage (a code change must not reinstall
torch), every COPY hands files to the ray user, the final user is not root, there is no
HEALTHCHECK (KubeRay probes the pods), and torch's CUDA build matches the base image's.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
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


def ignore_pattern(pattern: str) -> re.Pattern:
    """A .containerignore pattern as a regex over slash-separated paths (``*`` stays within
    one folder, ``**/`` spans any number)."""
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + r"\Z")


def build_context(root: Path) -> list[str]:
    """The files a build of ``root`` sends, under .containerignore's rules (the last matching
    pattern decides; a pattern matching a folder covers what is inside it)."""
    lines = [line for line in (root / ".containerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    rules = [(line.startswith("!"), ignore_pattern(line.lstrip("!"))) for line in lines]
    reincluded = [line[1:] for line in lines if line.startswith("!")]

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = False
        for negated, rule in rules:
            if any(rule.match(prefix) for prefix in prefixes):
                out = not negated
        return out

    sent = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        subdirs = [d if base == "." else f"{base}/{d}" for d in dirs]
        # skip an excluded folder that no "!" rule reaches into (.venv, .git: many files)
        dirs[:] = [d for d, sub in zip(dirs, subdirs, strict=True) if not excluded(sub) or any(
            r.startswith((sub + "/", "**")) for r in reincluded)]
        names = [f if base == "." else f"{base}/{f}" for f in files]
        sent += [name for name in names if not excluded(name)]
    return sorted(sent)


def test_the_build_context_builds_the_wheels(tmp_path):
    """Stage 1 of the image, without a container engine: the files .containerignore lets
    through build both wheels (the gateway's with its pipelines and shapes), and nothing
    else (tests, virtualenvs, model caches, git) is sent."""
    sent = build_context(ROOT)
    assert "pyproject.toml" in sent and "ops/container/requirements.py" in sent
    assert not [p for p in sent if p.startswith((".venv/", ".git/", "tests/", "docs/",
                                                 ".fusion-models/", "clients/python/tests/"))]
    assert not [p for p in sent if "/." in "/" + p or "__pycache__" in p or p.endswith(".env")]
    context = tmp_path / "context"
    for rel in sent:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, context / rel)
    wheels = tmp_path / "wheels"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), ".", "./clients/python"],
        cwd=context, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    built = {w.name.split("-")[0]: w for w in wheels.glob("*.whl")}
    assert set(built) == {"fusion_gateway", "fusion_client"}
    names = zipfile.ZipFile(built["fusion_gateway"]).namelist()
    assert "fusion/serve/app.py" in names
    assert any(n.startswith("pipelines/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("deployments/shapes/") and n.endswith(".json") for n in names)
