"""Pipeline specs: load YAML data, check it against the models the app serves, freeze it.

Everything that can be wrong with a spec is found here, at start-up: unknown model or task,
a binding of the wrong type, an undeclared input, a missing required task input, a cycle, an
output that points nowhere. Each message names the file, the step and the problem, so
``serve run`` refuses to start with a sentence a user can act on.

The checks themselves live in ``fusion.pipeline.check`` and the frozen data model in
``fusion.pipeline.model``; both are re-exported here, the import path the rest of the app uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fusion.errors import SpecError
from fusion.pipeline.check import load_spec
from fusion.pipeline.model import (
    FUSE_METHODS,
    FUSE_TASK,
    Binding,
    InputSpec,
    PipelineSpec,
    StepSpec,
    builtin_task,
)
from fusion.tasks import ModelTasks

__all__ = ["BUILTIN_DIR", "FUSE_METHODS", "FUSE_TASK", "Binding", "InputSpec", "PipelineSpec",
           "StepSpec", "builtin_task", "load_pipelines", "load_spec"]

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "pipelines"


def load_pipelines(models: Mapping[str, ModelTasks], dirs: list[str] | None = None,
                   inline: list[Mapping[str, Any]] = (), skip_unservable: bool = True
                   ) -> dict[str, PipelineSpec]:
    """Load every ``*.yaml`` in ``dirs`` (default: the built-in folder) plus inline specs.

    A built-in pipeline whose models the app does not serve is left out (a profile may serve
    only some families); with ``skip_unservable=False``, or for pipelines the user gave
    explicitly (inline or a configured folder), that is an error.
    """
    found: dict[str, PipelineSpec] = {}
    builtin = dirs is None
    entries: list[tuple[Any, str, bool]] = []
    for folder in [str(BUILTIN_DIR)] if builtin else dirs:
        path = Path(folder)
        if not path.is_dir():
            raise SpecError(f"pipeline folder {folder} does not exist")
        for file in sorted(path.glob("*.y*ml")):
            try:
                data = yaml.safe_load(file.read_text())
            except yaml.YAMLError as exc:
                raise SpecError(f"{file}: not valid YAML: {exc}") from None
            entries.append((data, str(file), builtin and skip_unservable))
    entries += [(raw, f"config pipelines[{i}]", False) for i, raw in enumerate(inline)]
    for data, source, lenient in entries:
        if lenient and _unservable(data, models):
            continue
        spec = load_spec(data, source, models)
        if spec.name in found:
            raise SpecError(f"{source}: pipeline {spec.name!r} is defined twice "
                            f"(also in {found[spec.name].source})")
        found[spec.name] = spec
    return found


def _unservable(data: Any, models: Mapping[str, ModelTasks]) -> bool:
    steps = data.get("steps") if isinstance(data, Mapping) else None
    if not isinstance(steps, Mapping):
        return False
    return any(isinstance(s, Mapping) and "fuse" not in s and "template" not in s
               and _model_of(s) not in models
               for s in steps.values())


def _model_of(step: Mapping[str, Any]) -> Any:
    """The model a step calls: its own, or the one its built-in ``rank`` ranks with."""
    rank = step.get("rank")
    return rank.get("model") if isinstance(rank, Mapping) else step.get("model")
