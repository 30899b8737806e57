"""Learned fusion's surface: feedback on fused answers, fitting, and fusion profiles.

``POST /v1/feedback`` labels a fused answer by its request id (the ``request_id`` every
pipeline answer carries); ``POST /v1/feedback/import`` takes many at once. Fitting and
promotion change what every caller gets, so they need an admin key; reading the profiles and
sending feedback need a key. The work is ``fusion.core.learning``'s, over the Gateway.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fusion.core.gateway import Gateway
from fusion.errors import FusionError
from fusion.http.auth import require_admin, require_key
from fusion.http.context import gateway
from fusion.http.errors import COMMON, responses

router = APIRouter(tags=["learning"])


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128,
                            description="the request_id of a fused answer")
    label: str = Field(min_length=1, max_length=256, description="the right label, one of "
                       "the labels that answer offered")
    step: str | None = Field(None, description="the fuse step, for a pipeline with several")
    weight: float = Field(1.0, gt=0, description="how much this label counts in a fit")
    pipeline: str | None = Field(None, description="if given, must be the pipeline that "
                                 "answered the request")


class FeedbackAnswer(BaseModel):
    request_id: str
    pipeline: str
    step: str
    label: str
    weight: float
    replaced: bool = Field(description="an earlier label of the same answer was replaced")
    profile: str | None = Field(description="the fusion profile that served the answer "
                                "(null: the hand-written weights)")
    served_label: str | None = Field(description="the top label the answer gave")


class FeedbackImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(max_length=10_000, description="feedback objects "
                                        "as POST /v1/feedback takes them")


class FitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str | None = Field(None, description="the fuse step, for a pipeline with several")
    since: float | None = Field(None, description="only answers recorded at or after this "
                                "time (epoch seconds)")
    until: float | None = Field(None, description="only answers recorded up to this time")
    min_labels: int | None = Field(None, ge=4, description="labels needed at least "
                                   "(default feedback.min_labels)")
    test_fraction: float = Field(0.3, ge=0.05, le=0.9, description="share held out for the "
                                 "evaluation")


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shadow: bool = Field(False, description="run beside the live answer without changing it")
    step: str | None = Field(None, description="with profile 'handwritten': which fuse step")


@router.post("/v1/feedback", status_code=201, dependencies=[Depends(require_key)],
             response_model=FeedbackAnswer, responses=responses((*COMMON, 400, 404, 422)))
async def feedback(body: Feedback, gw: Gateway = Depends(gateway)) -> dict:
    """Label a fused answer; a second label for the same answer replaces the first."""
    return await gw.learning.feedback(body.request_id, body.label, body.step, body.weight,
                                      body.pipeline)


@router.post("/v1/feedback/import", dependencies=[Depends(require_key)],
             responses=responses((*COMMON, 400, 422)))
async def import_feedback(body: FeedbackImport, gw: Gateway = Depends(gateway)) -> dict:
    """Many labels at once (``fusion feedback import labels.jsonl``): each item is checked
    as ``POST /v1/feedback`` checks it; the ones refused are listed with their error, the
    others stored."""
    imported = replaced = 0
    errors = []
    for i, item in enumerate(body.items):
        try:
            checked = Feedback.model_validate(item)
            out = await gw.learning.feedback(checked.request_id, checked.label, checked.step,
                                             checked.weight, checked.pipeline)
        except FusionError as err:
            errors.append({"index": i, **err.to_dict()})
            continue
        except ValueError as err:  # pydantic's ValidationError
            errors.append({"index": i, "code": "bad_input", "message": str(err)})
            continue
        imported += 1
        replaced += out["replaced"]
    return {"imported": imported, "replaced": replaced, "errors": errors}


@router.post("/v1/pipelines/{name}/fusion/fit", status_code=201,
             dependencies=[Depends(require_admin)],
             responses=responses((*COMMON, 400, 404, 422)))
async def fit(name: str, body: FitRequest | None = None,
              gw: Gateway = Depends(gateway)) -> dict:
    """Fit a fusion profile (calibration + weights) from the pipeline's labelled answers,
    evaluated on a held-out split; stored inactive (activate it to serve it)."""
    body = body or FitRequest()
    return await gw.learning.fit(name, body.step, body.since, body.until, body.min_labels,
                                 body.test_fraction)


@router.get("/v1/pipelines/{name}/fusion/profiles", dependencies=[Depends(require_key)],
            responses=responses((*COMMON, 400, 404, 422)))
async def profiles(name: str, gw: Gateway = Depends(gateway)) -> dict:
    """The pipeline's fusion profiles, newest first: evaluation, state (active, shadow,
    inactive), live accuracy on feedback, a shadow's agreement and accuracy."""
    return await gw.learning.profiles(name)


@router.post("/v1/pipelines/{name}/fusion/profiles/{profile}/activate",
             dependencies=[Depends(require_admin)],
             responses=responses((*COMMON, 400, 404, 422)))
async def activate(name: str, profile: str, body: ActivateRequest | None = None,
                   gw: Gateway = Depends(gateway)) -> JSONResponse:
    """Serve a profile (rollback: activate an older one; ``handwritten``: the pipeline's own
    weights), or run it as the shadow. Live on every router replica within
    ``feedback.poll_s`` seconds."""
    body = body or ActivateRequest()
    return JSONResponse(await gw.learning.activate(name, profile, body.shadow, body.step))
