"""Durable data: one SQLAlchemy engine over PostgreSQL (``FUSION_DATABASE_URL``) or SQLite.

Redis holds what may be lost (cache, locks, rate-limit counters); labels, fusion profiles, keys
and usage must survive eviction and restarts, so they live here. SQLAlchemy Core gives one
dialect-neutral way to write queries (named parameters, portable types) for both databases; the
queries stay plain SQL text so they read the same in the code and in ``psql``.

Calls are blocking: async callers go through :meth:`Database.run`, which moves them to a thread
so a slow database never stalls the event loop that serves every other request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url

T = TypeVar("T")

ENV_URL = "FUSION_DATABASE_URL"


def default_sqlite_path() -> Path:
    """The SQLite file used when no database URL is configured: ``$FUSION_DATA_DIR/fusion.db``
    (default ``~/.local/share/fusion``), so a laptop keeps its labels and keys across restarts."""
    base = os.environ.get("FUSION_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "fusion")
    return Path(base) / "fusion.db"


def resolve_url(url: str | None) -> str:
    """The SQLAlchemy URL for ``url`` (else ``$FUSION_DATABASE_URL``, else the default SQLite
    file). ``postgresql://`` and ``postgres://`` URLs use psycopg 3, the driver we ship."""
    url = url or os.environ.get(ENV_URL) or None
    if not url:
        path = default_sqlite_path()
        return f"sqlite:///{path}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@dataclass(frozen=True)
class Migration:
    """One schema version of one component. ``statements`` run in order in one transaction;
    ``postgresql``/``sqlite`` replace them on that dialect where the SQL differs."""

    version: int
    statements: Sequence[str]
    postgresql: Sequence[str] | None = None
    sqlite: Sequence[str] | None = None

    def for_dialect(self, dialect: str) -> Sequence[str]:
        specific = getattr(self, dialect, None) if dialect in ("postgresql", "sqlite") else None
        return specific if specific is not None else self.statements


@dataclass
class Database:
    """One engine per process; components (feedback, profiles, keys, usage) each migrate their
    own tables by name, so one database holds them all and each evolves on its own."""

    url: str
    engine: Engine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = resolve_url(self.url)
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=5,
                                        max_overflow=10)

    @classmethod
    def from_config(cls, url: str | None = None) -> Database:
        return cls(url or "")

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for logs and ``/admin`` pages."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[Connection]:
        """A connection inside one transaction: committed on leaving, rolled back on error.
        ``exclusive``: on SQLite, take the write lock at the start (``BEGIN IMMEDIATE``), so a
        read-then-write cannot interleave with another process's."""
        engine = self.engine.execution_options(sqlite_immediate=True) if exclusive \
            else self.engine
        with engine.begin() as conn:
            yield conn

    def execute(self, sql: str, params: dict[str, Any] | Sequence[dict[str, Any]] | None = None
                ) -> int:
        """Run one statement in its own transaction; the number of rows it touched."""
        with self.transaction() as conn:
            result = conn.execute(text(sql), params or {})
            return result.rowcount

    def fetch_all(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params or {})]

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None
                  ) -> dict[str, Any] | None:
        rows = self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread: the blocking driver off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Bring ``component``'s tables up to its newest version; the version reached.

        Safe when several router replicas start at once: PostgreSQL takes an advisory lock for the
        transaction, SQLite a write lock (``BEGIN IMMEDIATE``), so one replica
        applies each version and the others see it applied.
        """
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise ValueError(f"{component} migrations must have increasing, unique versions")
        with self.transaction(exclusive=True) as conn:
            if self.dialect == "postgresql":  # before CREATE: concurrent CREATEs race too
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('fusion:schema'))"))
            conn.execute(text(
                "CREATE TABLE IF NOT EXISTS fusion_schema_versions ("
                " component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL)"))
            row = conn.execute(text(
                "SELECT version FROM fusion_schema_versions WHERE component = :c"),
                {"c": component}).first()
            current = row[0] if row else 0
            for migration in migrations:
                if migration.version <= current:
                    continue
                for statement in migration.for_dialect(self.dialect):
                    conn.execute(text(statement))
                current = migration.version
            if row is None:
                conn.execute(text("INSERT INTO fusion_schema_versions (component, version) "
                                  "VALUES (:c, :v)"), {"c": component, "v": current})
            else:
                conn.execute(text("UPDATE fusion_schema_versions SET version = :v "
                                  "WHERE component = :c"), {"c": component, "v": current})
        return current

    def version(self, component: str) -> int:
        """The schema version ``component`` has reached here (0: never migrated)."""
        try:
            row = self.fetch_one("SELECT version FROM fusion_schema_versions "
                                 "WHERE component = :c", {"c": component})
        except Exception:  # the versions table does not exist yet
            return 0
        return int(row["version"]) if row else 0

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is turned off so that ``_sqlite_begin`` chooses the kind
    # (SQLAlchemy's documented recipe). WAL: readers never block the writer (routers read keys
    # while usage is flushed); foreign keys are off by default in SQLite.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
