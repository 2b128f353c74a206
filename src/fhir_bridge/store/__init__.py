"""Storage room: the protocol and its engines."""

from pathlib import Path

from fhir_bridge.store.base import QuarantineEntry, Store, StoredResource, TaskPage, TaskUpsert
from fhir_bridge.store.sqlite import SqliteStore


def open_store(path: Path | str) -> Store:
    """Open the configured engine (SQLite for now; Redis slots in here)."""
    return SqliteStore(path)


__all__ = [
    "QuarantineEntry",
    "SqliteStore",
    "Store",
    "StoredResource",
    "TaskPage",
    "TaskUpsert",
    "open_store",
]
