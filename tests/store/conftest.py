"""Store fixtures: every engine behind one parametrized fixture, and isolated Redis namespaces.

The Redis cases need a real Redis at ``$REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Each test gets its own key prefix (a uuid) and every key under it is deleted afterwards, so
tests never see each other's data and can share a server with anything else.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from fhir_bridge.store.base import Store
from fhir_bridge.store.keys import Keys
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def delete_namespace(client: redis.Redis, keys: Keys) -> int:
    """Delete every key of one installation (SCAN + DEL); returns how many were deleted."""
    deleted = 0
    batch = []
    for key in client.scan_iter(match=keys.pattern, count=500):
        batch.append(key)
        if len(batch) == 500:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test Redis; fails the test loudly when Redis does not answer."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        shown = re.sub(r"//[^@/]*@", "//***@", REDIS_URL)  # no password in the report
        pytest.fail(
            f"Redis does not answer PING at {shown} ({exc}). The Redis engine tests need a "
            "real Redis: start one (`redis-server`) or point REDIS_URL at one.",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    delete_namespace(redis_client, Keys(prefix))


@pytest.fixture
def redis_stores(redis_prefix) -> Iterator[Callable[[], RedisStore]]:
    """A factory of RedisStores on the test's prefix (several share the data), closed after."""
    opened: list[RedisStore] = []

    def open_store() -> RedisStore:
        """One more store on the same namespace."""
        store = RedisStore(REDIS_URL, key_prefix=redis_prefix)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def engine_store(request, tmp_path) -> Iterator[Store]:
    """An empty store of each engine: SQLite in a temporary file, Redis under a fresh prefix."""
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "bridge.db")
        yield store
        store.close()
    else:
        yield request.getfixturevalue("redis_stores")()
