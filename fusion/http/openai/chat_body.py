"""The bodies of ``/v1/chat/completions`` and ``/v1/completions`` as Pydantic models.

They are the OpenAPI document's description of the routes, and their validation errors are
rendered naming the field as the client wrote it (``messages[1].role``). Numbers are strict
(``"0.5"`` and ``true`` are not numbers), as OpenAI's own API checks them. Fields OpenAI
defines that the gateway cannot honour are accepted by the schema only to be refused by
``generation_params`` with a 400 naming them: never silently ignored. ``FIELDS`` is the audit
of every field of OpenAI's two request bodies (the docs' table is checked against it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import Strict as StrictMode

from fusion.chat import ROLES
from fusion.errors import BadInput
from fusion.structured import check_response_format, check_tools

MAX_CHOICES = 8

# Every field of OpenAI's chat/completions and completions request bodies, and what the
# gateway does with it: "honoured", "no effect" (an identifier or hint that changes no
# answer), or "refused" (a 400 naming it unless it has the value in parentheses, which asks
# for nothing). docs/openai-fields.md lists the same (tests/unit/test_openai_audit.py).
FIELDS: dict[str, tuple[str, str]] = {
    "model": ("honoured", "picks the served model; optional when one model serves the task"),
    "messages": ("honoured", "system/developer/user/assistant/tool turns; image parts are "
                 "read by the captioner and OCR models"),
    "prompt": ("honoured", "completions: a string or a list of strings"),
    "max_tokens": ("honoured", "clamped to the context left beside the prompt"),
    "max_completion_tokens": ("honoured", "the new name of max_tokens"),
    "temperature": ("honoured", "0 is greedy (batched); above 0 samples"),
    "top_p": ("honoured", "nucleus sampling"),
    "seed": ("honoured", "a seeded answer is reproducible and cached"),
    "stop": ("honoured", "up to 4 strings"),
    "n": ("honoured", "up to 8 choices; seeded choices use seed + i"),
    "stream": ("honoured", "OpenAI's SSE chunks ending in [DONE]"),
    "stream_options": ("honoured", "include_usage"),
    "response_format": ("honoured", "text, json_object, json_schema (strict): constrained "
                        "decoding"),
    "tools": ("honoured", "function tools through the chat template; calls parsed into "
              "tool_calls"),
    "tool_choice": ("honoured", "auto, none, required, or a named function (constrained)"),
    "parallel_tool_calls": ("honoured", "false: at most one call"),
    "user": ("no effect", "an end-user identifier; logged nowhere, changes no answer"),
    "safety_identifier": ("no effect", "an end-user identifier; changes no answer"),
    "prompt_cache_key": ("no effect", "a caching hint; the gateway caches by content"),
    "metadata": ("no effect", "tags for stored completions; nothing is stored"),
    "store": ("refused", "(false) completions are not stored for distillation or evals"),
    "service_tier": ("refused", "(auto, default) one tier only"),
    "frequency_penalty": ("refused", "(0) no repetition penalties"),
    "presence_penalty": ("refused", "(0) no repetition penalties"),
    "logit_bias": ("refused", "({}) token biases are not applied"),
    "logprobs": ("refused", "(false, null) log probabilities are not returned"),
    "top_logprobs": ("refused", "(null, 0) log probabilities are not returned"),
    "functions": ("refused", "(null) the deprecated form of tools: use tools"),
    "function_call": ("refused", "(null) the deprecated form of tool_choice"),
    "audio": ("refused", "(null) text answers only (speech: /v1/audio/speech)"),
    "modalities": ("refused", "([\"text\"]) text answers only"),
    "prediction": ("refused", "(null) no predicted outputs"),
    "reasoning_effort": ("refused", "(null) not a reasoning model"),
    "verbosity": ("refused", "(null) not a reasoning model"),
    "web_search_options": ("refused", "(null) no web search"),
    "echo": ("refused", "(false) completions: the prompt is not echoed"),
    "suffix": ("refused", "(null) completions: no insertion"),
    "best_of": ("refused", "(1, null) completions: no server-side best-of"),
}
# the values of a refused field that ask for nothing (so a client sending defaults works)
_HARMLESS: dict[str, tuple[Any, ...]] = {
    "store": (False,), "service_tier": ("auto", "default"), "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0), "logprobs": (False,), "top_logprobs": (0,),
    "modalities": (["text"],), "echo": (False,), "best_of": (1,), "logit_bias": ({},),
}
_UNSUPPORTED = tuple(name for name, (status, _) in FIELDS.items() if status == "refused")

Strict = Annotated[float, StrictMode()]  # a number, not "0.5" nor true


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    """A text part, or an image as a data URL (read by the captioner and OCR models)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal[ROLES]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class GenerationBody(BaseModel):
    """What chat and completions share. Unknown fields are ignored as OpenAI ignores them;
    the ones OpenAI defines and the gateway cannot honour are refused (``_UNSUPPORTED``)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Strict | None = None
    top_p: Strict | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(1, ge=1, le=MAX_CHOICES)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    store: Any = None
    service_tier: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class ChatBody(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None


class CompletionBody(GenerationBody):
    prompt: StrictStr | list[StrictStr]


def generation_params(body: GenerationBody) -> dict[str, Any]:
    """The ``llm`` task inputs an OpenAI body asks for (``max_completion_tokens`` is the new
    name of ``max_tokens``); ranges are the replica's to check, since they need the model."""
    for name in _UNSUPPORTED:
        value = getattr(body, name, None)
        if value is not None and value not in _HARMLESS.get(name, ()):
            raise BadInput(f"{name} is not supported by this gateway "
                           f"({FIELDS[name][1].split(') ', 1)[-1]})", field=name)
    params: dict[str, Any] = {}
    if body.response_format is not None:
        check_response_format(body.response_format)  # a 400 before any stream starts
        params["response_format"] = body.response_format
    if isinstance(body, ChatBody) and body.tools is not None or \
            getattr(body, "tool_choice", None) is not None:
        tools = check_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        if tools is not None:
            params["tools"] = body.tools
            if body.tool_choice is not None:
                params["tool_choice"] = body.tool_choice
            if body.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = body.parallel_tool_calls
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            params[name] = float(getattr(body, name))
    if body.seed is not None:
        params["seed"] = body.seed
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    if stop:
        params["stop"] = stop
    return params
