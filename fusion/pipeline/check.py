"""Checking one pipeline given as data against the models the app serves (``load_spec``).

Everything that can be wrong with a spec is found here, at start-up: unknown model or task,
a binding of the wrong type, an undeclared input, a missing required task input, a cycle, an
output that points nowhere. Each message names the file, the step and the problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fusion.errors import BadInput, SpecError
from fusion.pipeline.model import (
    FUSE_METHODS,
    FUSE_TASK,
    Binding,
    InputSpec,
    PipelineSpec,
    StepSpec,
    builtin_task,
)
from fusion.pipeline.refs import Ref, parse_condition, parse_ref
from fusion.pipeline.template import TEMPLATE_TASK, TEMPLATE_TYPES, check_template, template_task
from fusion.structured import check_response_format
from fusion.tasks import ModelTasks, accepts, is_value_type


def _literal_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and value:
        inner = {_literal_type(v) for v in value}
        if len(inner) == 1:
            return f"list[{inner.pop()}]"
        if inner <= {"int", "float"}:
            return "list[float]"
    return "json"


class _Checker:
    """Builds a ``PipelineSpec`` from raw data, raising ``SpecError`` at the first problem."""

    def __init__(self, raw: Mapping[str, Any], source: str, models: Mapping[str, ModelTasks]):
        self.raw, self.source, self.models = raw, source, models
        self.name = raw.get("name") if isinstance(raw, Mapping) else None

    def fail(self, where: str, problem: str) -> SpecError:
        label = f"pipeline {self.name!r}" if self.name else "pipeline"
        return SpecError(f"{self.source}: {label}: {where}: {problem}")

    def build(self) -> PipelineSpec:
        raw = self.raw
        if not isinstance(raw, Mapping):
            raise SpecError(f"{self.source}: a pipeline must be a mapping")
        unknown = set(raw) - {"name", "description", "inputs", "steps", "outputs", "cache",
                              "max_in_flight"}
        if unknown:
            raise self.fail("top level", f"unknown key(s) {sorted(unknown)}")
        if not isinstance(self.name, str) or not self.name:
            raise self.fail("name", "missing or not a string")
        inputs = self._inputs(raw.get("inputs") or {})
        steps_raw = raw.get("steps")
        if not isinstance(steps_raw, Mapping) or not steps_raw:
            raise self.fail("steps", "a pipeline needs at least one step")
        steps = {n: self._step(str(n), s, inputs) for n, s in steps_raw.items()}
        order = self._toposort(steps)
        for name in order:  # types need the outputs of upstream steps: check in order
            self._check_types(steps[name], inputs, steps)
        outputs, output_types = self._outputs(raw.get("outputs"), inputs, steps)
        cache = raw.get("cache") or {}
        limit = raw.get("max_in_flight")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise self.fail("max_in_flight", f"must be a positive integer, got {limit!r}")
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
        return PipelineSpec(self.name, str(raw.get("description", "")).strip(), inputs,
                            {n: steps[n] for n in order}, outputs, output_types, self.source,
                            digest[:16], cache.get("ttl_s"), limit, dict(raw))

    def _inputs(self, raw: Any) -> dict[str, InputSpec]:
        if not isinstance(raw, Mapping):
            raise self.fail("inputs", "must map input names to types")
        out = {}
        for name, decl in raw.items():
            if isinstance(decl, str):
                decl = {"type": decl}
            if not isinstance(decl, Mapping) or not is_value_type(str(decl.get("type"))):
                raise self.fail(f"input {name!r}", f"unknown type {decl!r}; expected one of "
                                "text, image, audio, embedding, labels, json, int, float, "
                                "bool or list[...]")
            has_default = "default" in decl
            required = bool(decl.get("required", not has_default))
            out[str(name)] = InputSpec(str(name), decl["type"], required, decl.get("default"),
                                       str(decl.get("description", "")))
        return out

    def _binding(self, where: str, value: Any) -> Binding:
        try:
            if isinstance(value, list) and any(isinstance(v, str) and v.startswith("$")
                                               for v in value):
                return Binding(items=tuple(self._binding(where, v) for v in value))
            ref = parse_ref(value)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        return Binding(ref=ref) if ref else Binding(literal=value)

    def _step(self, name: str, raw: Any, inputs: dict[str, InputSpec]) -> StepSpec:
        where = f"step {name!r}"
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a mapping")
        unknown = set(raw) - {"model", "task", "with", "when", "timeout_s", "cache", "fuse",
                              "template", "response_format"}
        if unknown:
            raise self.fail(where, f"unknown key(s) {sorted(unknown)}")
        if "fuse" in raw:
            model, task, spec = None, "fuse", FUSE_TASK
            opts = raw["fuse"] or {}
            if not isinstance(opts, Mapping) or opts.get("method", "weighted_mean") \
                    not in FUSE_METHODS:
                raise self.fail(where, f"fuse: method must be one of {FUSE_METHODS}")
            with_raw = {**{k: v for k, v in opts.items()}, **(raw.get("with") or {})}
        elif "template" in raw:
            model, task, with_raw = None, TEMPLATE_TASK, raw.get("with") or {}
            try:
                spec = template_task(check_template(raw["template"], with_raw))
            except ValueError as exc:
                raise self.fail(where, str(exc)) from None
        else:
            model, task = raw.get("model"), raw.get("task")
            if model not in self.models:
                raise self.fail(where, f"unknown model {model!r}; the app serves "
                                f"{sorted(self.models)}")
            mt = self.models[model]
            if task not in mt.tasks:
                raise self.fail(where, f"model {model!r} ({mt.family}/{mt.backend}) has no "
                                f"task {task!r}; it serves {list(mt.tasks)}")
            spec = mt.spec(task)
            with_raw = raw.get("with") or {}
            if raw.get("response_format") is not None:
                with_raw = self._response_format(where, raw["response_format"], spec,
                                                 with_raw)
        if raw.get("response_format") is not None and model is None:
            raise self.fail(where, "response_format: is for language-model steps")
        if not isinstance(with_raw, Mapping):
            raise self.fail(where, "with: must map task inputs to references or values")
        bindings = {}
        for key, value in with_raw.items():
            if key not in spec.inputs:
                raise self.fail(where, f"task {task!r} has no input {key!r}; it takes "
                                f"{sorted(spec.inputs)}")
            bindings[str(key)] = self._binding(f"{where} input {key!r}", value)
        for key, param in spec.inputs.items():
            if param.required and key not in bindings:
                raise self.fail(where, f"task {task!r} needs input {key!r}")
        when = None
        if raw.get("when") is not None:
            try:
                when = parse_condition(raw["when"])
            except ValueError as exc:
                raise self.fail(f"{where} when", str(exc)) from None
        refs = [r for b in bindings.values() for r in b.refs()] + ([when.ref] if when else [])
        for ref in refs:
            if ref.kind == "inputs" and ref.name not in inputs:
                raise self.fail(where, f"{ref.text} refers to an undeclared input; declared: "
                                f"{sorted(inputs)}")
        needs = tuple(sorted({r.name for r in refs if r.kind == "steps"}))
        cache = raw.get("cache", True)
        cache_on = cache if isinstance(cache, bool) else bool(cache.get("enabled", True))
        ttl = None if isinstance(cache, bool) else cache.get("ttl_s")
        timeout = raw.get("timeout_s")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise self.fail(where, "timeout_s must be a positive number")
        return StepSpec(name, model, task, bindings, dict(spec.outputs), needs, when,
                        timeout, cache_on, ttl, spec.streams_progress,
                        raw["template"] if task == TEMPLATE_TASK else None)

    def _response_format(self, where: str, value: Any, spec: Any,
                         with_raw: Any) -> dict[str, Any]:
        """A step's ``response_format:`` (OpenAI's shape): the answer is JSON the grammar
        enforces, read as the step's ``json`` output (typed json)."""
        if "response_format" not in spec.inputs or "json" not in spec.outputs:
            raise self.fail(where, "response_format: the task takes no response_format")
        if not isinstance(with_raw, Mapping) or "response_format" in with_raw:
            raise self.fail(where, "give response_format: once, not also under with:")
        try:
            check_response_format(value)
        except BadInput as err:
            raise self.fail(where, err.message) from None
        return {**with_raw, "response_format": value}

    def _toposort(self, steps: dict[str, StepSpec]) -> list[str]:
        for step in steps.values():
            for dep in step.needs:
                if dep not in steps:
                    raise self.fail(f"step {step.name!r}", f"refers to unknown step {dep!r}; "
                                    f"steps are {sorted(steps)}")
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(trail[trail.index(name):] + [name])
                raise self.fail(f"step {name!r}", f"cycle: {cycle}")
            state[name] = 1
            for dep in steps[name].needs:
                visit(dep, trail + [name])
            state[name] = 2
            order.append(name)

        for name in steps:
            visit(name, [])
        return order

    def _ref_type(self, ref: Ref, inputs: dict[str, InputSpec],
                  steps: dict[str, StepSpec], where: str) -> str:
        if ref.kind == "inputs":
            base, tail = inputs[ref.name].type, ref.path
        else:
            outputs = steps[ref.name].outputs
            if ref.field not in outputs:
                raise self.fail(where, f"{ref.text}: step {ref.name!r} has no output "
                                f"{ref.field!r}; it gives {sorted(outputs)}")
            base, tail = outputs[ref.field], ref.path[1:]
        return base if not tail else "json"

    def _binding_type(self, b: Binding, inputs, steps, where: str) -> str:
        if b.items is not None:
            kinds = {self._binding_type(i, inputs, steps, where) for i in b.items}
            return f"list[{kinds.pop()}]" if len(kinds) == 1 else "json"
        if b.ref is not None:
            return self._ref_type(b.ref, inputs, steps, where)
        return _literal_type(b.literal)

    def _check_types(self, step: StepSpec, inputs, steps) -> None:
        spec = builtin_task(step) if step.model is None else \
            self.models[step.model].spec(step.task)
        for key, b in step.bindings.items():
            where = f"step {step.name!r} input {key!r}"
            given = self._binding_type(b, inputs, steps, where)
            if step.task == TEMPLATE_TASK and step.model is None:
                if given not in TEMPLATE_TYPES:
                    raise self.fail(where, f"a template fills in {', '.join(TEMPLATE_TYPES)}"
                                    f", not {given}")
                continue
            expected = spec.inputs[key].type
            ok = accepts(expected, given) or given == "json" or (
                expected.startswith("list[") and given.startswith("list[")
                and accepts(expected[5:-1], given[5:-1]))
            if not ok:
                raise self.fail(where, f"expects {expected} but is bound to {given}")
        if step.when is not None:
            self._ref_type(step.when.ref, inputs, steps, f"step {step.name!r} when")

    def _outputs(self, raw: Any, inputs, steps) -> tuple[dict, dict]:
        if not isinstance(raw, Mapping) or not raw:
            raise self.fail("outputs", "a pipeline needs at least one output")
        outputs, types = {}, {}
        for name, value in raw.items():
            where = f"output {name!r}"
            alternatives = value if isinstance(value, list) else [value]
            refs = []
            for alt in alternatives:
                try:
                    ref = parse_ref(alt)
                except ValueError as exc:
                    raise self.fail(where, str(exc)) from None
                if ref is None:
                    raise self.fail(where, f"must be a reference, got {alt!r}")
                if ref.kind == "steps" and ref.name not in steps:
                    raise self.fail(where, f"{ref.text} points to unknown step {ref.name!r}")
                if ref.kind == "inputs" and ref.name not in inputs:
                    raise self.fail(where, f"{ref.text} points to undeclared input")
                refs.append(ref)
            kinds = {self._ref_type(r, inputs, steps, where) for r in refs}
            if len(kinds) != 1:
                raise self.fail(where, f"alternatives have different types {sorted(kinds)}")
            outputs[str(name)], types[str(name)] = tuple(refs), kinds.pop()
        return outputs, types


def load_spec(raw: Mapping[str, Any], source: str,
              models: Mapping[str, ModelTasks]) -> PipelineSpec:
    """Validate one pipeline given as data; ``source`` names it in error messages."""
    return _Checker(raw, source, models).build()
