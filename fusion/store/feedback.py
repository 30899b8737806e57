"""Fused answers and their feedback labels, by request id (component ``feedback``).

Each fused answer's per-source scores are recorded when it is served (``record``), so that a
label sent later (``POST /v1/feedback``) can be joined to what each source said: that pair is
one training example for a fusion profile. Rows older than the retention are purged. Both
tables live in the durable store, never Redis: labels are data a user must not lose.

JSON columns are TEXT (portable across PostgreSQL and SQLite); times are epoch seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from fusion.store.database import Database, Migration

MIGRATIONS = [Migration(1, [
    "CREATE TABLE fusion_answers ("
    " request_id VARCHAR(128) NOT NULL, step VARCHAR(128) NOT NULL,"
    " pipeline VARCHAR(128) NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " labels TEXT NOT NULL, sources TEXT NOT NULL, rankings TEXT NOT NULL,"
    " weights TEXT, method VARCHAR(32) NOT NULL, profile_id VARCHAR(64),"
    " top_label VARCHAR(256), shadow_id VARCHAR(64), shadow_label VARCHAR(256),"
    " PRIMARY KEY (request_id, step))",
    "CREATE INDEX fusion_answers_by_time ON fusion_answers (pipeline, step, created_at)",
    "CREATE TABLE fusion_feedback ("
    " request_id VARCHAR(128) NOT NULL, step VARCHAR(128) NOT NULL,"
    " pipeline VARCHAR(128) NOT NULL, label VARCHAR(256) NOT NULL,"
    " weight DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (request_id, step))",
    "CREATE INDEX fusion_feedback_by_pipeline ON fusion_feedback (pipeline, step)",
])]


@dataclass(frozen=True)
class Answer:
    """One fuse step's answer as recorded: what a feedback label is checked against."""

    request_id: str
    step: str
    pipeline: str
    created_at: float
    labels: list[str]
    sources: list[str]
    rankings: list[list[dict] | None]
    weights: list[float] | None
    method: str
    profile_id: str | None
    top_label: str | None
    shadow_id: str | None = None
    shadow_label: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Answer:
        return cls(row["request_id"], row["step"], row["pipeline"], float(row["created_at"]),
                   json.loads(row["labels"]), json.loads(row["sources"]),
                   json.loads(row["rankings"]),
                   json.loads(row["weights"]) if row["weights"] else None, row["method"],
                   row["profile_id"], row["top_label"], row["shadow_id"], row["shadow_label"])

    def row(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "step": self.step, "pipeline": self.pipeline,
                "created_at": self.created_at, "labels": json.dumps(self.labels),
                "sources": json.dumps(self.sources), "rankings": json.dumps(self.rankings),
                "weights": json.dumps(self.weights) if self.weights is not None else None,
                "method": self.method, "profile_id": self.profile_id,
                "top_label": self.top_label, "shadow_id": self.shadow_id,
                "shadow_label": self.shadow_label}


_COLUMNS = ("request_id, step, pipeline, created_at, labels, sources, rankings, weights, "
            "method, profile_id, top_label, shadow_id, shadow_label")


