"""Chat messages, checked the same way in the router and in the language-model replica.

Pure Python (no torch): the OpenAI route checks a conversation before it starts a stream,
so a bad role is a 4xx naming ``messages[2].role`` rather than an error event after a 200;
the replica checks again, since a pipeline or ``/v1/models/llm/chat`` reaches it directly.
"""

from __future__ import annotations

import json
from typing import Any

from fusion.errors import BadInput
from fusion.values import check_unicode

# developer: OpenAI's newer "system"; tool: a function's result going back to the model
ROLES = ("system", "developer", "user", "assistant", "tool")


def _nonempty(text: str, field: str) -> str:
    if not text.strip():
        raise BadInput(f"{field} is empty", field=field)
    return text


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant turn's earlier ``tool_calls``, arguments parsed into objects (chat
    templates such as Qwen2.5's write them with ``tojson``)."""
    if not isinstance(calls, list):
        raise BadInput(f"{where} must be a list", field=where)
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadInput(f"{at} must be {{id, type: function, function: {{name, arguments}}}}",
                           field=at)
        args = fn.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise BadInput(f"{at}.function.arguments is not JSON",
                           field=f"{at}.function.arguments") from None
        out.append({"id": str(call.get("id", "")), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out


def chat_messages(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation of a ``chat`` call as ``{role, content}`` strings, or ``BadInput``
    naming the field (``messages[2].role``). ``prompt`` (+ ``system``) is the one-turn form
    pipelines use."""
    messages, prompt, system = item.get("messages"), item.get("prompt"), item.get("system")
    head = [{"role": "system", "content": system}] if system else []
    if messages is None:
        if prompt is None:
            raise BadInput("chat needs messages (or a prompt)", field="messages")
        return head + [{"role": "user", "content": _nonempty(prompt, "prompt")}]
    if prompt is not None:
        raise BadInput("give messages or prompt, not both", field="prompt")
    if not isinstance(messages, list) or not messages:
        raise BadInput("messages must be a non-empty list of {role, content} objects",
                       field="messages")
    out = list(head)
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise BadInput(f"{where} must be an object with role and content", field=where)
        role = msg.get("role")
        if role not in ROLES:
            raise BadInput(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}",
                           field=f"{where}.role")
        content = msg.get("content")
        extra: dict[str, Any] = {}
        if role == "assistant" and msg.get("tool_calls"):
            extra["tool_calls"] = _tool_calls(msg["tool_calls"], f"{where}.tool_calls")
            content = "" if content is None else content
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadInput(f"{where}.tool_call_id is required for a tool message",
                               field=f"{where}.tool_call_id")
            extra["tool_call_id"] = call_id
        if isinstance(content, list):  # OpenAI content parts; images became text upstream
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise BadInput(f"{where}.content[{j}] must be a text part here (image "
                                   "parts are read by the router's OpenAI route)",
                                   field=f"{where}.content[{j}]")
                texts.append(part["text"])
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise BadInput(f"{where}.content must be a string", field=f"{where}.content")
        check_unicode(content, f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content,
                    **extra})
    if not any(m["content"].strip() or m.get("tool_calls") for m in out):
        raise BadInput("messages are all empty", field="messages")
    return out
