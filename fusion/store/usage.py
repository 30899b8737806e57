"""Usage per key, per model or pipeline, per day: what a team is billed on.

Router replicas count in memory and write here in batches (``fusion.core.usage``). A batch
carries an id and is applied at most once: its id goes into ``usage_batches`` in the same
transaction as its additions, so a batch retried after a lost answer (a timeout after the
commit) adds nothing the second time. Together with retrying until the write succeeds, every
counted request lands exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fusion.store.database import Database, Migration

COUNTS = ("requests", "items", "prompt_tokens", "completion_tokens", "compute_s",
          "cache_hits", "errors", "rejected")

MIGRATIONS = (
    Migration(1, [
        "CREATE TABLE usage_daily ("
        " key_id VARCHAR(64) NOT NULL,"
        " kind VARCHAR(16) NOT NULL,"
        " name VARCHAR(200) NOT NULL,"
        " day VARCHAR(10) NOT NULL,"
        " requests BIGINT NOT NULL DEFAULT 0,"
        " items BIGINT NOT NULL DEFAULT 0,"
        " prompt_tokens BIGINT NOT NULL DEFAULT 0,"
        " completion_tokens BIGINT NOT NULL DEFAULT 0,"
        " compute_s DOUBLE PRECISION NOT NULL DEFAULT 0,"
        " cache_hits BIGINT NOT NULL DEFAULT 0,"
        " errors BIGINT NOT NULL DEFAULT 0,"
        " rejected BIGINT NOT NULL DEFAULT 0,"
        " PRIMARY KEY (key_id, kind, name, day))",
        "CREATE INDEX usage_daily_day ON usage_daily (day)",
        "CREATE TABLE usage_batches ("
        " batch_id VARCHAR(64) PRIMARY KEY,"
        " written_at DOUBLE PRECISION NOT NULL)",
    ]),
)


@dataclass(frozen=True)
class UsageKey:
    key_id: str
    kind: str  # "model" or "pipeline"
    name: str
    day: str  # YYYY-MM-DD, UTC


_UPSERT = (
    "INSERT INTO usage_daily (key_id, kind, name, day, " + ", ".join(COUNTS) + ") VALUES "
    "(:key_id, :kind, :name, :day, " + ", ".join(":" + c for c in COUNTS) + ") "
    "ON CONFLICT (key_id, kind, name, day) DO UPDATE SET "
    + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in COUNTS))


class UsageStore:
    """The ``usage`` component of the durable store (blocking calls)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.migrate("usage", MIGRATIONS)

    def write_batch(self, batch_id: str, rows: dict[UsageKey, dict[str, float]]) -> bool:
        """Add ``rows`` once: False (and nothing added) when ``batch_id`` was applied before."""
        from sqlalchemy import text

        with self.db.transaction() as conn:
            inserted = conn.execute(text(
                "INSERT INTO usage_batches (batch_id, written_at) VALUES (:b, :t) "
                "ON CONFLICT (batch_id) DO NOTHING"), {"b": batch_id, "t": time.time()})
            if inserted.rowcount == 0:
                return False
            params = [{"key_id": k.key_id, "kind": k.kind, "name": k.name, "day": k.day,
                       **{c: counts.get(c, 0) for c in COUNTS}} for k, counts in rows.items()]
            if params:
                conn.execute(text(_UPSERT), params)
        return True

    def query(self, key_ids: Sequence[str] | None = None, day_from: str | None = None,
              day_to: str | None = None, kind: str | None = None, name: str | None = None
              ) -> list[dict[str, Any]]:
        """Rows, oldest day first; ``key_ids`` None: every key's."""
        sql = "SELECT * FROM usage_daily WHERE 1 = 1"
        params: dict[str, Any] = {}
        if key_ids is not None:
            if not key_ids:
                return []
            names = [f"k{i}" for i in range(len(key_ids))]
            sql += f" AND key_id IN ({', '.join(':' + n for n in names)})"
            params.update(zip(names, key_ids, strict=True))
        for column, op, value in (("day", ">=", day_from), ("day", "<=", day_to),
                                  ("kind", "=", kind), ("name", "=", name)):
            if value is not None:
                param = f"p_{column}_{len(params)}"
                sql += f" AND {column} {op} :{param}"
                params[param] = value
        rows = self.db.fetch_all(sql + " ORDER BY day, key_id, kind, name", params)
        for row in rows:
            for c in COUNTS:
                row[c] = float(row[c]) if c == "compute_s" else int(row[c])
        return rows

    def prune_batches(self, older_than_s: float = 7 * 86400) -> int:
        """Forget batch ids older than any retry could be (they only guard against replays)."""
        return self.db.execute("DELETE FROM usage_batches WHERE written_at < :t",
                               {"t": time.time() - older_than_s})
