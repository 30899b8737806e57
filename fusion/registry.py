"""The family registry: every model family declared once, read by everything else.

A family is one ``Family`` value named ``FAMILY`` at the top level of its module: its tasks
(typed inputs and outputs), its backends and which tasks each serves, the ``ModelBackend``
class that runs each backend (by import path where importing it would cost or cycle), its tiny
test-model recipes and (rarely) its own Serve deployment class. Config validation,
``/v1/models``, pipeline checks, the app builder and the source loader all read these
declarations, so adding a family means adding one module.

Families are declared, not searched for: the ``fusion.families`` entry-point group of the
installed distributions (``pyproject.toml`` lists the built-in ones, a plugin package lists
its own), plus any module named in ``$FUSION_FAMILY_MODULES`` (comma separated) or in a
model's ``family_module``. Loading them is cheap and torch-free (family modules import torch
lazily, inside their methods), so the router learns the families without loading torch; and
this module imports nothing of ``deployments`` (an import-linter contract holds it to that).

``family: custom`` is the one family that is not declared in a module: the model's config
names its backend class by import path and declares its tasks (``custom_task_specs``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusion.errors import SpecError
from fusion.tasks import ModelTasks, Param, TaskSpec, is_value_type

ENTRY_POINTS = "fusion.families"
DEFAULT_DEPLOYMENT = "fusion.serve.served:ModelDeployment"
# The class every backend derives from, named rather than imported: ``fusion`` never imports
# ``deployments`` (the custom class being checked has imported it already).
BACKEND_BASE = "deployments.base:ModelBackend"
CUSTOM = "custom"
ENV_MODULES = "FUSION_FAMILY_MODULES"


@dataclass(frozen=True)
class Family:
    """One model family, as its module declares it.

    ``model`` is the ``ModelBackend`` subclass (or its ``"module:Class"`` path) that serves
    the family's backends; ``backends`` maps a backend name to the tasks it serves, the
    first backend being the default; ``backend_models`` names another class for a backend
    (``{"onnx": "deployments.text_onnx:OnnxTextModel"}``), imported only when that backend
    loads, so the family module need not import it. ``tiny`` maps a ``tiny:<recipe>`` name to the
    ``"module:function"`` that writes that test model into a folder. ``deployment`` is the
    Serve deployment class the app builder binds; the shared ``ServedModel`` fits every
    family so far (batching, threads, metrics, tracing).
    """

    name: str
    tasks: Mapping[str, TaskSpec]
    backends: Mapping[str, tuple[str, ...]]
    model: type | str
    backend_models: Mapping[str, type | str] = field(default_factory=dict)
    tiny: Mapping[str, str] = field(default_factory=dict)
    deployment: str = DEFAULT_DEPLOYMENT
    doc: str = ""

    def __post_init__(self) -> None:
        where = f"family {self.name!r}"
        if not self.backends:
            raise SpecError(f"{where} declares no backend")
        for backend, tasks in self.backends.items():
            unknown = [t for t in tasks if t not in self.tasks]
            if unknown or not tasks:
                raise SpecError(f"{where} backend {backend!r} serves tasks {unknown or '[]'} "
                                f"that the family does not declare ({sorted(self.tasks)})")
        for backend in self.backend_models:
            if backend not in self.backends:
                raise SpecError(f"{where} names a class for backend {backend!r}, which is not "
                                f"one of its backends {sorted(self.backends)}")
        for task, spec in self.tasks.items():
            check_spec_types(spec, f"{where} task {task!r}")

    @property
    def default_backend(self) -> str:
        return next(iter(self.backends))

    def model_tasks(self, backend: str | None = None) -> ModelTasks:
        backend = backend or self.default_backend
        tasks = self.backends[backend]
        return ModelTasks(self.name, backend, tasks, {t: self.tasks[t] for t in tasks})

    def model_class(self, backend: str | None = None) -> type:
        """The class that serves ``backend`` (the default backend when None)."""
        model = self.backend_models.get(backend or self.default_backend, self.model)
        return import_object(model) if isinstance(model, str) else model


def check_spec_types(spec: TaskSpec, where: str) -> None:
    for name, p in spec.inputs.items():
        if not is_value_type(p.type):
            raise SpecError(f"{where} input {name!r} has unknown type {p.type!r}")
    for name, type_ in spec.outputs.items():
        if not is_value_type(type_):
            raise SpecError(f"{where} output {name!r} has unknown type {type_!r}")


def import_object(path: str) -> Any:
    """``"package.module:Name"`` → the object; ``SpecError`` saying what failed."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise SpecError(f"{path!r} is not an import path of the form 'package.module:Name'")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or the module's own error while importing
        raise SpecError(f"cannot import {module!r} ({type(exc).__name__}: {exc})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._families: dict[str, Family] = {}
        self._modules: set[str] = set()
        self._scanned = False

    def add_module(self, module: str) -> list[Family]:
        """Import ``module`` and register the family (or list of families) in ``FAMILY``."""
        with self._lock:
            try:
                mod = importlib.import_module(module)
            except Exception as exc:
                raise SpecError(f"cannot import family module {module!r} "
                                f"({type(exc).__name__}: {exc})") from None
            declared = getattr(mod, "FAMILY", None)
            found = declared if isinstance(declared, list | tuple) else [declared]
            if not found or not all(isinstance(f, Family) for f in found):
                raise SpecError(f"module {module!r} declares no FAMILY = Family(...)")
            for fam in found:
                if fam.name == CUSTOM:
                    raise SpecError(f"{module!r}: the family name 'custom' is reserved for "
                                    "models named by import path")
                other = self._families.get(fam.name)
                if other is not None and other is not fam:
                    raise SpecError(f"family {fam.name!r} of {module!r} is already declared "
                                    "by another module")
                self._families[fam.name] = fam
            self._modules.add(module)
            return list(found)

    def add_entry_point(self, entry: importlib.metadata.EntryPoint) -> list[Family]:
        """Register what a ``fusion.families`` entry point names (``module:FAMILY``)."""
        module, _, attr = entry.value.partition(":")
        if attr.strip() != "FAMILY":
            raise SpecError(f"entry point {entry.name} = {entry.value!r} of group "
                            f"{ENTRY_POINTS!r} must name a module's FAMILY ('module:FAMILY')")
        found = self.add_module(module.strip())
        if entry.name not in {f.name for f in found}:
            raise SpecError(f"entry point {entry.name!r} of group {ENTRY_POINTS!r} names "
                            f"{module.strip()!r}, which declares {[f.name for f in found]}")
        return found

    def scan(self) -> None:
        with self._lock:
            if self._scanned:
                return
            entries = importlib.metadata.entry_points(group=ENTRY_POINTS)
            for entry in sorted(entries, key=lambda e: e.name):
                self.add_entry_point(entry)
            for module in filter(None, os.environ.get(ENV_MODULES, "").split(",")):
                self.add_module(module.strip())
            self._scanned = True

    def families(self) -> dict[str, Family]:
        self.scan()
        return dict(self._families)

    def get(self, name: str, module: str | None = None) -> Family:
        if module and module not in self._modules:
            self.add_module(module)
        families = self.families()
        if not families:
            raise SpecError(f"unknown family {name!r}: no model family is declared (is the "
                            "gateway installed? `pip install -e .` writes its "
                            f"{ENTRY_POINTS!r} entry points)")
        if name not in families:
            raise SpecError(f"unknown family {name!r}; known: {sorted([*families, CUSTOM])} "
                            f"(families come from the {ENTRY_POINTS!r} entry points of the "
                            "installed packages, $FUSION_FAMILY_MODULES or family_module)")
        return families[name]


REGISTRY = _Registry()


def families() -> dict[str, Family]:
    """Every declared family by name (reading the entry points on first use)."""
    return REGISTRY.families()


def family(name: str, module: str | None = None) -> Family:
    """The declared family ``name``, importing ``module`` first if given."""
    return REGISTRY.get(name, module)


def model_tasks(name: str, backend: str | None = None) -> ModelTasks:
    """The tasks of a declared family's backend (its default backend when None)."""
    return family(name).model_tasks(backend)


def tiny_recipes() -> dict[str, str]:
    """``tiny:<recipe>`` name → builder import path, over all families."""
    out: dict[str, str] = {}
    for fam in families().values():
        out.update(fam.tiny)
    return out


def custom_task_specs(tasks: Mapping[str, Any]) -> dict[str, TaskSpec]:
    """A custom model's ``tasks:`` config (already shape-checked) as task specs."""
    out = {}
    for task, decl in tasks.items():
        inputs = {}
        for key, p in decl["inputs"].items():
            if isinstance(p, str):
                inputs[key] = Param(p)
            else:
                inputs[key] = Param(p["type"], p.get("default") is None and
                                    p.get("required", True), p.get("default"))
        out[task] = TaskSpec(inputs, dict(decl["outputs"]), batched=decl.get("batched", True),
                             doc=decl.get("doc", ""))
    return out


def check_custom_backend(name: str, backend: str, specs: Mapping[str, TaskSpec]) -> type:
    """Import a custom model's backend class and check it against the declared tasks.

    Raises ``SpecError`` naming the model: import failure, not a ``ModelBackend``
    subclass, or task types that differ from what the class declares in its optional
    ``task_specs`` class attribute. Runs in the app builder (start-up) and in the replica.
    """
    try:
        cls = import_object(backend)
    except SpecError as err:
        raise SpecError(f"model {name!r}: backend {backend!r}: {err}") from None
    if not is_backend_class(cls):
        raise SpecError(f"model {name!r}: backend {backend!r} is not a subclass of "
                        f"{BACKEND_BASE.replace(':', '.')}")
    own: Mapping[str, TaskSpec] | None = getattr(cls, "task_specs", None)
    for task, spec in specs.items() if own is not None else ():
        if task not in own:
            raise SpecError(f"model {name!r}: {backend} does not serve task {task!r}; it "
                            f"serves {sorted(own)}")
        theirs = own[task]
        mine = ({k: p.type for k, p in spec.inputs.items()}, dict(spec.outputs))
        want = ({k: p.type for k, p in theirs.inputs.items()}, dict(theirs.outputs))
        if mine != want:
            raise SpecError(f"model {name!r}: task {task!r} is declared with inputs "
                            f"{mine[0]} and outputs {mine[1]}, but {backend} takes "
                            f"{want[0]} and returns {want[1]}")
    return cls


def is_backend_class(obj: Any) -> bool:
    """Whether ``obj`` is a class deriving from ``BACKEND_BASE``, found by name in its MRO."""
    return isinstance(obj, type) and any(
        f"{k.__module__}:{k.__qualname__}" == BACKEND_BASE for k in obj.__mro__)


def model_class(config: Any) -> type:
    """The ``ModelBackend`` class that serves a ``ModelConfig`` (and its backend)."""
    if config.family == CUSTOM:
        return check_custom_backend(config.name, config.backend, config.tasks.specs)
    return family(config.family, config.family_module).model_class(config.backend)


def deployment_path(config: Any) -> str:
    """Import path of the Serve deployment the app builder binds for a ``ModelConfig``."""
    if config.family == CUSTOM:
        return DEFAULT_DEPLOYMENT
    return family(config.family, config.family_module).deployment
