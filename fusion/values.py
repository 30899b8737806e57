"""Check and coerce task inputs against the task catalog, naming the field at fault.

Runs in the router before a request reaches a model, and again in the replica, so bad input
becomes a 4xx wherever it enters. Binary values (image, audio) arrive as bytes here; turning
base64 or multipart into bytes is the HTTP layer's job (``fusion.http.payloads``).
"""

from __future__ import annotations

import math
from typing import Any

from fusion.errors import BadInput
from fusion.tasks import TaskSpec


def check_value(type_: str, value: Any, field: str) -> Any:
    """Return ``value`` coerced to ``type_`` or raise ``BadInput`` naming ``field``."""
    if type_.startswith("list["):
        if not isinstance(value, list | tuple):
            raise BadInput(f"{field} must be a list of {type_[5:-1]}", field=field)
        if not value:
            raise BadInput(f"{field} must not be empty", field=field)
        return [check_value(type_[5:-1], v, f"{field}[{i}]") for i, v in enumerate(value)]
    if type_ == "text":
        if not isinstance(value, str):
            raise BadInput(f"{field} must be a string", field=field)
        return check_unicode(value, field)
    if type_ in ("image", "audio"):
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise BadInput(f"{field} must be {type_} bytes (base64 in JSON)", field=field)
        if not value:
            raise BadInput(f"{field} is empty", field=field)
        return value
    if type_ == "bool":
        if not isinstance(value, bool):
            raise BadInput(f"{field} must be true or false", field=field)
        return value
    if type_ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise BadInput(f"{field} must be an integer", field=field)
        return value
    if type_ == "float":
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value)):
            raise BadInput(f"{field} must be a finite number", field=field)
        return float(value)
    if type_ == "embedding":
        if not isinstance(value, list | tuple) or not value:
            raise BadInput(f"{field} must be a non-empty list of numbers", field=field)
        return [check_value("float", v, f"{field}[{i}]") for i, v in enumerate(value)]
    if type_ == "labels":
        if not isinstance(value, list) or not all(
                isinstance(v, dict) and isinstance(v.get("label"), str)
                and isinstance(v.get("score"), int | float) for v in value):
            raise BadInput(f"{field} must be a list of {{label, score}} objects", field=field)
        return value
    return value  # json: anything that decoded


def check_unicode(text: str, field: str) -> str:
    """``text`` if it is valid Unicode. JSON's ``\\udc80`` escapes decode to lone surrogates,
    which no tokenizer or codec accepts: refuse them here, naming the field, rather than let a
    model fail on them with a 502."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInput(f"{field} is not valid Unicode (a lone surrogate "
                           f"{text[exc.start]!r} at character {exc.start})",
                           field=field) from None
    return text


def check_inputs(spec: TaskSpec, inputs: dict[str, Any], where: str = "",
                 prefix: str = "") -> dict[str, Any]:
    """Validate a task's inputs: required present, no unknown names, types right, defaults set."""
    if not isinstance(inputs, dict):
        raise BadInput(f"{prefix or 'inputs'} must be an object", field=prefix or "inputs")
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        raise BadInput(f"unknown input {unknown[0]!r}{f' for {where}' if where else ''}; "
                       f"expected {sorted(spec.inputs)}", field=prefix + unknown[0])
    out: dict[str, Any] = {}
    for name, param in spec.inputs.items():
        field = prefix + name
        if name not in inputs or inputs[name] is None:
            if param.required:
                raise BadInput(f"missing required input {field!r}", field=field)
            out[name] = param.default
            continue
        out[name] = check_value(param.type, inputs[name], field)
    return out


def check_limits(inputs: dict[str, Any], max_text_chars: int, max_list_items: int,
                 prefix: str = "inputs.") -> None:
    """Refuse texts and lists past the configured limits before any model sees them."""
    for name, value in inputs.items():
        field = prefix + name
        if isinstance(value, str) and len(value) > max_text_chars:
            raise BadInput(f"{field} is {len(value)} characters, over the {max_text_chars} "
                           "limit", field=field)
        if isinstance(value, list):
            if len(value) > max_list_items:
                raise BadInput(f"{field} has {len(value)} items, over the {max_list_items} "
                               "limit", field=field)
            check_limits({f"{name}[{i}]": v for i, v in enumerate(value)}, max_text_chars,
                         max_list_items, prefix)
