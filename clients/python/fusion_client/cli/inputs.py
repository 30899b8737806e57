"""Pipeline inputs from the command line: ``--name value`` tokens → typed values, by the
pipeline's declared input types, or by name and look for ``call`` (rules in the package
docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion_client.encoding import BINARY_TYPES, CALL_INPUT_TYPES, element_type

# ``call`` has no declared input types: these names are always text, never numbers.
TEXT_NAMES = frozenset({"text", "prompt", "negative_prompt", "template", "language"})


class UsageError(Exception):
    """A command-line mistake found after argparse (bad input flag or value): exit 2."""


def split_input_args(extra: Sequence[str], pairs: Sequence[str]) -> list[tuple[str, str | None]]:
    """``--name value`` / ``--name=value`` / bare ``--flag`` tokens and ``-i name=value`` pairs
    → ``[(name, raw value or None)]``, in order."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; inputs are given as --NAME VALUE")
        name, eq, value = token[2:].partition("=")
        if not name:
            raise UsageError(f"unexpected argument {token!r}")
        if eq:
            out.append((name, value))
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append((name, extra[i + 1]))
            i += 1
        else:
            out.append((name, None))
        i += 1
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise UsageError(f"-i expects NAME=VALUE, got {pair!r}")
        out.append((name, value))
    return out


def _scalar(raw: str, type_: str | None, flag: str) -> Any:
    if type_ == "int":
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{flag} must be an integer, got {raw!r}") from None
    if type_ == "float":
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{flag} must be a number, got {raw!r}") from None
    if type_ == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{flag} must be true or false, got {raw!r}")
    if type_ in BINARY_TYPES:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UsageError(f"{flag}: no such file {raw!r}")
        return path
    if type_ in ("json", "labels"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw  # text and anything unknown


def parse_value(raws: list[str | None], type_: str | None, flag: str) -> Any:
    """The command-line strings given for one input → the value sent, by declared type."""
    inner = element_type(type_)
    if inner is not None or type_ == "embedding":
        inner = inner or "float"
        items: list[Any] = []
        for raw in raws:
            if raw is None:
                raise UsageError(f"{flag} needs a value")
            text = raw.strip()
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except ValueError:
                    raise UsageError(f"{flag} is not a JSON list: {raw!r}") from None
                if not isinstance(parsed, list):
                    raise UsageError(f"{flag} must be a list")
                items.extend(_scalar(v, inner, flag) if isinstance(v, str) and
                             inner in BINARY_TYPES else v for v in parsed)
            else:
                items.extend(_scalar(p.strip(), inner, flag) for p in text.split(",")
                             if p.strip())
        return items
    raw = raws[-1]
    if raw is None:
        if type_ in ("bool", None):
            return True
        raise UsageError(f"{flag} needs a value")
    return _scalar(raw, type_, flag)


def guess_type(name: str, raw: str | None) -> str:
    """Type of a ``call`` input, which has no declaration: by name, then by look."""
    if name in CALL_INPUT_TYPES:
        return CALL_INPUT_TYPES[name]
    if name in TEXT_NAMES or raw is None:
        return "text" if raw is not None else "bool"
    for type_, conv in (("int", int), ("float", float)):
        try:
            conv(raw)
            return type_
        except ValueError:
            pass
    if raw.strip().lower() in ("true", "false"):
        return "bool"
    return "text"


def build_inputs(given: list[tuple[str, str | None]],
                 types: dict[str, str] | None, where: str) -> dict[str, Any]:
    """Group the given flags by input name and parse them; ``types=None`` means guess."""
    grouped: dict[str, list[str | None]] = {}
    for name, raw in given:
        dashed = name.replace("-", "_")
        if types is None or (name not in types and dashed in types):
            name = dashed
        if types is not None and name not in types:
            raise UsageError(f"unknown input --{name} for {where}; expected: "
                             + ", ".join(f"--{n}" for n in types))
        grouped.setdefault(name, []).append(raw)
    inputs: dict[str, Any] = {}
    for name, raws in grouped.items():
        type_ = types[name] if types is not None else guess_type(name, raws[-1])
        inputs[name] = parse_value(raws, type_, f"--{name}")
    return inputs
