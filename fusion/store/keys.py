"""Issued API keys: what a key may use and how much, stored only as salted digests.

A key reads ``fsk_<id>_<secret>``: the id finds the row (one primary-key look-up, no scan
over every digest), the secret is checked against ``sha256(salt || secret)`` in constant
time. The secret has 256 random bits, so a fast hash is enough (a slow KDF protects
guessable passwords, which these are not); the per-key salt keeps two databases' digests
unrelated. The secret is returned once, by :meth:`KeyStore.create`, and never stored.

Allow-lists are lists of globs (``fnmatch``: ``text``, ``clip*``, ``*``); ``None`` means
every model/task/pipeline, an empty list none. Times are epoch seconds (one portable column
type on PostgreSQL and SQLite).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fusion.store.database import Database, Migration

PREFIX = "fsk_"
SCOPES = ("user", "admin")
PERIODS = ("day", "month")

MIGRATIONS = (
    Migration(1, [
        "CREATE TABLE api_keys ("
        " id VARCHAR(32) PRIMARY KEY,"
        " name VARCHAR(200) NOT NULL,"
        " owner VARCHAR(200),"
        " salt VARCHAR(64) NOT NULL,"
        " digest VARCHAR(64) NOT NULL,"
        " scopes TEXT NOT NULL,"
        " models TEXT, tasks TEXT, pipelines TEXT,"
        " rpm INTEGER, tpm INTEGER, max_concurrency INTEGER,"
        " quota_requests INTEGER, quota_tokens INTEGER, quota_compute_s DOUBLE PRECISION,"
        " quota_period VARCHAR(8) NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL,"
        " expires_at DOUBLE PRECISION,"
        " revoked_at DOUBLE PRECISION)",
        "CREATE INDEX api_keys_owner ON api_keys (owner)",
    ]),
)

_LISTS = ("scopes", "models", "tasks", "pipelines")
# what PATCH may change (name, owner, allow-lists, limits, expiry); never id, digest, scopes
MUTABLE = ("name", "owner", "models", "tasks", "pipelines", "rpm", "tpm", "max_concurrency",
           "quota_requests", "quota_tokens", "quota_compute_s", "quota_period", "expires_at")


@dataclass(frozen=True)
class KeyRecord:
    """One issued key as stored (less its salt and digest)."""

    id: str
    name: str
    owner: str | None = None
    scopes: tuple[str, ...] = ("user",)
    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    pipelines: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    quota_requests: int | None = None
    quota_tokens: int | None = None
    quota_compute_s: float | None = None
    quota_period: str = "month"
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    _digest: str = field(default="", repr=False, compare=False)
    _salt: str = field(default="", repr=False, compare=False)

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(_digest(self._salt, secret), self._digest)

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the digest and salt."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        for name in _LISTS:
            if out[name] is not None:
                out[name] = list(out[name])
        out["active"] = self.active()
        return out


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of an issued key's token, or None if it is not one."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def _row_to_record(row: dict[str, Any]) -> KeyRecord:
    values: dict[str, Any] = {}
    for f in fields(KeyRecord):
        if f.name.startswith("_"):
            continue
        value = row.get(f.name)
        if f.name in _LISTS and value is not None:
            value = tuple(json.loads(value))
        values[f.name] = value
    return KeyRecord(**values, _digest=row["digest"], _salt=row["salt"])


def _column(name: str, value: Any) -> Any:
    if name in _LISTS and value is not None:
        return json.dumps(list(value))
    return value


class KeyStore:
    """The ``keys`` component of the durable store: blocking calls (``Database.run`` them)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.migrate("keys", MIGRATIONS)

    def create(self, name: str, *, scopes: Sequence[str] = ("user",), **limits: Any
               ) -> tuple[KeyRecord, str]:
        """A new key: its record and its token, the only time the secret is seen."""
        unknown = set(limits) - set(MUTABLE)
        if unknown:
            raise ValueError(f"unknown key fields {sorted(unknown)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        now = time.time()
        row = {"id": key_id, "name": name, "owner": None, "salt": salt,
               "digest": _digest(salt, secret), "scopes": _column("scopes", scopes),
               "models": None, "tasks": None, "pipelines": None, "rpm": None, "tpm": None,
               "max_concurrency": None, "quota_requests": None, "quota_tokens": None,
               "quota_compute_s": None, "quota_period": "month", "created_at": now,
               "updated_at": now, "expires_at": None, "revoked_at": None}
        row.update({k: _column(k, v) for k, v in limits.items()})
        columns = ", ".join(row)
        self.db.execute(f"INSERT INTO api_keys ({columns}) VALUES "
                        f"({', '.join(':' + c for c in row)})", row)
        record = self.get(key_id)
        assert record is not None
        return record, f"{PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        row = self.db.fetch_one("SELECT * FROM api_keys WHERE id = :id", {"id": key_id})
        return None if row is None else _row_to_record(row)

    def list(self, owner: str | None = None, include_revoked: bool = True) -> list[KeyRecord]:
        sql = "SELECT * FROM api_keys WHERE 1 = 1"
        params: dict[str, Any] = {}
        if owner is not None:
            sql += " AND owner = :owner"
            params["owner"] = owner
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        return [_row_to_record(r) for r in self.db.fetch_all(sql + " ORDER BY created_at",
                                                             params)]

    def update(self, key_id: str, **changes: Any) -> KeyRecord | None:
        """Change limits, allow-lists, name, owner or expiry; None if there is no such key."""
        unknown = set(changes) - set(MUTABLE)
        if unknown:
            raise ValueError(f"fields {sorted(unknown)} cannot be changed")
        if changes:
            sets = ", ".join(f"{k} = :{k}" for k in changes)
            params = {k: _column(k, v) for k, v in changes.items()}
            params.update(id=key_id, now=time.time())
            self.db.execute(f"UPDATE api_keys SET {sets}, updated_at = :now WHERE id = :id",
                            params)
        return self.get(key_id)

    def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke (kept for the usage it carries; never reactivated); None if unknown."""
        now = time.time()
        self.db.execute("UPDATE api_keys SET revoked_at = :now, updated_at = :now "
                        "WHERE id = :id AND revoked_at IS NULL", {"id": key_id, "now": now})
        return self.get(key_id)

    def count_active(self) -> int:
        row = self.db.fetch_one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL "
                                "AND (expires_at IS NULL OR expires_at > :now)",
                                {"now": time.time()})
        return int(row["n"]) if row else 0

    def names(self) -> dict[str, str]:
        """id → name of every key (usage exports show names beside ids)."""
        return {r["id"]: r["name"] for r in self.db.fetch_all("SELECT id, name FROM api_keys")}
