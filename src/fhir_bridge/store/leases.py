"""Leases: which worker does a piece of work (a (source, type) sync, a task's write-back) now.

A lease is held by one owner until it expires or is released, and carries a fencing token
that grows with every grant. A worker that stalls (GC pause, lost network) past its lease's
expiry may still believe it holds it; writes guarded by the token
(`Store.set_cursor_fenced`) are then refused, because the store has seen the newer holder's
token or no longer holds the stale one.

- `RedisLeaseManager`: ``SET key "<token>:<owner>" NX PX ttl`` with the token from INCR of one
  counter per installation; renew is a Lua check-and-extend, release a Lua check-and-delete,
  so an owner never extends or drops a lease that has passed to someone else.
- `LocalLeaseManager`: one process, no coordination needed (the embedded SQLite engine is
  single-process). It keeps the same semantics in memory, so the worker code is the same;
  its tokens start from the wall clock in microseconds, so a restarted process fences above
  the previous one's tokens (unless the clock went back by more than the restart took).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Protocol, cast

import redis

from fhir_bridge.errors import StoreError
from fhir_bridge.store.base import Lease, Store
from fhir_bridge.store.redis import RedisStore


class LeaseLost(StoreError):
    """A write was guarded by a lease that has expired or passed to another owner."""


class LeaseManager(Protocol):
    """Grants, renews and releases leases for one owner (a worker process)."""

    owner: str

    def acquire(self, name: str, ttl: float) -> Lease | None:
        """The lease on `name` for `ttl` seconds, or None while someone else holds it."""

    def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend a held lease to `ttl` seconds from now; False when it is no longer ours."""

    def release(self, lease: Lease) -> bool:
        """Give a lease up; False when it was no longer ours."""


def new_owner() -> str:
    """A unique owner name for one worker process (no host name: it may be PHI-free but
    still identifying; logs carry it)."""
    return uuid.uuid4().hex[:12]


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"a lease needs a positive ttl, not {ttl}")
    return max(1, round(ttl * 1000))


class RedisLeaseManager:
    """Leases in the Redis of a `RedisStore`, under its prefix (same hash tag, same slot)."""

    def __init__(self, store: RedisStore, owner: str | None = None) -> None:
        self.owner = owner or new_owner()
        self.keys = store.keys
        self._redis = store.client

    def _call(self, what: str, script: str, lease: Lease, *args: str) -> int:
        try:
            reply = self._redis.eval(script, 1, self.keys.lease(lease.name), lease.value, *args)
            return int(cast(int, reply))
        except redis.RedisError as exc:
            raise StoreError(f"Redis lease {what} failed: {exc}") from exc

    def acquire(self, name: str, ttl: float) -> Lease | None:
        ms = _ms(ttl)
        try:
            token = int(self._redis.incr(self.keys.lease_seq))
            lease = Lease(name, token, self.owner)
            if not self._redis.set(self.keys.lease(name), lease.value, nx=True, px=ms):
                return None
        except redis.RedisError as exc:
            raise StoreError(f"Redis lease acquire failed: {exc}") from exc
        return lease

    def renew(self, lease: Lease, ttl: float) -> bool:
        return bool(self._call("renew", _RENEW, lease, str(_ms(ttl))))

    def release(self, lease: Lease) -> bool:
        return bool(self._call("release", _RELEASE, lease))


class LocalLeaseManager:
    """Leases inside one process (for the SQLite engine): the same rules, kept in memory."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner or new_owner()
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}  # name -> (value, monotonic expiry)
        self._token = time.time_ns() // 1000

    def acquire(self, name: str, ttl: float) -> Lease | None:
        ms = _ms(ttl)
        with self._lock:
            now = time.monotonic()
            current = self._held.get(name)
            if current is not None and current[1] > now:
                return None
            self._token += 1
            lease = Lease(name, self._token, self.owner)
            self._held[name] = (lease.value, now + ms / 1000)
            return lease

    def renew(self, lease: Lease, ttl: float) -> bool:
        ms = _ms(ttl)
        with self._lock:
            now = time.monotonic()
            current = self._held.get(lease.name)
            if current is None or current[0] != lease.value or current[1] <= now:
                return False
            self._held[lease.name] = (lease.value, now + ms / 1000)
            return True

    def release(self, lease: Lease) -> bool:
        with self._lock:
            current = self._held.get(lease.name)
            if current is None or current[0] != lease.value:
                return False
            del self._held[lease.name]
            return current[1] > time.monotonic()


def lease_manager(store: Store, owner: str | None = None) -> LeaseManager:
    """The lease manager that fits `store`: Redis leases for Redis, in-process otherwise."""
    if isinstance(store, RedisStore):
        return RedisLeaseManager(store, owner)
    return LocalLeaseManager(owner)
