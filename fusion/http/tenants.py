"""Keys and usage: ``/v1/admin/keys`` (admin scope) and ``/v1/usage`` (every key, its own rows).

Keys are issued, changed and revoked at run time; the secret is in the answer to ``POST``
only. A change reaches every router replica within ``auth.key_refresh_s``
(``fusion.core.tenants``). Usage rows are per key, per model or pipeline, per UTC day.
"""

from __future__ import annotations

import contextlib
import csv
import io
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fusion.core.gateway import Gateway
from fusion.core.tenants import ANONYMOUS, Principal
from fusion.errors import NotFound, Unauthorized
from fusion.http.auth import principal, require_admin
from fusion.http.context import gateway
from fusion.http.errors import COMMON, responses
from fusion.store.keys import KeyRecord
from fusion.store.usage import COUNTS

admin = APIRouter(tags=["keys"], dependencies=[Depends(require_admin)])
usage = APIRouter(tags=["usage"])

Globs = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                  Field(max_length=256, description="glob patterns (fnmatch: text, clip*, *); "
                        "absent or null: all")]
Positive = Annotated[int | None, Field(ge=1)]


class KeyChange(BaseModel):
    """What ``PATCH`` may change; ``null`` clears a limit or allow-list (unlimited, all)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    owner: str | None = Field(None, max_length=200, description="team or owner")
    models: Globs = None
    tasks: Globs = None
    pipelines: Globs = None
    rpm: Positive = Field(None, description="requests per minute (a list of N counts N, a "
                          "pipeline each of its model steps)")
    tpm: Positive = Field(None, description="tokens per minute on the LLM routes")
    max_concurrency: Positive = Field(None, description="requests at once, all replicas")
    quota_requests: Positive = Field(None, description="requests per quota period")
    quota_tokens: Positive = Field(None, description="LLM tokens per quota period")
    quota_compute_s: float | None = Field(None, gt=0, description="compute seconds per "
                                          "quota period")
    quota_period: Literal["day", "month"] | None = Field(None, description="UTC day or "
                                                         "month (default month)")
    expires_at: datetime | None = Field(None, description="ISO 8601; absent: never")


class KeyCreate(KeyChange):
    name: str = Field(..., min_length=1, max_length=200)
    scopes: list[Literal["user", "admin"]] = Field(
        default_factory=lambda: ["user"], min_length=1,
        description="user: the model and pipeline routes; admin: also the admin routes")


class KeyInfo(BaseModel):
    """An issued key, without its secret."""

    id: str
    name: str
    owner: str | None
    scopes: list[str]
    models: list[str] | None
    tasks: list[str] | None
    pipelines: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    quota_requests: int | None
    quota_tokens: int | None
    quota_compute_s: float | None
    quota_period: str
    created_at: str
    updated_at: str
    expires_at: str | None
    revoked_at: str | None
    active: bool


class KeyCreated(KeyInfo):
    key: str = Field(..., description="the secret: shown this once, never stored")


class KeyList(BaseModel):
    data: list[KeyInfo]


class UsageRow(BaseModel):
    key_id: str
    key_name: str | None = None
    model: str | None = None
    pipeline: str | None = None
    day: str
    requests: int
    items: int
    prompt_tokens: int
    completion_tokens: int
    compute_s: float
    cache_hits: int
    errors: int
    rejected: int


class UsageList(BaseModel):
    data: list[UsageRow]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def _info(record: KeyRecord) -> dict[str, Any]:
    out = record.public()
    for k in ("created_at", "updated_at", "expires_at", "revoked_at"):
        out[k] = _iso(out[k])
    return out


def _columns(change: KeyChange, fields: set[str]) -> dict[str, Any]:
    values = change.model_dump(include=fields)
    if "expires_at" in values and values["expires_at"] is not None:
        values["expires_at"] = values["expires_at"].timestamp()
    if values.get("quota_period", "") is None:
        values["quota_period"] = "month"
    return values


@admin.post("/v1/admin/keys", status_code=201, response_model=KeyCreated,
            responses=responses((*COMMON, 400, 422)))
async def create_key(body: KeyCreate, gw: Gateway = Depends(gateway)) -> dict:
    """Issue a key; the answer carries its secret (``key``), the only time it is shown."""
    fields = body.model_fields_set - {"name", "scopes"}
    store = await gw.tenants.run(gw.tenants.key_store)
    record, token = await gw.tenants.run(store.create, body.name, scopes=body.scopes,
                                         **_columns(body, fields))
    return {**_info(record), "key": token}


@admin.get("/v1/admin/keys", response_model=KeyList, responses=responses(COMMON))
async def list_keys(owner: str | None = None, include_revoked: bool = True,
                    gw: Gateway = Depends(gateway)) -> dict:
    """Every issued key (no secrets), oldest first; ``owner`` filters by team."""
    store = await gw.tenants.run(gw.tenants.key_store)
    records = await gw.tenants.run(store.list, owner, include_revoked)
    return {"data": [_info(r) for r in records]}


async def _one(gw: Gateway, key_id: str, fn: str, **kw: Any) -> dict:
    store = await gw.tenants.run(gw.tenants.key_store)
    record = await gw.tenants.run(getattr(store, fn), key_id, **kw)
    if record is None:
        raise NotFound(f"no key {key_id!r}", field="id")
    gw.tenants.forget(key_id)
    return _info(record)


@admin.get("/v1/admin/keys/{key_id}", response_model=KeyInfo,
           responses=responses((*COMMON, 404)))
async def get_key(key_id: str, gw: Gateway = Depends(gateway)) -> dict:
    return await _one(gw, key_id, "get")


@admin.patch("/v1/admin/keys/{key_id}", response_model=KeyInfo,
             responses=responses((*COMMON, 400, 404, 422)))
async def update_key(key_id: str, body: KeyChange, gw: Gateway = Depends(gateway)) -> dict:
    """Change limits, allow-lists, owner, name or expiry (fields sent; ``null`` clears)."""
    return await _one(gw, key_id, "update", **_columns(body, body.model_fields_set))


@admin.delete("/v1/admin/keys/{key_id}", response_model=KeyInfo,
              responses=responses((*COMMON, 404)))
async def revoke_key(key_id: str, gw: Gateway = Depends(gateway)) -> dict:
    """Revoke: refused on every router replica within ``auth.key_refresh_s``."""
    return await _one(gw, key_id, "revoke")


@usage.get("/v1/usage", response_model=UsageList, responses={
    200: {"content": {"application/json": {}, "text/csv": {}},
          "description": "rows as JSON, or CSV with format=csv"}, **responses(COMMON)})
async def get_usage(key_id: str | None = None,
                    day_from: str | None = Query(None, alias="from", pattern=r"^\d{4}-\d\d-\d\d$"),
                    day_to: str | None = Query(None, alias="to", pattern=r"^\d{4}-\d\d-\d\d$"),
                    model: str | None = None, pipeline: str | None = None,
                    format: Literal["json", "csv"] = "json",
                    gw: Gateway = Depends(gateway), caller: Principal = Depends(principal)
                    ) -> Any:
    """Usage per key, model or pipeline, and UTC day: a key sees its own rows, an admin key
    everyone's (``key_id`` filters). ``requests`` counts answered calls, ``rejected`` the
    ones a limit refused."""
    if caller is ANONYMOUS:
        raise Unauthorized("usage is per key: send 'Authorization: Bearer <key>'",
                           field="authorization")
    keys = [key_id] if key_id else None
    if not caller.admin:
        keys = [caller.key_id]
    kind, name = ("pipeline", pipeline) if pipeline else ("model", model) if model \
        else (None, None)
    # this replica's counts so far, so a caller sees its own requests at once (a failure is
    # logged by the recorder; the rows already written still answer)
    with contextlib.suppress(Exception):
        await gw.tenants.usage.flush()
    store = await gw.tenants.run(gw.tenants.usage_store)
    rows = await gw.tenants.run(store.query, keys, day_from, day_to, kind, name)
    keys_store = await gw.tenants.run(gw.tenants.key_store)
    names = await gw.tenants.run(keys_store.names) if rows else {}
    data = [{"key_id": r["key_id"], "key_name": names.get(r["key_id"]),
             r["kind"]: r["name"], "day": r["day"], **{c: r[c] for c in COUNTS}}
            for r in rows]
    if format == "csv":
        out = io.StringIO()
        columns = ["key_id", "key_name", "model", "pipeline", "day", *COUNTS]
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data)
        return Response(out.getvalue(), media_type="text/csv")
    return {"data": data}
