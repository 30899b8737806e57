"""OpenAI's ``POST /v1/images/generations`` over any model with a ``generate`` task.

Images come back as ``b64_json`` only: the gateway keeps no files to point a URL at. Each of
the ``n`` images is one cached call with its own seed (``seed + i``), so a repeated request
is served from the cache.
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from fusion.core.gateway import Gateway
from fusion.errors import BadInput
from fusion.http.auth import require_key
from fusion.http.context import gateway, request_deadline
from fusion.http.openai.compat import OPENAI_ERRORS, name_params, pick_model

router = APIRouter(tags=["openai"], dependencies=[Depends(require_key)])


class ImageRequest(BaseModel):
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1, le=8)
    size: str = "64x64"
    response_format: str = "b64_json"
    seed: int = 0
    steps: int | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


@router.post("/v1/images/generations", responses=OPENAI_ERRORS,
             dependencies=[Depends(name_params({"width": "size", "height": "size"}))])
async def images(req: ImageRequest, gw: Gateway = Depends(gateway),
                 deadline: float | None = Depends(request_deadline)) -> dict:
    """Generate ``n`` images from a prompt."""
    model = pick_model(gw, req.model or next(
        (n for n, m in gw.models.items() if "generate" in m.tasks), None), "generate")
    if req.response_format != "b64_json":
        raise BadInput("only response_format 'b64_json' is supported (the gateway keeps no "
                       "image URLs)", field="response_format")
    try:
        width, height = (int(x) for x in req.size.lower().split("x"))
    except ValueError:
        raise BadInput("size must look like '512x512'", field="size") from None
    data = []
    for i in range(req.n):
        inputs = {"prompt": req.prompt, "width": width, "height": height, "seed": req.seed + i}
        if req.steps is not None:
            inputs["steps"] = req.steps
        out, _ = await gw.call_model(model, "generate", inputs, deadline=deadline)
        data.append({"b64_json": base64.b64encode(out["image"]).decode(),
                     "revised_prompt": req.prompt})
    return {"created": int(time.time()), "data": data}
