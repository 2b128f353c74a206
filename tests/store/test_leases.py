"""Tests for fhir_bridge.store.leases and `Store.set_cursor_fenced`, on every engine."""

from __future__ import annotations

import time

import pytest

from fhir_bridge.store.base import Lease, Store
from fhir_bridge.store.leases import (
    LeaseManager,
    LocalLeaseManager,
    RedisLeaseManager,
    lease_manager,
)
from fhir_bridge.store.redis import RedisStore

SOURCE, TYPE = "main-ehr", "Appointment"
NAME = f"sync:{SOURCE}:{TYPE}"


def two_workers(store: Store) -> tuple[LeaseManager, LeaseManager]:
    """Two owners competing for leases: two Redis owners, or one process for SQLite."""
    first = lease_manager(store, "worker-a")
    if isinstance(store, RedisStore):
        return first, lease_manager(store, "worker-b")
    return first, first


def wait_until_expired(lease_ttl: float) -> None:
    """Sleep past a lease's expiry."""
    time.sleep(lease_ttl + 0.05)


def test_lease_manager_fits_the_engine(engine_store):
    """Redis stores get Redis leases; SQLite gets the in-process manager."""
    manager = lease_manager(engine_store, "w")
    expected = RedisLeaseManager if isinstance(engine_store, RedisStore) else LocalLeaseManager
    assert isinstance(manager, expected) and manager.owner == "w"


def test_a_held_lease_is_not_granted_again(engine_store):
    """While one owner holds a lease nobody else gets it; after release someone does."""
    a, b = two_workers(engine_store)
    lease = a.acquire(NAME, 5)
    assert lease is not None and lease.owner == "worker-a"
    assert b.acquire(NAME, 5) is None
    assert a.acquire(f"sync:{SOURCE}:Patient", 5) is not None
    assert a.release(lease)
    again = b.acquire(NAME, 5)
    assert again is not None and again.token > lease.token


def test_an_expired_lease_is_taken_over_with_a_higher_token(engine_store):
    """After its ttl a lease is granted again; the old grant can no longer renew or release."""
    a, b = two_workers(engine_store)
    old = a.acquire(NAME, 0.1)
    assert old is not None
    wait_until_expired(0.1)
    new = b.acquire(NAME, 5)
    assert new is not None and new.token > old.token
    assert not a.renew(old, 5)
    assert not a.release(old)
    assert a.acquire(NAME, 5) is None  # the new holder still has it


def test_renew_keeps_a_lease_past_its_first_ttl(engine_store):
    """A renewed lease outlives its original ttl."""
    a, b = two_workers(engine_store)
    lease = a.acquire(NAME, 0.3)
    assert lease is not None
    for _ in range(3):
        time.sleep(0.15)
        assert a.renew(lease, 0.3)
    assert b.acquire(NAME, 5) is None


def test_a_non_positive_ttl_is_rejected(engine_store):
    """A ttl of zero is a programming error, not a lease that never expires."""
    with pytest.raises(ValueError, match="positive ttl"):
        lease_manager(engine_store).acquire(NAME, 0)


def test_fenced_cursor_write_refuses_a_stale_token(engine_store):
    """Once a newer grant wrote the cursor, the older grant's write is refused, changing nothing."""
    a, b = two_workers(engine_store)
    old = a.acquire(NAME, 0.1)
    assert old is not None
    assert engine_store.set_cursor_fenced(SOURCE, TYPE, "2026-01-01T00:00:00Z", old)
    wait_until_expired(0.1)
    new = b.acquire(NAME, 5)
    assert new is not None
    assert engine_store.set_cursor_fenced(SOURCE, TYPE, "2026-02-01T00:00:00Z", new)
    assert not engine_store.set_cursor_fenced(SOURCE, TYPE, "2026-03-01T00:00:00Z", old)
    assert engine_store.get_cursor(SOURCE, TYPE) == "2026-02-01T00:00:00Z"
    assert engine_store.set_cursor_fenced(SOURCE, TYPE, None, new)
    assert engine_store.get_cursor(SOURCE, TYPE) is None


def test_fences_are_per_lease_name(engine_store):
    """A high token on one (source, type) does not fence the cursor of another."""
    a, _ = two_workers(engine_store)
    first = a.acquire(NAME, 5)
    second = a.acquire(f"sync:{SOURCE}:Patient", 5)
    assert first is not None and second is not None and second.token > first.token
    assert engine_store.set_cursor_fenced(SOURCE, "Patient", "2026-01-01T00:00:00Z", second)
    assert engine_store.set_cursor_fenced(SOURCE, TYPE, "2026-01-01T00:00:00Z", first)


@pytest.mark.integration
def test_redis_refuses_a_cursor_write_from_an_expired_lease(redis_stores):
    """In Redis a grant that expired is refused even before anyone else took the lease over."""
    store = redis_stores()
    manager = lease_manager(store, "a")
    lease = manager.acquire(NAME, 0.1)
    assert lease is not None
    wait_until_expired(0.1)
    assert not store.set_cursor_fenced(SOURCE, TYPE, "2026-01-01T00:00:00Z", lease)
    forged = Lease(NAME, lease.token + 1000, "a")
    assert not store.set_cursor_fenced(SOURCE, TYPE, "2026-01-01T00:00:00Z", forged)
    assert store.get_cursor(SOURCE, TYPE) is None


@pytest.mark.integration
def test_redis_leases_are_shared_by_stores_of_one_prefix(redis_stores):
    """Two processes (two stores on one prefix) see each other's leases; tokens keep growing."""
    a = lease_manager(redis_stores(), "a")
    b = lease_manager(redis_stores(), "b")
    tokens = []
    for _ in range(3):
        lease = a.acquire(NAME, 5)
        assert lease is not None and b.acquire(NAME, 5) is None
        tokens.append(lease.token)
        assert not b.release(Lease(NAME, lease.token, "b"))
        assert a.release(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_local_tokens_start_above_an_earlier_process():
    """A new in-process manager hands out tokens above an earlier one's (the SQLite fence)."""
    first = LocalLeaseManager().acquire(NAME, 5)
    time.sleep(0.001)
    second = LocalLeaseManager().acquire(NAME, 5)
    assert first is not None and second is not None and second.token > first.token
