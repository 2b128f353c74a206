"""Storage room: the protocol and its engines."""

from fhir_bridge.config import StorageConfig
from fhir_bridge.store.base import QuarantineEntry, Store, StoredResource, TaskPage, TaskUpsert
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore


def open_store(storage: StorageConfig) -> Store:
    """Open the configured storage engine.

    :raises StoreError: the engine cannot be opened (file, connection, schema version).
    """
    if storage.engine == "redis":
        return RedisStore(
            storage.redis_url,
            key_prefix=storage.key_prefix,
            outbox_visibility_timeout=storage.outbox_visibility_timeout,
        )
    return SqliteStore(storage.path)


__all__ = [
    "QuarantineEntry",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoredResource",
    "TaskPage",
    "TaskUpsert",
    "open_store",
]
