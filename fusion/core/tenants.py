"""Who is calling, what they may use and how much: keys, allow-lists, limits, usage.

``Tenants.authenticate`` turns an ``Authorization`` header into a :class:`Principal`: a
static key (``FUSION_API_KEYS``/``FUSION_ADMIN_KEYS`` or config digests: every permission,
no limits, as before), an issued key (``fusion.store.keys``: allow-lists and limits) or the
anonymous caller (only while anonymous access is allowed). The HTTP layer binds it to the
request (a context variable), and the ``Gateway`` asks :meth:`Tenants.guard` before any
model work: allow-list (403 naming the model or pipeline), then limits (429), then usage.

Revocation reaches every router replica within ``auth.key_refresh_s`` (+ one query): each
replica keeps what it read of a key for that long, then reads the row again (one primary-key
look-up per active key per second per replica). Polling was chosen over Redis pub/sub: the
database is the one source of truth, nothing is missed when a replica was disconnected, and
it works without Redis.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fusion.config import AppConfig
from fusion.core.keys import KeyRing, hash_key
from fusion.core.limits import Decision, KeyLimits, LocalLimits, RedisLimits
from fusion.core.usage import RedisUsage, UsageRecorder
from fusion.errors import Forbidden, Overloaded, QuotaExceeded, RateLimited, Unauthorized
from fusion.store.database import Database, resolve_url
from fusion.store.keys import KeyRecord, KeyStore, parse_token
from fusion.store.usage import UsageStore

log = logging.getLogger("fusion.core.tenants")

ADMIN_DISABLED = ("admin routes are disabled: no admin key is configured (set "
                  "FUSION_ADMIN_KEYS or auth.admin_key_hashes)")


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    key_id: str
    name: str
    admin: bool = False
    owner: str | None = None
    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    pipelines: tuple[str, ...] | None = None
    limits: KeyLimits | None = None
    counted: bool = True  # usage is recorded (not for the anonymous caller)

    @classmethod
    def of(cls, record: KeyRecord) -> Principal:
        limits = KeyLimits(record.id, record.rpm, record.tpm, record.max_concurrency,
                           record.quota_requests, record.quota_tokens,
                           record.quota_compute_s, record.quota_period)
        return cls(record.id, record.name, "admin" in record.scopes, record.owner,
                   record.models, record.tasks, record.pipelines,
                   limits if limits.any else None)

    def may_use_model(self, model: str, task: str | None = None) -> bool:
        return _allowed(self.models, model) and (task is None or _allowed(self.tasks, task))

    def may_use_pipeline(self, name: str) -> bool:
        return _allowed(self.pipelines, name)


def _allowed(globs: tuple[str, ...] | None, name: str) -> bool:
    return globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs)


ANONYMOUS = Principal("anonymous", "anonymous", counted=False)
_current: ContextVar[Principal | None] = ContextVar("fusion_principal", default=None)
_headers: ContextVar[dict[str, str] | None] = ContextVar("fusion_rate_headers", default=None)


def bind(principal: Principal | None, headers: dict[str, str] | None = None) -> None:
    """Make ``principal`` the caller of the running request (set by ``fusion.http.auth``);
    ``headers`` receives the ``x-ratelimit-*`` headers of its limit checks."""
    _current.set(principal)
    _headers.set(headers)


def current() -> Principal | None:
    return _current.get()


class Tenants:
    """The key ring, issued keys (cached ``key_refresh_s``), limits and usage of a replica."""

    def __init__(self, config: AppConfig, recorder: Any = None) -> None:
        auth = config.auth
        self.ring = KeyRing.from_config(auth)
        self.anonymous_allowed = auth.anonymous if auth.anonymous is not None \
            else not self.ring.enabled
        self.admin_configured = bool(self.ring.admins)
        self.refresh_s = auth.key_refresh_s
        self.fail_open = auth.on_limiter_error == "open"
        self.recorder = recorder
        self._db_url = config.database.url
        self._db: Database | None = None
        self._keys: KeyStore | None = None
        self._usage: UsageStore | None = None
        self._open_lock = threading.RLock()
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        # one Redis client for limits and usage: the end of a request is one round trip
        self.redis = _redis_client(auth.rate_limit_redis_url) if auth.rate_limit_redis_url \
            else None
        self.limits = RedisLimits("", client=self.redis) if self.redis is not None \
            else LocalLimits()
        # usage shared in Redis under a name of this database: replicas of one gateway
        # adopt each other's batches, never another gateway's
        redis_usage = RedisUsage("", "fusion:usage:" + hashlib.sha256(
            resolve_url(self._db_url).encode()).hexdigest()[:12], client=self.redis) \
            if self.redis is not None else None
        self.usage = UsageRecorder(self.usage_store, auth.usage_flush_s, redis_usage)
        # the series the dashboard plots exist from the start at 0 (a panel of rare refusals
        # reads 0, not "No data", on a healthy gateway)
        for name, tags in (("fusion_limiter_errors_total", {}),
                           ("fusion_key_rejections_total", {"key": "anonymous",
                                                            "reason": "none"})):
            self._metric(name, tags, 0)

    # ---- the durable store, opened on first need (a keyless laptop never touches it) ----
    @staticmethod
    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking store call in a worker thread, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def database(self) -> Database:
        with self._open_lock:
            if self._db is None:
                self._db = Database.from_config(self._db_url)
            return self._db

    def key_store(self) -> KeyStore:
        """The issued keys (blocking: call it from a thread)."""
        with self._open_lock:
            if self._keys is None:
                self._keys = KeyStore(self.database())
            return self._keys

    def usage_store(self) -> UsageStore:
        with self._open_lock:
            if self._usage is None:
                self._usage = UsageStore(self.database())
            return self._usage

    # ---- who is calling ----
    async def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            if self.anonymous_allowed:
                return ANONYMOUS
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                               field="authorization")
        parsed = parse_token(token)
        if parsed is not None:
            return await self._issued(*parsed)
        digest = hash_key(token)
        if KeyRing._matches(digest, self.ring.users):
            admin = KeyRing._matches(digest, self.ring.admins)
            return Principal(f"static-{digest[:12]}", "admin" if admin else "static", admin)
        if self.anonymous_allowed and not self.ring.enabled:
            return ANONYMOUS  # auth off: a key is not asked for, so any key is not checked
        raise Unauthorized("invalid API key", field="authorization")

    async def _issued(self, key_id: str, secret: str) -> Principal:
        record = await self.record(key_id)
        if record is None or not record.matches(secret):
            raise Unauthorized("invalid API key", field="authorization")
        if record.revoked_at is not None:
            raise Unauthorized(f"API key {key_id} was revoked", field="authorization")
        if not record.active():
            raise Unauthorized(f"API key {key_id} has expired", field="authorization")
        return Principal.of(record)

    async def record(self, key_id: str) -> KeyRecord | None:
        """The key's row as this replica last read it, read again after ``refresh_s``."""
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.refresh_s:
            return cached[0]
        try:
            record = await asyncio.to_thread(lambda: self.key_store().get(key_id))
        except Exception as exc:
            if cached is not None:  # the database is down: keep serving what we knew
                log.warning("key store unreachable (%s); key %s as read %.0fs ago",
                            type(exc).__name__, key_id, now - cached[1])
                return cached[0]
            raise Overloaded("the key store is unreachable; retry shortly") from exc
        self._cache[key_id] = (record, now)
        if len(self._cache) > 100_000:  # bounded: forget the oldest reads
            for k in sorted(self._cache, key=lambda k: self._cache[k][1])[:10_000]:
                del self._cache[k]
        return record

    def forget(self, key_id: str) -> None:
        """Drop this replica's copy at once (the replica that revoked or changed it)."""
        self._cache.pop(key_id, None)

    @staticmethod
    def require_admin(principal: Principal, admin_configured: bool) -> None:
        if principal.admin:
            return
        if principal is ANONYMOUS and not admin_configured:
            raise Forbidden(ADMIN_DISABLED, field="authorization")
        if principal is ANONYMOUS:
            raise Unauthorized("this route needs an admin key: send 'Authorization: Bearer "
                               "<admin key>'", field="authorization")
        raise Forbidden("this route needs an admin key", field="authorization")

    # ---- what the caller may use ----
    @staticmethod
    def visible_models(names: Iterable[str]) -> list[str]:
        p = current()
        return [n for n in names if p is None or p.may_use_model(n)]

    @staticmethod
    def visible_pipelines(names: Iterable[str]) -> list[str]:
        p = current()
        return [n for n in names if p is None or p.may_use_pipeline(n)]

    @staticmethod
    def check_pipeline(name: str) -> None:
        """403 unless the calling key may use pipeline ``name``."""
        p = current()
        if p is not None and not p.may_use_pipeline(name):
            raise Forbidden(f"key {p.name!r} may not use pipeline {name!r}", field="pipeline")

    @staticmethod
    def check_model(model: str, task: str | None = None) -> None:
        """403 unless the calling key may use ``model`` (and ``task``)."""
        p = current()
        if p is None:
            return
        if not p.may_use_model(model):
            raise Forbidden(f"key {p.name!r} may not use model {model!r}", field="model")
        if task is not None and not p.may_use_model(model, task):
            raise Forbidden(f"key {p.name!r} may not use task {task!r}", field="task")

    def guard(self, kind: str, name: str, task: str | None = None, cost: int = 1) -> Guard:
        """``async with tenants.guard("model", m, task, cost) as g: ...; g.done(...)``."""
        return Guard(self, current(), kind, name, task, cost)

    async def admit(self, principal: Principal, kind: str, name: str, cost: int
                    ) -> Decision | None:
        limits = principal.limits
        if limits is None:
            return None
        try:
            decision = await self.limits.admit(limits, cost)
        except Exception as exc:
            self._metric("fusion_limiter_errors_total", {})
            log.warning("rate limiter unreachable (%s: %s): failing %s", type(exc).__name__,
                        exc, "open" if self.fail_open else "closed")
            if self.fail_open:
                return None
            raise Overloaded("the rate limiter is unreachable; retry shortly") from exc
        if decision.allowed:
            return decision
        self._metric("fusion_key_rejections_total", {"key": principal.name,
                                                     "reason": decision.reason})
        if principal.counted:
            await self.usage.commit(principal.key_id, kind, name, rejected=1)
        headers = rate_headers(limits, decision)
        if decision.reason.startswith("quota"):
            what = decision.reason.removeprefix("quota_")
            raise QuotaExceeded(f"key {principal.name!r} used its {limits.quota_period}ly "
                                f"quota of {what}; it resets in {decision.retry_after_s:.0f}s",
                                field="authorization", retry_after_s=decision.retry_after_s,
                                headers=headers)
        limit = {"rpm": f"{limits.rpm} requests per minute",
                 "tpm": f"{limits.tpm} tokens per minute",
                 "concurrency": f"{limits.max_concurrency} concurrent requests"}[decision.reason]
        if decision.reason == "rpm" and limits.rpm and cost > limits.rpm:
            raise RateLimited(f"this request costs {cost} (items or model steps), over key "
                              f"{principal.name!r}'s limit of {limit}", field="inputs",
                              retry_after_s=60.0, headers=headers)
        raise RateLimited(f"key {principal.name!r} is over its limit of {limit}",
                          field="authorization", retry_after_s=decision.retry_after_s,
                          headers=headers)

    def _metric(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        if self.recorder is not None:
            try:
                self.recorder.inc(name, tags, value)
            except Exception:  # a metric never fails a request
                log.debug("metric %s not recorded", name, exc_info=True)

    async def aclose(self) -> None:
        await self.usage.aclose()
        await self.limits.aclose()
        if self._db is not None:
            self._db.close()


def _redis_client(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                   client_name="fusion-tenants")


def rate_headers(limits: KeyLimits, decision: Decision) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers OpenAI's clients read."""
    headers: dict[str, str] = {}
    if limits.rpm:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        if decision.remaining_requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(max(0, decision.remaining_requests))
        headers["x-ratelimit-reset-requests"] = f"{max(decision.reset_s, 0):.3f}s"
    if limits.tpm:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        if decision.remaining_tokens is not None:
            headers["x-ratelimit-remaining-tokens"] = str(max(0, decision.remaining_tokens))
    return headers


class Guard:
    """One model call or pipeline run of one principal: checked, limited, counted."""

    def __init__(self, tenants: Tenants, principal: Principal | None, kind: str, name: str,
                 task: str | None, cost: int) -> None:
        self.tenants, self.principal = tenants, principal
        self.kind, self.name, self.task, self.cost = kind, name, task, cost
        self.decision: Decision | None = None
        self.counts: dict[str, float] | None = None

    async def __aenter__(self) -> Guard:
        p = self.principal
        if p is None:
            return self
        if self.kind == "pipeline":
            Tenants.check_pipeline(self.name)
        else:
            Tenants.check_model(self.name, self.task)
        self.decision = await self.tenants.admit(p, self.kind, self.name, self.cost)
        sink = _headers.get()
        if sink is not None and self.decision is not None:
            sink.update(self.headers())
        return self

    def done(self, items: int = 1, cache_hits: int = 0, compute_s: float = 0.0,
             prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.counts = {"requests": 1, "items": items, "cache_hits": cache_hits,
                       "compute_s": compute_s, "prompt_tokens": prompt_tokens,
                       "completion_tokens": completion_tokens}

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        p = self.principal
        if p is None:
            return
        failed = exc_type is not None and not issubclass(exc_type, asyncio.CancelledError)
        if self.counts is not None or failed:
            self.tenants._metric("fusion_key_requests_total", {
                "key": p.name, "outcome": "ok" if self.counts is not None else "error"})
        limits, decision, counts = p.limits, self.decision, self.counts
        tokens = int(counts["prompt_tokens"] + counts["completion_tokens"]) if counts else 0
        compute_s = counts["compute_s"] if counts else 0.0
        usage = counts if counts is not None else {"errors": 1} if failed else None
        limiter = self.tenants.limits
        ends = limits is not None and decision is not None
        if isinstance(limiter, RedisLimits) and p.counted and usage is not None:
            # one round trip: the usage counts and the limits' end of the request together
            def also(pipe: Any) -> bool:
                return ends and limiter.queue_end(pipe, limits, decision.lease, tokens,
                                                  compute_s)

            await self.tenants.usage.commit(p.key_id, self.kind, self.name, also=also, **usage)
            return
        if ends:
            try:
                await limiter.release(limits, decision.lease)
                await limiter.charge(limits, tokens, compute_s)
            except Exception as err:  # the lease expires on its own (LEASE_S)
                log.warning("rate limiter release failed: %s", err)
        if p.counted and usage is not None:
            await self.tenants.usage.commit(p.key_id, self.kind, self.name, **usage)

    def headers(self) -> dict[str, str]:
        if self.principal is None or self.principal.limits is None or self.decision is None:
            return {}
        return rate_headers(self.principal.limits, self.decision)