class FeedbackStore:
    """Recorded answers and their labels over a ``Database`` (blocking: call via ``run``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("feedback", MIGRATIONS)

    def record(self, answers: list[Answer]) -> None:
        """Store answers; a request id seen again (a client reusing ``X-Request-Id``)
        replaces its earlier answer, and with it any label given to that one."""
        if not answers:
            return
        keys = [{"r": a.request_id, "s": a.step} for a in answers]
        values = ", ".join(f":{c.strip()}" for c in _COLUMNS.split(","))
        with self.db.transaction() as conn:
            conn.execute(text("DELETE FROM fusion_feedback WHERE request_id = :r AND step = :s"),
                         keys)
            conn.execute(text("DELETE FROM fusion_answers WHERE request_id = :r AND step = :s"),
                         keys)
            conn.execute(text(f"INSERT INTO fusion_answers ({_COLUMNS}) VALUES ({values})"),
                         [a.row() for a in answers])

    def answers(self, request_id: str, since: float) -> list[Answer]:
        """The request's recorded fuse steps, newer than ``since`` (older ones expired)."""
        rows = self.db.fetch_all(f"SELECT {_COLUMNS} FROM fusion_answers WHERE request_id = :r"
                                 " AND created_at >= :t ORDER BY step", {"r": request_id,
                                                                         "t": since})
        return [Answer.from_row(r) for r in rows]

    def put_feedback(self, answer: Answer, label: str, weight: float, now: float) -> bool:
        """Label ``answer``; True when it replaced an earlier label of the same answer."""
        with self.db.transaction(exclusive=True) as conn:
            replaced = conn.execute(text(
                "DELETE FROM fusion_feedback WHERE request_id = :r AND step = :s"),
                {"r": answer.request_id, "s": answer.step}).rowcount > 0
            conn.execute(text(
                "INSERT INTO fusion_feedback (request_id, step, pipeline, label, weight, "
                "created_at) VALUES (:r, :s, :p, :l, :w, :t)"),
                {"r": answer.request_id, "s": answer.step, "p": answer.pipeline, "l": label,
                 "w": weight, "t": now})
        return replaced

    def labelled(self, pipeline: str, step: str, since: float | None = None,
                 until: float | None = None) -> list[tuple[Answer, str, float]]:
        """(answer, label, weight) of every labelled answer of one fuse step, oldest first."""
        cols = ", ".join(f"a.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self.db.fetch_all(
            f"SELECT {cols}, f.label AS fb_label, f.weight AS fb_weight FROM fusion_answers a "
            "JOIN fusion_feedback f ON f.request_id = a.request_id AND f.step = a.step "
            "WHERE a.pipeline = :p AND a.step = :s AND a.created_at >= :since "
            "AND a.created_at <= :until ORDER BY a.created_at, a.request_id",
            {"p": pipeline, "s": step, "since": since or 0.0, "until": until or 1e18})
        return [(Answer.from_row(r), r["fb_label"], float(r["fb_weight"])) for r in rows]

    def live_stats(self, pipeline: str) -> dict[str, dict[str, Any]]:
        """Per profile id (``""``: the hand-written fusion) of this pipeline: answers served,
        answers labelled and how many of those the served top label got right; and per
        shadow profile: answers, top-1 agreement with the live answer, labelled, correct."""
        live = self.db.fetch_all(
            "SELECT COALESCE(a.profile_id, '') AS profile, COUNT(*) AS answers,"
            " COUNT(f.label) AS labelled,"
            " SUM(CASE WHEN f.label = a.top_label THEN 1 ELSE 0 END) AS correct "
            "FROM fusion_answers a LEFT JOIN fusion_feedback f ON f.request_id = a.request_id"
            " AND f.step = a.step WHERE a.pipeline = :p GROUP BY COALESCE(a.profile_id, '')",
            {"p": pipeline})
        shadow = self.db.fetch_all(
            "SELECT a.shadow_id AS profile, COUNT(*) AS answers,"
            " SUM(CASE WHEN a.shadow_label = a.top_label THEN 1 ELSE 0 END) AS agree,"
            " COUNT(f.label) AS labelled,"
            " SUM(CASE WHEN f.label = a.shadow_label THEN 1 ELSE 0 END) AS correct "
            "FROM fusion_answers a LEFT JOIN fusion_feedback f ON f.request_id = a.request_id"
            " AND f.step = a.step WHERE a.pipeline = :p AND a.shadow_id IS NOT NULL"
            " GROUP BY a.shadow_id", {"p": pipeline})
        out: dict[str, dict[str, Any]] = {}
        for r in live:
            labelled, correct = int(r["labelled"]), int(r["correct"] or 0)
            out.setdefault(r["profile"], {})["live"] = {
                "answers": int(r["answers"]), "labelled": labelled,
                "accuracy": correct / labelled if labelled else None}
        for r in shadow:
            answers, labelled = int(r["answers"]), int(r["labelled"])
            out.setdefault(r["profile"], {})["shadow"] = {
                "answers": answers, "agreement": int(r["agree"] or 0) / answers,
                "labelled": labelled,
                "accuracy": int(r["correct"] or 0) / labelled if labelled else None}
        return out

    def profile_accuracy(self, pipeline: str, profile_id: str | None) -> tuple[int, int]:
        """(labelled, correct) of the answers one live profile served."""
        row = self.db.fetch_one(
            "SELECT COUNT(*) AS labelled,"
            " SUM(CASE WHEN f.label = a.top_label THEN 1 ELSE 0 END) AS correct "
            "FROM fusion_answers a JOIN fusion_feedback f ON f.request_id = a.request_id"
            " AND f.step = a.step WHERE a.pipeline = :p AND COALESCE(a.profile_id, '') = :i",
            {"p": pipeline, "i": profile_id or ""})
        return (int(row["labelled"]), int(row["correct"] or 0)) if row else (0, 0)

    def purge(self, before: float) -> int:
        """Forget answers (and their labels) recorded before ``before``; rows removed."""
        with self.db.transaction() as conn:
            conn.execute(text(
                "DELETE FROM fusion_feedback WHERE EXISTS (SELECT 1 FROM fusion_answers a"
                " WHERE a.request_id = fusion_feedback.request_id AND a.step ="
                " fusion_feedback.step AND a.created_at < :t)"), {"t": before})
            return conn.execute(text("DELETE FROM fusion_answers WHERE created_at < :t"),
                                {"t": before}).rowcount
