"""References inside pipeline specs: ``$inputs.name`` and ``$steps.step.field[0].label``.

Parsed once when a spec loads, so the executor never parses strings on the request path.
Conditions (``when:``) are a reference, optionally negated with ``not``, optionally compared
with a JSON literal (``$steps.c.labels[0].score >= 0.5``). No ``eval``: a spec is config,
and config must not be code.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any

_REF = re.compile(r"^\$(inputs|steps)\.([A-Za-z_][\w-]*)((?:\.[A-Za-z_][\w-]*|\[\d+\])*)$")
_PATH = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")
_COND = re.compile(r"^(not\s+)?(\$\S+)(?:\s*(==|!=|<=|>=|<|>)\s*(.+))?$")
_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Ref:
    """A parsed reference. ``kind`` is "inputs" or "steps"; ``path`` indexes into the value."""

    kind: str
    name: str
    path: tuple[str | int, ...]
    text: str

    @property
    def field(self) -> str | None:
        """For a step reference, the output field (first path element)."""
        return self.path[0] if self.kind == "steps" and self.path else None

    def resolve(self, inputs: dict[str, Any], steps: dict[str, dict[str, Any] | None]) -> Any:
        value: Any = inputs.get(self.name) if self.kind == "inputs" else steps.get(self.name)
        for key in self.path:
            if value is None:
                return None
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                return None
        return value


def parse_ref(text: Any) -> Ref | None:
    """A ``Ref`` if ``text`` is a reference string, else None (it is a literal)."""
    if not isinstance(text, str) or not text.startswith("$"):
        return None
    m = _REF.match(text.strip())
    if not m:
        raise ValueError(f"malformed reference {text!r}: expected $inputs.NAME or "
                         "$steps.STEP.FIELD")
    kind, name, tail = m.groups()
    path = tuple(int(i) if i else f for f, i in _PATH.findall(tail))
    if kind == "steps" and not path:
        raise ValueError(f"reference {text!r} must name a step output: $steps.{name}.FIELD")
    return Ref(kind, name, path, text.strip())


@dataclass(frozen=True)
class Condition:
    ref: Ref
    negate: bool = False
    op: str | None = None
    literal: Any = None

    def holds(self, inputs: dict[str, Any], steps: dict[str, dict[str, Any] | None]) -> bool:
        value = self.ref.resolve(inputs, steps)
        if self.op is None:
            result = bool(value)
        else:
            try:
                result = bool(_OPS[self.op](value, self.literal))
            except TypeError:  # e.g. None < 0.5: the condition is simply not met
                result = False
        return result != self.negate


def parse_condition(text: Any) -> Condition:
    if not isinstance(text, str):
        raise ValueError("when: must be a string like '$inputs.flag' or "
                         "'$steps.s.labels[0].score < 0.5'")
    m = _COND.match(text.strip())
    if not m:
        raise ValueError(f"malformed condition {text!r}")
    negate, ref_text, op, literal_text = m.groups()
    ref = parse_ref(ref_text)
    if ref is None:
        raise ValueError(f"condition {text!r} must start with a reference")
    literal = None
    if op:
        try:
            literal = json.loads(literal_text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"condition {text!r}: {literal_text!r} is not a JSON literal "
                             "(quote strings)") from exc
    return Condition(ref, bool(negate), op, literal)
