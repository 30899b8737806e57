"""Fusion profiles: fitted calibration and weights of one fuse step, versioned (component
``fusion_profiles``).

A profile is immutable once fitted (params, evaluation, the data window it was fitted on,
the code version); only its ``state`` changes: ``inactive``, ``active`` (answers use it) or
``shadow`` (computed beside the live answer, never served). At most one of each per fuse
step; activating one demotes the previous holder in the same transaction, so every router
replica polling the table sees exactly one. Rollback is activating an older profile.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from fusion.store.database import Database, Migration

MIGRATIONS = [Migration(1, [
    "CREATE TABLE fusion_profiles ("
    " id VARCHAR(64) PRIMARY KEY, pipeline VARCHAR(128) NOT NULL,"
    " step VARCHAR(128) NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " state VARCHAR(16) NOT NULL, params TEXT NOT NULL, evaluation TEXT NOT NULL,"
    " data_window TEXT NOT NULL, code_version VARCHAR(64) NOT NULL,"
    " changed_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX fusion_profiles_by_pipeline ON fusion_profiles (pipeline, step, state)",
])]

STATES = ("inactive", "active", "shadow")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "params": json.loads(row["params"]),
            "evaluation": json.loads(row["evaluation"]),
            "data_window": json.loads(row["data_window"])}


class ProfileStore:
    """Profiles over a ``Database`` (blocking: call via ``Database.run``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("fusion_profiles", MIGRATIONS)

    def create(self, profile_id: str, pipeline: str, step: str, params: dict[str, Any],
               evaluation: dict[str, Any], window: dict[str, Any], code_version: str,
               now: float) -> None:
        self.db.execute(
            "INSERT INTO fusion_profiles (id, pipeline, step, created_at, state, params,"
            " evaluation, data_window, code_version, changed_at) VALUES (:id, :p, :s, :t,"
            " 'inactive', :params, :ev, :w, :v, :t)",
            {"id": profile_id, "p": pipeline, "s": step, "t": now,
             "params": json.dumps(params), "ev": json.dumps(evaluation),
             "w": json.dumps(window), "v": code_version})

    def get(self, profile_id: str) -> dict[str, Any] | None:
        row = self.db.fetch_one("SELECT * FROM fusion_profiles WHERE id = :id",
                                {"id": profile_id})
        return _decode(row) if row else None

    def list(self, pipeline: str) -> list[dict[str, Any]]:
        """The pipeline's profiles, newest first."""
        return [_decode(r) for r in self.db.fetch_all(
            "SELECT * FROM fusion_profiles WHERE pipeline = :p ORDER BY created_at DESC, id",
            {"p": pipeline})]

    def set_state(self, pipeline: str, step: str, profile_id: str | None, state: str,
                  now: float) -> None:
        """Make ``profile_id`` the step's ``state`` (active or shadow), demoting the one that
        held it; ``profile_id`` None clears that state (back to the hand-written fusion, or
        no shadow)."""
        with self.db.transaction(exclusive=True) as conn:
            conn.execute(text(
                "UPDATE fusion_profiles SET state = 'inactive', changed_at = :t"
                " WHERE pipeline = :p AND step = :s AND state = :state"),
                {"p": pipeline, "s": step, "state": state, "t": now})
            if profile_id is not None:
                conn.execute(text("UPDATE fusion_profiles SET state = :state, changed_at = :t"
                                  " WHERE id = :id"),
                             {"state": state, "id": profile_id, "t": now})

    def live(self) -> list[dict[str, Any]]:
        """Every active and shadow profile (what router replicas poll): id, pipeline, step,
        state and params."""
        return [{**r, "params": json.loads(r["params"])} for r in self.db.fetch_all(
            "SELECT id, pipeline, step, state, params FROM fusion_profiles"
            " WHERE state IN ('active', 'shadow') ORDER BY pipeline, step, state")]
