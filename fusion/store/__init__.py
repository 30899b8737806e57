"""Durable data (feedback, fusion profiles, keys, usage): PostgreSQL or SQLite, migrated per
component. See :mod:`fusion.store.database`."""

from fusion.store.database import Database, Migration, resolve_url

__all__ = ["Database", "Migration", "resolve_url"]
