"""Chat messages, checked the same way in the router and in the language-model replica.

Pure Python (no torch): the OpenAI route checks a conversation before it starts a stream,
so a bad role is a 4xx naming ``messages[2].role`` rather than an error event after a 200;
the replica checks again, since a pipeline or ``/v1/models/llm/chat`` reaches it directly.
"""

from __future__ import annotations

from typing import Any

from fusion.errors import BadInput
from fusion.values import check_unicode

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer "system"


def _nonempty(text: str, field: str) -> str:
    if not text.strip():
        raise BadInput(f"{field} is empty", field=field)
    return text


def chat_messages(item: dict[str, Any]) -> list[dict[str, str]]:
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
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise BadInput("messages are all empty", field="messages")
    return out
