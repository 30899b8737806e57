"""Per-key rate limits, concurrency and quotas, shared by every router replica through Redis.

One Lua script checks every limit of a request and then charges them, atomically, so a
request refused by one limit never consumes another, and two replicas never both take the
last unit:

- requests per minute: GCRA (the generic cell rate algorithm, as redis-cell and Stripe use):
  one number per key, the "theoretical arrival time"; ``limit`` requests may come at once,
  then one per ``60/limit`` s. A request of cost ``n`` (a list of n items, a pipeline of n
  model steps) takes n cells;
- tokens per minute (LLM routes): the same cells, checked before (refused while the key is
  over) and charged after the answer with its real token count;
- concurrent requests: a sorted set of leases scored by their expiry, so a replica that dies
  holding leases frees them after ``LEASE_S`` instead of leaking them forever;
- quotas per period (requests, tokens, compute seconds): counters that expire at the end of
  the period (UTC day or month).

Redis time (``TIME``) is the one clock, so replicas with skewed clocks agree. Without Redis
(a laptop, the embedded runtime) :class:`LocalLimits` applies the same rules in-process.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("fusion.core.limits")

LEASE_S = 600.0  # a concurrency lease outlives any request; a dead replica's expire by then
MINUTE_MS = 60_000

# KEYS: rpm, tpm, concurrency, quota requests, quota tokens, quota compute
# ARGV: rpm, cost, tpm, max_concurrency, lease id, lease ms, quota requests, quota tokens,
#       quota compute, quota ttl ms   (0 = no such limit)
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[1]); local cost = tonumber(ARGV[2]); local tpm = tonumber(ARGV[3])
local conc = tonumber(ARGV[4]); local lease = ARGV[5]; local lease_ms = tonumber(ARGV[6])
local q_req = tonumber(ARGV[7]); local q_tok = tonumber(ARGV[8]); local q_cs = tonumber(ARGV[9])
local q_ttl = tonumber(ARGV[10])
local remaining = -1; local reset = 0; local new_tat = 0
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  new_tat = tat + cost * interval
  if new_tat - now > 60000 then
    local left = math.max(0, math.floor((60000 - (tat - now)) / interval))
    return {0, 'rpm', math.ceil(new_tat - now - 60000), left, math.ceil(tat - now)}
  end
  remaining = math.floor((60000 - (new_tat - now)) / interval)
  reset = math.ceil(new_tat - now)
end
local tok_remaining = -1
if tpm > 0 then
  local ttat = tonumber(redis.call('GET', KEYS[2]) or now)
  if ttat < now then ttat = now end
  local over = ttat - now - 60000
  if over > 0 then return {0, 'tpm', math.ceil(over), 0, math.ceil(ttat - now)} end
  tok_remaining = math.floor((60000 - (ttat - now)) * tpm / 60000)
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {0, 'concurrency', 1000, 0, 0} end
end
if q_req > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or 0)
  if used + cost > q_req then return {0, 'quota_requests', redis.call('PTTL', KEYS[4]), 0, 0} end
end
if q_tok > 0 then
  local used = tonumber(redis.call('GET', KEYS[5]) or 0)
  if used >= q_tok then return {0, 'quota_tokens', redis.call('PTTL', KEYS[5]), 0, 0} end
end
if q_cs > 0 then
  local used = tonumber(redis.call('GET', KEYS[6]) or 0)
  if used >= q_cs then return {0, 'quota_compute_s', redis.call('PTTL', KEYS[6]), 0, 0} end
end
if rpm > 0 then redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1) end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + lease_ms, lease)
  redis.call('PEXPIRE', KEYS[3], lease_ms)
end
if q_req > 0 then
  redis.call('INCRBY', KEYS[4], cost)
  if redis.call('PTTL', KEYS[4]) < 0 then redis.call('PEXPIRE', KEYS[4], q_ttl) end
end
return {1, '', remaining, tok_remaining, reset}
"""

