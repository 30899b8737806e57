"""Resolve a model source to something ``from_pretrained`` can load, plus a fingerprint.

All five kinds of source end up on the same loading path: a hub id (with revision) is
passed to the library as is, and the others become a local folder — a packaged model's
folder inside site-packages, a user's folder, or a folder where a tiny random model or a
full-size ``shape:`` model (a hub model's architecture with random weights, from a config in
``deployments/shapes/``) was built and saved. Tests thus exercise the same code that loads
real weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fusion.config import ModelSource
from fusion.errors import SpecError

# Packaged offline weights: importable module -> sub-folder (relative to the package) that
# holds the model files. None means "search the package for the model folder".
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".ckpt", ".json", ".model",
                   ".txt")


@dataclass(frozen=True)
class ResolvedSource:
    """What a loader needs: ``location`` for ``from_pretrained`` and a cache fingerprint."""

    source: ModelSource
    location: str  # hub id or absolute folder
    revision: str | None
    fingerprint: str
    local: bool


def default_model_dir() -> Path:
    return Path(os.environ.get("FUSION_MODEL_DIR", Path.home() / ".cache" / "fusion" / "models"))


def folder_digest(folder: Path, max_bytes: int = 4 << 30) -> str:
    """sha256 over relative names and contents of the model files (names + sizes past 4 GiB)."""
    digest = hashlib.sha256()
    budget = max_bytes
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts or path.suffix == ".py" or path.suffix == ".pyc":
            continue
        rel = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= budget:
            budget -= size
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def package_folder(module: str, marker_files: tuple[str, ...] = ()) -> Path:
    """The folder inside an installed package that holds the model files.

    ``module`` may name a sub-folder: ``pkg/sub/dir``. Otherwise the shallowest folder that
    contains one of ``marker_files`` (e.g. ``config.json``, ``model.bin``) is chosen.
    """
    name, _, sub = module.partition("/")
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        raise SpecError(f"packaged model {name!r} is not installed ({exc}); "
                        f"install the 'offline-models' extra") from exc
    root = Path(getattr(mod, "__file__", None) or next(iter(mod.__path__))).resolve()
    root = root.parent if root.is_file() else root
    if sub:
        folder = root / sub
        if not folder.is_dir():
            raise SpecError(f"packaged model folder {folder} does not exist")
        return folder
    markers = marker_files or ("config.json", "model.bin")
    candidates = sorted({p.parent for m in markers for p in root.rglob(m)},
                        key=lambda p: (len(p.parts), str(p)))
    if not candidates:
        raise SpecError(f"no model files ({', '.join(markers)}) found in package {name!r}")
    return candidates[0]


def _build_once(folder: Path, build: Callable[[Path], None], label: str) -> Path:
    """Build ``folder`` with ``build`` unless done, once across processes.

    Replicas starting together wait on a file lock instead of each building a copy (a shape
    can take minutes and gigabytes); the build goes to a private folder renamed into place
    when complete, so a crash never leaves a half-written model that looks finished.
    """
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder.with_name(f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".complete").exists():
            return folder
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            (tmp / ".complete").write_text(label)
            if folder.exists():  # left by a crash before .complete existed: not a model
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_tiny(recipe: str, model_dir: Path | None = None) -> Path:
    """Build (once) and return the folder of a tiny random model."""
    from fusion.registry import import_object, tiny_recipes

    recipes = tiny_recipes()  # every family's FAMILY.tiny
    if recipe not in recipes:
        raise SpecError(f"unknown tiny recipe {recipe!r}; known: {sorted(recipes)}")
    builder = import_object(recipes[recipe])
    folder = (model_dir or default_model_dir()) / f"tiny-{recipe}"
    # the marker carries a digest of the builder's module: a changed recipe (a new chat
    # template, say) builds anew instead of serving the stale folder
    module = getattr(sys.modules.get(builder.__module__), "__file__", None)
    label = recipe + (f" {hashlib.sha256(Path(module).read_bytes()).hexdigest()[:8]}"
                      if module else "")
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() != label:
        marker.unlink(missing_ok=True)
    return _build_once(folder, builder, label)


def build_shape(name: str, model_dir: Path | None = None) -> Path:
    """Build (once) and return the folder of a full-size random model (``shape:name``).

    The folder name carries a digest of the shape's JSON and the builders' version, so an
    edited config builds anew instead of serving a stale model.
    """
    from deployments.shape_models import BUILDER_VERSION, SHAPES_DIR, load_spec
    from deployments.shape_models import build_shape as build

    load_spec(name)  # unknown names fail here, naming the known ones
    digest = hashlib.sha256((SHAPES_DIR / f"{name}.json").read_bytes())
    digest.update(f"builder {BUILDER_VERSION}".encode())
    spec_digest = digest.hexdigest()[:8]
    folder = (model_dir or default_model_dir()) / f"shape-{name}-{spec_digest}"
    return _build_once(folder, lambda tmp: build(name, tmp), name)


def resolve(source: ModelSource, model_dir: Path | None = None,
            marker_files: tuple[str, ...] = ()) -> ResolvedSource:
    """Turn a configured source into a loadable location and a fingerprint."""
    if source.kind == "hub":
        rev = source.revision or "main"
        return ResolvedSource(source, source.ref, source.revision,
                              f"hub:{source.ref}@{rev}", local=False)
    if source.kind == "path":
        folder = Path(source.ref).expanduser().resolve()
        if not folder.is_dir():
            raise SpecError(f"model folder {folder} does not exist")
    elif source.kind == "package":
        folder = package_folder(source.ref, marker_files)
    elif source.kind == "shape":
        folder = build_shape(source.ref, model_dir)
    else:
        folder = build_tiny(source.ref, model_dir)
    return ResolvedSource(source, str(folder), None,
                          f"{source.kind}:{source.ref}#{folder_digest(folder)}", local=True)
