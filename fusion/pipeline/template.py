"""The ``template`` pipeline step: fill a prompt from inputs and step outputs, with no code.

```yaml
prompt:
  template: "Caption: {caption}\\nQuestion: {question}"
  with: {caption: $steps.caption.text, question: $inputs.question}
```

A placeholder is ``{name}`` for a key of ``with``; ``{{`` and ``}}`` are literal braces.
Nothing is evaluated: no attribute access, no format specs, no expressions (``str.format``
would let a template read attributes of its values). The spec checker (``fusion.pipeline.spec``)
calls ``parse_template`` at start-up, so a placeholder without a binding, a binding the
template never uses, or a stray brace stops the app naming the step.
"""

from __future__ import annotations

import re
from typing import Any

from fusion.tasks import Param, TaskSpec

TEMPLATE_TASK = "template"
# what a placeholder may be bound to: things with one obvious text form
TEMPLATE_TYPES = ("text", "int", "float", "bool", "list[text]", "json")
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def parse_template(template: Any) -> list[str]:
    """The placeholder names of ``template`` in order of first use; ``ValueError`` names the
    problem (not a string, a brace that is neither a placeholder nor doubled)."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError("template must be a non-empty string")
    names: list[str] = []
    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise ValueError(f"stray {token!r} at character {match.start()}: write {{name}} "
                             "for a value, {{ or }} for a literal brace")
        if match.group(1) not in names:
            names.append(match.group(1))
    return names


def check_template(template: Any, bindings: Any) -> list[str]:
    """A template step's placeholders, checked against its ``with:`` keys: each key must be
    used (an unused one is a typo); a missing one is reported as a missing task input."""
    try:
        names = parse_template(template)
    except ValueError as exc:
        raise ValueError(f"template: {exc}") from None
    unused = sorted(set(bindings) - set(names)) if isinstance(bindings, dict) else []
    if unused:
        raise ValueError(f"with: {unused} not used by the template (placeholders: {names})")
    return names


def template_task(names: list[str]) -> TaskSpec:
    """The task signature of one template step: each placeholder a required input."""
    return TaskSpec({n: Param("json") for n in names}, {"text": "text"}, batched=False,
                    doc="Fill a prompt from inputs and step outputs.")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def fill_template(template: str, values: dict[str, Any]) -> str:
    """``template`` with each ``{name}`` replaced by the text of ``values[name]``."""

    def sub(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return _text(values[match.group(1)])

    return _TOKEN.sub(sub, template)
