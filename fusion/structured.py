"""Structured outputs and tool calls of a chat, checked in pure Python (no torch).

The OpenAI route checks ``response_format``, ``tools``, ``tool_choice`` and
``parallel_tool_calls`` before it starts a stream (a bad one is a 400 naming the field, never
an error event after a 200); a pipeline step's ``response_format:`` is checked when the app
starts; the language-model replica checks again (a pipeline or ``/v1/models/llm/chat``
reaches it directly) and compiles the grammar (``deployments.grammar``).

Tool calls use the Hermes format that Qwen2.5's chat template teaches its model
(``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``); ``parse_tool_calls``
turns it into OpenAI ``tool_calls`` (ids, names, arguments as a JSON string).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from fusion.errors import BadInput

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TOOL_OPEN = "<tool_call>"


@dataclass(frozen=True)
class ResponseFormat:
    """What the answer must be: JSON matching ``schema`` (``{"type": "object"}`` for
    ``json_object``)."""

    schema: dict[str, Any]
    strict: bool
    name: str


@dataclass(frozen=True)
class Tools:
    """The functions a chat may call and how: ``choice`` is auto, none, required or a name."""

    functions: tuple[dict[str, Any], ...]
    choice: str
    parallel: bool

    @property
    def forced(self) -> bool:
        """A call is required (``required`` or a named function): the grammar writes it."""
        return self.choice not in ("auto", "none")

    def called(self) -> list[dict[str, Any]]:
        """The functions the answer may call (one, when a function is named)."""
        if self.choice in ("auto", "required", "none"):
            return list(self.functions)
        return [f for f in self.functions if f["name"] == self.choice]

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools as the chat template takes them (OpenAI's shape, as Qwen2.5 reads it)."""
        return [{"type": "function", "function": f} for f in self.functions]


def check_response_format(value: Any, field: str = "response_format"
                          ) -> ResponseFormat | None:
    """OpenAI's ``response_format``: ``text`` (None), ``json_object`` or ``json_schema``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BadInput(f"{field} must be an object with a type (text, json_object or "
                       "json_schema)", field=field)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat({"type": "object"}, False, "json_object")
    if kind != "json_schema":
        raise BadInput(f"{field}.type must be text, json_object or json_schema; got {kind!r}",
                       field=f"{field}.type")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise BadInput(f"{field}.json_schema must be an object with name and schema",
                       field=f"{field}.json_schema")
    name = spec.get("name", "response")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadInput(f"{field}.json_schema.name must be 1-64 letters, digits, _ or -",
                       field=f"{field}.json_schema.name")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise BadInput(f"{field}.json_schema.schema must be a JSON schema object",
                       field=f"{field}.json_schema.schema")
    strict = spec.get("strict", False)
    if not isinstance(strict, bool):
        raise BadInput(f"{field}.json_schema.strict must be a boolean",
                       field=f"{field}.json_schema.strict")
    return ResponseFormat(schema, strict, name)


def check_tools(tools: Any, tool_choice: Any = None, parallel: Any = None) -> Tools | None:
    """OpenAI's ``tools`` / ``tool_choice`` / ``parallel_tool_calls``; None: no tools."""
    if tool_choice is not None and not tools:
        raise BadInput("tool_choice needs tools", field="tool_choice")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadInput("parallel_tool_calls must be a boolean", field="parallel_tool_calls")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        raise BadInput("tools must be a non-empty list of {type: function, function}",
                       field="tools")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise BadInput(f"{where} must be {{type: function, function: {{name, parameters}}}}"
                           " (only function tools are served)", field=where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadInput(f"{where}.function.name must be 1-64 letters, digits, _ or -",
                           field=f"{where}.function.name")
        if any(f["name"] == name for f in functions):
            raise BadInput(f"{where}.function.name {name!r} is given twice",
                           field=f"{where}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise BadInput(f"{where}.function.parameters must be a JSON schema object",
                           field=f"{where}.function.parameters")
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise BadInput(f"{where}.function.description must be a string",
                           field=f"{where}.function.description")
        if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
            raise BadInput(f"{where}.function.strict must be a boolean",
                           field=f"{where}.function.strict")
        functions.append({k: v for k, v in {"name": name, "description": fn.get("description"),
                                            "parameters": params,
                                            "strict": fn.get("strict")}.items()
                          if v is not None})
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadInput("tool_choice must be auto, none, required or "
                           "{type: function, function: {name}}", field="tool_choice")
        if not any(f["name"] == name for f in functions):
            raise BadInput(f"tool_choice names {name!r}, which is not among tools",
                           field="tool_choice")
        choice = name
    elif choice not in ("auto", "none", "required"):
        raise BadInput("tool_choice must be auto, none, required or "
                       "{type: function, function: {name}}", field="tool_choice")
    return Tools(tuple(functions), choice, True if parallel is None else parallel)


def parse_tool_calls(text: str, tools: Tools) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text without its ``<tool_call>`` blocks, and the calls in OpenAI's shape.
    A block that is not JSON naming a known function stays in the text (the model wrote it;
    the client sees it rather than losing it)."""
    names = {f["name"] for f in tools.called()}
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in TOOL_CALL.finditer(text):
        try:
            body = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(body, dict) or body.get("name") not in names \
                or not isinstance(body.get("arguments", {}), dict):
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": body["name"],
                                   "arguments": json.dumps(body.get("arguments", {}))}})
        if not tools.parallel:
            break
    kept.append(text[last:])
    return "".join(kept).strip() if calls else text, calls


def safe_prefix(text: str) -> int:
    """How much of a streamed answer may go out as content: up to the first ``<tool_call>``,
    holding back a tail that could still grow into one."""
    at = text.find(TOOL_OPEN)
    if at >= 0:
        return at
    for keep in range(min(len(TOOL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_OPEN.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)
