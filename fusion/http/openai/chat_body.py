"""The bodies of ``/v1/chat/completions`` and ``/v1/completions`` as Pydantic models.

They are the OpenAPI document's description of the routes, and their validation errors are
rendered naming the field as the client wrote it (``messages[1].role``). Numbers are strict
(``"0.5"`` and ``true`` are not numbers), as OpenAI's own API checks them. Fields OpenAI
defines that the gateway cannot honour are accepted by the schema only to be refused by
``generation_params`` with a 400 naming them: never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import Strict as StrictMode

from fusion.chat import ROLES
from fusion.errors import BadInput

MAX_CHOICES = 8
_UNSUPPORTED = ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "echo",
                "suffix", "best_of", "logit_bias")

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
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None
    logit_bias: Any = None


class ChatBody(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionBody(GenerationBody):
    prompt: StrictStr | list[StrictStr]


def generation_params(body: GenerationBody) -> dict[str, Any]:
    """The ``llm`` task inputs an OpenAI body asks for (``max_completion_tokens`` is the new
    name of ``max_tokens``); ranges are the replica's to check, since they need the model."""
    for name in _UNSUPPORTED:
        if getattr(body, name) not in (None, False, [], {}):
            raise BadInput(f"{name} is not supported by this gateway", field=name)
    params: dict[str, Any] = {}
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
