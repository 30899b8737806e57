"""The family registry: every model family declared once, read by everything else.

A family is one ``Family`` value named ``FAMILY`` at the top level of its module: its tasks
(typed inputs and outputs), its backends and which tasks each serves, the ``ModelBackend``
class that runs it, its tiny test-model recipes and (rarely) its own Serve deployment class.
Config validation, ``/v1/models``, pipeline checks, the app builder and the source loader all
read these declarations, so adding a family means adding one module.

Discovery is cheap and torch-free: the modules of the ``deployments`` package whose source
has a top-level ``FAMILY =`` line are imported (family modules import torch and Ray lazily,
inside their methods), plus any module named in ``$FUSION_FAMILY_MODULES`` (comma separated)
or in a model's ``family_module``. So the router learns the families without loading torch.

``family: custom`` is the one family that is not declared in a module: the model's config
names its backend class by import path and declares its tasks (``custom_task_specs``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion.errors import SpecError
from fusion.tasks import ModelTasks, Param, TaskSpec, is_value_type

FAMILY_PACKAGE = "deployments"
DEFAULT_DEPLOYMENT = "fusion.serve.served:ModelDeployment"
CUSTOM = "custom"
ENV_MODULES = "FUSION_FAMILY_MODULES"
_DECLARES = re.compile(r"^FAMILY\s*(:[^=]*)?=", re.M)


@dataclass(frozen=True)
class Family:
    """One model family, as its module declares it.

    ``model`` is the ``ModelBackend`` subclass (or its ``"module:Class"`` path) that serves
    every backend of the family; ``backends`` maps a backend name to the tasks it serves, the
    first backend being the default. ``tiny`` maps a ``tiny:<recipe>`` name to the
    ``"module:function"`` that writes that test model into a folder. ``deployment`` is the
    Serve deployment class the app builder binds; the shared ``ServedModel`` fits every
    family so far (batching, threads, metrics, tracing).
    """

    name: str
    tasks: Mapping[str, TaskSpec]
    backends: Mapping[str, tuple[str, ...]]
    model: type | str
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
        for task, spec in self.tasks.items():
            check_spec_types(spec, f"{where} task {task!r}")

    @property
    def default_backend(self) -> str:
        return next(iter(self.backends))

    def model_tasks(self, backend: str | None = None) -> ModelTasks:
        backend = backend or self.default_backend
        tasks = self.backends[backend]
        return ModelTasks(self.name, backend, tasks, {t: self.tasks[t] for t in tasks})

    def model_class(self) -> type:
        return import_object(self.model) if isinstance(self.model, str) else self.model


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

    def scan(self) -> None:
        with self._lock:
            if self._scanned:
                return
            spec = importlib.util.find_spec(FAMILY_PACKAGE)
            for root in (spec.submodule_search_locations or []) if spec else []:
                for path in sorted(Path(root).glob("*.py")):
                    if _DECLARES.search(path.read_text(encoding="utf-8")):
                        self.add_module(f"{FAMILY_PACKAGE}.{path.stem}")
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
        if name not in families:
            raise SpecError(f"unknown family {name!r}; known: {sorted([*families, CUSTOM])} "
                            "(a family outside deployments/ needs family_module)")
        return families[name]


REGISTRY = _Registry()


def families() -> dict[str, Family]:
    """Every declared family by name (scanning ``deployments/`` on first use)."""
    return REGISTRY.families()


def family(name: str, module: str | None = None) -> Family:
    """The declared family ``name``, importing ``module`` first if given."""
    return REGISTRY.get(name, module)


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
    from deployments.base import ModelBackend

    try:
        cls = import_object(backend)
    except SpecError as err:
        raise SpecError(f"model {name!r}: backend {backend!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, ModelBackend)):
        raise SpecError(f"model {name!r}: backend {backend!r} is not a subclass of "
                        "deployments.base.ModelBackend")
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


def model_class(config: Any) -> type:
    """The ``ModelBackend`` class that serves a ``ModelConfig``."""
    if config.family == CUSTOM:
        return check_custom_backend(config.name, config.backend, config.tasks.specs)
    return family(config.family, config.family_module).model_class()


def deployment_path(config: Any) -> str:
    """Import path of the Serve deployment the app builder binds for a ``ModelConfig``."""
    if config.family == CUSTOM:
        return DEFAULT_DEPLOYMENT
    return family(config.family, config.family_module).deployment
