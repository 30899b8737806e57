"""HTTP payloads ⇄ typed values: base64 and multipart in, JSON-safe values out.

Which fields are binary is known from the declared types (a pipeline's inputs, a task's
signature), so a client never tags its values: ``"image": "<base64>"`` is enough, and so is
``curl -F image=@cat.png``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

from fusion.errors import BadInput, PayloadTooLarge
from fusion.tasks import BINARY_TYPES


def decode_base64(value: Any, field: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise BadInput(f"{field} must be a base64 string", field=field)
    if value.startswith("data:") and "," in value:  # data URL
        value = value.split(",", 1)[1]
    if not value.strip():
        raise BadInput(f"{field} is empty", field=field)
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:  # url-safe alphabet is common in browsers
            return base64.urlsafe_b64decode(value.strip())
        except (binascii.Error, ValueError):
            raise BadInput(f"{field} is not valid base64", field=field) from None


def decode_json_inputs(inputs: dict[str, Any], types: dict[str, str],
                       prefix: str = "inputs.") -> dict[str, Any]:
    """Turn base64 strings of binary-typed fields into bytes; leave everything else."""
    out = dict(inputs)
    for name, value in inputs.items():
        type_ = types.get(name)
        if value is None or type_ is None:
            continue
        if type_ in BINARY_TYPES:
            out[name] = decode_base64(value, prefix + name)
        elif type_.startswith("list[") and type_[5:-1] in BINARY_TYPES and isinstance(value, list):
            out[name] = [decode_base64(v, f"{prefix}{name}[{i}]") for i, v in enumerate(value)]
    return out


def parse_form_value(value: str, type_: str | None, field: str) -> Any:
    """A multipart text part, parsed by the declared type."""
    if type_ is None or type_ == "text":
        return value
    if type_.startswith("list["):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise BadInput(f"{field} is not a JSON list", field=field) from None
        return [parse_form_value(v.strip(), type_[5:-1], field) for v in text.split(",")
                if v.strip()]
    if type_ == "int":
        try:
            return int(value)
        except ValueError:
            raise BadInput(f"{field} must be an integer", field=field) from None
    if type_ == "float":
        try:
            return float(value)
        except ValueError:
            raise BadInput(f"{field} must be a number", field=field) from None
    if type_ == "bool":
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise BadInput(f"{field} must be true or false", field=field)
    if type_ in BINARY_TYPES:
        return decode_base64(value, field)
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


async def read_form(form: Any, types: dict[str, str], max_bytes: int,
                    prefix: str = "inputs.") -> dict[str, Any]:
    """Starlette ``FormData`` → inputs; repeated fields become lists; files become bytes."""
    out: dict[str, Any] = {}
    total = 0
    for name in dict.fromkeys(form.keys()):
        values = []
        for item in form.getlist(name):
            field = prefix + name
            if hasattr(item, "read"):  # UploadFile
                data = await item.read()
                total += len(data)
                if total > max_bytes:
                    raise PayloadTooLarge(f"upload is over the {max_bytes} byte limit",
                                          field=field)
                values.append(data)
            else:
                values.append(parse_form_value(item, types.get(name), field))
        type_ = types.get(name, "")
        if len(values) > 1 and type_.startswith("list["):
            merged: list = []
            for v in values:
                merged.extend(v if isinstance(v, list) else [v])
            out[name] = merged
        elif type_.startswith("list[") and values and isinstance(values[0], bytes):
            out[name] = values
        else:
            out[name] = values[-1]
    return out


def encode_value(value: Any) -> Any:
    """JSON-safe: bytes become base64 strings, recursively."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(type(v) is float for v in value):  # embeddings: nothing inside to encode
            return value
        return [encode_value(v) for v in value]
    return value


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: a list answer carries tens of thousands of floats (64
    embeddings of 384), which the standard library takes ~50 ms to write and orjson ~3; a
    single answer's encoding was the largest item of a cached request's CPU (profiled with
    py-spy on the embedded runtime), so model and pipeline answers use it too."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
