"""What the OpenAI-compatible routes share, so the official ``openai`` client works unchanged.

``model`` is a gateway model name (``GET /v1/models`` lists them). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}`` (rendered by ``fusion.http.errors``),
since that is what those clients parse; ``name_params`` tells the renderer which request
field a model input came from, so ``param`` names what the client sent.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from fusion.core.gateway import Gateway
from fusion.errors import BadInput, NotFound
from fusion.http.errors import MODEL_CALL, responses

OPENAI_ERRORS = responses(MODEL_CALL, openai=True)


class name_params:  # noqa: N801 - used as a function: Depends(name_params({...}))
    """A route dependency: errors about model input ``k`` name request field ``params[k]``
    (``audio`` → ``file``).

    A class, not a closure: Serve pickles the app into each replica, and a closure travels
    by value without the module globals its string annotations (``Request``) name, so
    FastAPI would take ``request`` for a required query parameter there.
    """

    def __init__(self, params: dict[str, str]) -> None:
        self.params = params

    async def __call__(self, request: Request) -> None:
        request.state.openai_params = self.params


def openai_model(info: dict[str, Any]) -> dict[str, Any]:
    """A model as OpenAI's ``Model`` object, with the gateway's family and tasks beside it."""
    return {"id": info["name"], "object": "model", "created": int(info.get("loaded_at", 0)),
            "owned_by": "fusion", "family": info.get("family"), "tasks": info.get("tasks")}


async def models_body(gw: Gateway) -> dict[str, Any]:
    """``GET /v1/models``: OpenAI's list (``object``, ``data``) and the gateway's own
    ``models`` (inputs, fingerprints), which the SDK, CLI and playground read, in one body."""
    models = await gw.list_models()
    return {"object": "list", "data": [openai_model(m) for m in models], "models": models}


def pick_model(gw: Gateway, name: str | None, task: str) -> str:
    """``name`` if it serves ``task``; else a 404 listing the models that do."""
    able = sorted(n for n, m in gw.models.items() if task in m.tasks)
    if not name:
        raise BadInput(f"model is required; one of {able}", field="model")
    if name not in gw.models or task not in gw.models[name].tasks:
        raise NotFound(f"The model '{name}' does not exist or cannot do {task}; "
                       f"use one of {able}", field="model")
    return name