# KEYS: tpm, quota tokens, quota compute; ARGV: tpm, tokens, quota ttl ms, compute ms
CHARGE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm = tonumber(ARGV[1]); local tokens = tonumber(ARGV[2]); local ttl = tonumber(ARGV[3])
local compute_ms = tonumber(ARGV[4])
if tpm > 0 and tokens > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  tat = tat + tokens * 60000 / tpm
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1)
end
if ttl > 0 and tokens > 0 then
  redis.call('INCRBY', KEYS[2], tokens)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
if ttl > 0 and compute_ms > 0 then
  redis.call('INCRBYFLOAT', KEYS[3], compute_ms / 1000)
  if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return 1
"""


@dataclass(frozen=True)
class KeyLimits:
    """The limits of one key (None: unlimited)."""

    key_id: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    quota_requests: int | None = None
    quota_tokens: int | None = None
    quota_compute_s: float | None = None
    quota_period: str = "month"

    @property
    def any(self) -> bool:
        return any(v for v in (self.rpm, self.tpm, self.max_concurrency, self.quota_requests,
                               self.quota_tokens, self.quota_compute_s))

    @property
    def has_quota(self) -> bool:
        return bool(self.quota_requests or self.quota_tokens or self.quota_compute_s)


@dataclass(frozen=True)
class Decision:
    """What a limit check answered: allowed or the limit that refused, and the headers."""

    allowed: bool
    reason: str = ""
    retry_after_s: float = 0.0
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_s: float = 0.0
    lease: str | None = None


def period_bounds(period: str, now: float) -> tuple[str, float]:
    """The id of the UTC day or month holding ``now`` and the seconds until it ends."""
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86400 - now
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m", t), end - now


class Limits(Protocol):
    async def admit(self, limits: KeyLimits, cost: int) -> Decision: ...

    async def release(self, limits: KeyLimits, lease: str | None) -> None: ...

    async def charge(self, limits: KeyLimits, tokens: int, compute_s: float) -> None: ...


class RedisLimits:
    """The limits over Redis: every router replica sees the same counters."""

    def __init__(self, url: str, namespace: str = "fusion:limits", timeout_s: float = 0.5,
                 client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.client = client if client is not None else aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            client_name="fusion-limits")
        self.ns = namespace
        self._admit = self.client.register_script(ADMIT_LUA)
        self._charge = self.client.register_script(CHARGE_LUA)

    def _keys(self, limits: KeyLimits) -> list[str]:
        period, _ = period_bounds(limits.quota_period, time.time())
        base = f"{self.ns}:{limits.key_id}"
        return [f"{base}:rpm", f"{base}:tpm", f"{base}:conc", f"{base}:q:{period}:req",
                f"{base}:q:{period}:tok", f"{base}:q:{period}:cs"]

    async def admit(self, limits: KeyLimits, cost: int) -> Decision:
        lease = uuid.uuid4().hex if limits.max_concurrency else None
        _, ttl_s = period_bounds(limits.quota_period, time.time())
        args = [limits.rpm or 0, cost, limits.tpm or 0, limits.max_concurrency or 0,
                lease or "", int(LEASE_S * 1000), limits.quota_requests or 0,
                limits.quota_tokens or 0, limits.quota_compute_s or 0,
                max(1, int(ttl_s * 1000))]
        out = await self._admit(keys=self._keys(limits), args=args)
        allowed, reason = int(out[0]), out[1].decode() if isinstance(out[1], bytes) else out[1]
        if not allowed:
            retry_ms = int(out[2]) if int(out[2]) > 0 else int(ttl_s * 1000)
            return Decision(False, reason, retry_ms / 1000,
                            remaining_requests=int(out[3]) if limits.rpm else None,
                            reset_s=int(out[4]) / 1000)
        return Decision(True, remaining_requests=int(out[2]) if limits.rpm else None,
                        remaining_tokens=int(out[3]) if limits.tpm else None,
                        reset_s=int(out[4]) / 1000, lease=lease)

    async def release(self, limits: KeyLimits, lease: str | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        if self.queue_end(pipe, limits, lease, 0, 0.0):
            await pipe.execute()

    async def charge(self, limits: KeyLimits, tokens: int, compute_s: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        if self.queue_end(pipe, limits, None, tokens, compute_s):
            await pipe.execute()

    def queue_end(self, pipe: Any, limits: KeyLimits, lease: str | None, tokens: int,
                  compute_s: float) -> bool:
        """Queue on ``pipe`` what the end of a request does (give the concurrency lease back,
        charge its tokens and compute seconds), so the caller sends it in the same round trip
        as the usage counts; whether anything was queued."""
        keys = self._keys(limits)
        queued = False
        if lease:
            pipe.zrem(keys[2], lease)
            queued = True
        if (limits.tpm or limits.has_quota) and (tokens > 0 or compute_s > 0):
            _, ttl_s = period_bounds(limits.quota_period, time.time())
            ttl = int(ttl_s * 1000) if limits.has_quota else 0
            # EVAL, not EVALSHA: a pipeline would check the script cache in a round trip first
            pipe.eval(CHARGE_LUA, 3, keys[1], keys[4], keys[5], limits.tpm or 0, tokens, ttl,
                      int(compute_s * 1000))
            queued = True
        return queued

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalLimits:
    """The same rules in this process only: no Redis configured (one replica, a laptop)."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.tat: dict[tuple[str, str], float] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self.used: dict[tuple[str, str, str], float] = {}
        self._lock = asyncio.Lock()

    async def admit(self, limits: KeyLimits, cost: int) -> Decision:
        now = self.clock()
        key = limits.key_id
        period, ttl_s = period_bounds(limits.quota_period, now)
        remaining = tokens_left = None
        reset = 0.0
        new_tat = now
        if limits.rpm:
            interval = 60 / limits.rpm
            tat = max(self.tat.get((key, "rpm"), now), now)
            new_tat = tat + cost * interval
            if new_tat - now > 60:
                return Decision(False, "rpm", new_tat - now - 60,
                                max(0, math.floor((60 - (tat - now)) / interval)), None,
                                tat - now)
            remaining = math.floor((60 - (new_tat - now)) / interval + 1e-9)
            reset = new_tat - now
        if limits.tpm:
            ttat = max(self.tat.get((key, "tpm"), now), now)
            if ttat - now > 60:
                return Decision(False, "tpm", ttat - now - 60, None, 0, ttat - now)
            tokens_left = math.floor((60 - (ttat - now)) * limits.tpm / 60)
        leases = self.leases.setdefault(key, {})
        if limits.max_concurrency:
            for lease_id in [lid for lid, exp in leases.items() if exp <= now]:
                del leases[lease_id]
            if len(leases) >= limits.max_concurrency:
                return Decision(False, "concurrency", 1.0)
        for name, quota, used_cost in (("req", limits.quota_requests, cost),
                                       ("tok", limits.quota_tokens, 0),
                                       ("cs", limits.quota_compute_s, 0)):
            used = self.used.get((key, period, name), 0)
            if quota and (used + used_cost > quota or (used_cost == 0 and used >= quota)):
                reason = {"req": "quota_requests", "tok": "quota_tokens",
                          "cs": "quota_compute_s"}[name]
                return Decision(False, reason, ttl_s)
        if limits.rpm:
            self.tat[(key, "rpm")] = new_tat
        lease = None
        if limits.max_concurrency:
            lease = uuid.uuid4().hex
            leases[lease] = now + LEASE_S
        if limits.quota_requests:
            self.used[(key, period, "req")] = self.used.get((key, period, "req"), 0) + cost
        return Decision(True, remaining_requests=remaining, remaining_tokens=tokens_left,
                        reset_s=reset, lease=lease)

    async def release(self, limits: KeyLimits, lease: str | None) -> None:
        if lease:
            self.leases.get(limits.key_id, {}).pop(lease, None)

    async def charge(self, limits: KeyLimits, tokens: int, compute_s: float) -> None:
        now = self.clock()
        period, _ = period_bounds(limits.quota_period, now)
        if limits.tpm and tokens > 0:
            tat = max(self.tat.get((limits.key_id, "tpm"), now), now)
            self.tat[(limits.key_id, "tpm")] = tat + tokens * 60 / limits.tpm
        for name, amount in (("tok", tokens), ("cs", compute_s)):
            if amount > 0:
                k = (limits.key_id, period, name)
                self.used[k] = self.used.get(k, 0) + amount

    async def aclose(self) -> None:
        return None
