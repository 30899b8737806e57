"""fusion.store on both stores: migrations up from empty, re-runs, concurrent migrators, data
that survives a new engine (a restart), and the URL rules."""

from __future__ import annotations

import threading

import pytest

from fusion.store import Database, Migration, resolve_url

NOTES = [
    Migration(1, ["CREATE TABLE notes (id VARCHAR(32) PRIMARY KEY, body TEXT NOT NULL)"]),
    Migration(2, ["ALTER TABLE notes ADD COLUMN stars INTEGER NOT NULL DEFAULT 0"]),
]


def test_migrates_from_empty_and_keeps_data_across_restart(database_url):
    db = Database(database_url)
    assert db.version("notes") == 0
    assert db.migrate("notes", NOTES[:1]) == 1
    db.execute("INSERT INTO notes (id, body) VALUES (:id, :body)", {"id": "a", "body": "kept"})
    db.close()

    again = Database(database_url)  # a restarted process: new engine, same database
    assert again.version("notes") == 1
    assert again.migrate("notes", NOTES) == 2  # only version 2 runs
    assert again.fetch_all("SELECT id, body, stars FROM notes") == [
        {"id": "a", "body": "kept", "stars": 0}]
    assert again.migrate("notes", NOTES) == 2  # nothing left to do
    again.close()


def test_failed_migration_rolls_back_whole_version(database_url):
    db = Database(database_url)
    db.migrate("notes", NOTES[:1])
    broken = [*NOTES[:1], Migration(2, ["CREATE TABLE half (x INTEGER)", "NOT SQL AT ALL"])]
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type differs
        db.migrate("notes", broken)
    assert db.version("notes") == 1
    # the table created before the failing statement was rolled back with it
    with pytest.raises(Exception):  # noqa: B017
        db.fetch_all("SELECT x FROM half")
    db.close()


def test_concurrent_migrators_apply_each_version_once(database_url):
    counted = [Migration(1, [
        "CREATE TABLE applied (n INTEGER NOT NULL)", "INSERT INTO applied (n) VALUES (1)"])]
    db = Database(database_url)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def migrate() -> None:
        mine = Database(database_url)  # one engine per "replica"
        try:
            start.wait()
            mine.migrate("applied", counted)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.fetch_all("SELECT n FROM applied") == [{"n": 1}]
    db.close()


def test_versions_must_increase(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="increasing"):
        db.migrate("x", [Migration(2, []), Migration(1, [])])


def test_url_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSION_DATABASE_URL", raising=False)
    monkeypatch.setenv("FUSION_DATA_DIR", str(tmp_path))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'fusion.db'}"
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("FUSION_DATABASE_URL", "postgresql://env@h/db")
    assert resolve_url(None) == "postgresql+psycopg://env@h/db"
    assert Database("postgresql://u:secret@h/db").safe_url == "postgresql+psycopg://u:***@h/db"
