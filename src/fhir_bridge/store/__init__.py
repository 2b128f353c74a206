"""Storage room: the protocol and its engines."""

from fhir_bridge.config import StorageConfig
from fhir_bridge.store.base import QuarantineEntry, Store, StoredResource, TaskPage, TaskUpsert
from fhir_bridge.store.sqlite import SqliteStore


def open_store(storage: StorageConfig) -> Store:
    """Open the configured storage engine."""
    if storage.engine == "sqlite":
        return SqliteStore(storage.path)
    raise NotImplementedError(f"storage engine {storage.engine!r} is not built yet")


__all__ = [
    "QuarantineEntry",
    "SqliteStore",
    "Store",
    "StoredResource",
    "TaskPage",
    "TaskUpsert",
    "open_store",
]
