"""Outbox claims on Redis: the Stream consumer group several write-back workers share.

What only the Redis engine does: announcements on `outbox:stream`, reclaim of a silent
consumer's claims after the visibility timeout (XAUTOCLAIM), stale messages after a crash
between recording an outcome and acknowledging it, and keeping a claim alive while it is
delivered. The protocol part (claim, ack, order, retry time) is in test_conformance.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from fhir_bridge.store.keys import OUTBOX_GROUP
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from tests.store.conftest import REDIS_URL
from tests.store.test_conformance import draft, mirror_change
from tests.utils import NOW

pytestmark = pytest.mark.integration
SHORT = 0.2  # visibility timeout (s) of the consumer that takes over


def queue_entries(store: RedisStore, *tasks: str, per_task: int = 1) -> list[int]:
    """One status change per task, each queuing `per_task` outbox entries; their ids."""
    for name in tasks:
        task = store.upsert_task(draft(name), NOW).task
        payloads = [{"n": f"{name}{i}"} for i in range(per_task)]
        store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, *payloads))
    return [e.id for e in store.list_outbox(limit=-1)]


def pending_count(client, store: RedisStore) -> int:
    """Messages handed to a consumer and not acknowledged yet."""
    return int(client.xpending(store.keys.outbox_stream, OUTBOX_GROUP)["pending"])


def impatient(redis_prefix: str) -> RedisStore:
    """A store on the same namespace whose consumers reclaim after SHORT seconds."""
    return RedisStore(REDIS_URL, key_prefix=redis_prefix, outbox_visibility_timeout=SHORT)


def test_only_the_head_is_announced_in_the_same_transaction(redis_stores, redis_client):
    """A change queuing two entries announces only the first; its delivery announces the next."""
    store = redis_stores()
    first, second = queue_entries(store, "a", per_task=2)
    messages = redis_client.xrange(store.keys.outbox_stream)
    assert [f for _, f in messages] == [
        {"entry": str(first), "task": store.get_outbox(first).task_id, "round": "1"}
    ]
    [claim] = store.claim_outbox("w1", NOW)
    store.outbox_delivered(claim.entry.id, NOW)
    store.ack_outbox(claim)
    [(_, fields)] = redis_client.xrange(store.keys.outbox_stream)
    assert fields["entry"] == str(second)


def test_a_claim_is_not_handed_to_another_consumer(redis_stores, redis_prefix):
    """While a claim is held and fresh, no other consumer gets it."""
    store = redis_stores()
    queue_entries(store, "a")
    [claim] = store.claim_outbox("w1", NOW)
    other = impatient(redis_prefix)
    try:
        assert other.claim_outbox("w2", NOW) == []
    finally:
        other.close()
    assert claim.receipt is not None


def test_a_silent_consumers_claim_is_reclaimed_after_the_visibility_timeout(
    redis_stores, redis_prefix, redis_client
):
    """A consumer that never acknowledges (killed) loses its claim to another one after the
    visibility timeout; the first can no longer keep it alive."""
    store = redis_stores()
    [entry_id] = queue_entries(store, "a")
    [lost] = store.claim_outbox("w1", NOW)
    other = impatient(redis_prefix)
    try:
        time.sleep(SHORT * 2)
        [taken] = other.claim_outbox("w2", NOW)
        assert (taken.entry.id, taken.receipt) == (entry_id, lost.receipt)
        assert store.touch_outbox("w1", [lost]) == 0
        other.outbox_delivered(entry_id, NOW)
        other.ack_outbox(taken)
    finally:
        other.close()
    assert store.get_outbox(entry_id).status is OutboxStatus.DELIVERED
    assert pending_count(redis_client, store) == 0
    assert redis_client.xlen(store.keys.outbox_stream) == 0


def test_a_crash_between_outcome_and_ack_is_not_delivered_again(
    redis_stores, redis_prefix, redis_client
):
    """An entry whose outcome was recorded but whose claim was never acknowledged is only
    acknowledged when reclaimed, never handed out again."""
    store = redis_stores()
    [entry_id] = queue_entries(store, "a")
    store.claim_outbox("w1", NOW)
    store.outbox_delivered(entry_id, NOW)  # then the worker dies before XACK
    other = impatient(redis_prefix)
    try:
        time.sleep(SHORT * 2)
        assert other.claim_outbox("w2", NOW) == []
    finally:
        other.close()
    assert pending_count(redis_client, store) == 0


def test_a_retry_reclaimed_early_waits_for_its_time_and_goes_out_once(
    redis_stores, redis_prefix, redis_client
):
    """A retried entry whose claim was never acknowledged is not delivered before its retry
    time by the consumer that reclaims it, and is handed out once when due."""
    store = redis_stores()
    [entry_id] = queue_entries(store, "a")
    store.claim_outbox("w1", NOW)
    retry_at = NOW + timedelta(minutes=1)
    store.outbox_retry(entry_id, "503", retry_at)  # then the worker dies before XACK
    other = impatient(redis_prefix)
    try:
        time.sleep(SHORT * 2)
        assert other.claim_outbox("w2", NOW) == []
        assert pending_count(redis_client, store) == 0
        [due] = other.claim_outbox("w2", retry_at)
        assert store.claim_outbox("w1", retry_at) == []
    finally:
        other.close()
    assert (due.entry.id, due.entry.attempts) == (entry_id, 1)
    assert redis_client.xlen(store.keys.outbox_stream) == 1


def test_touch_keeps_a_claim_from_going_idle(redis_stores, redis_client):
    """touch_outbox resets the idle time XAUTOCLAIM looks at, for the claims still held."""
    store = redis_stores()
    queue_entries(store, "a")
    [claim] = store.claim_outbox("w1", NOW)

    def idle() -> int:
        """Milliseconds since the claim was last delivered or touched."""
        [info] = redis_client.xpending_range(
            store.keys.outbox_stream, OUTBOX_GROUP, claim.receipt, claim.receipt, 1
        )
        return int(info["time_since_delivered"])

    time.sleep(0.3)
    assert idle() >= 300
    assert store.touch_outbox("w1", [claim]) == 1
    assert idle() < 300


def test_concurrent_consumers_claim_each_entry_once(redis_stores):
    """Four consumers claiming at the same instant share the entries without overlap."""
    ids = queue_entries(redis_stores(), *(f"t{i}" for i in range(12)))
    stores = [redis_stores() for _ in range(4)]
    barrier = threading.Barrier(4)
    got: list[list[int]] = [[] for _ in stores]

    def claim(i: int) -> None:
        """Claim everything one consumer can get."""
        barrier.wait()
        got[i] = [c.entry.id for c in stores[i].claim_outbox(f"w{i}", NOW)]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [entry_id for ids_of_one in got for entry_id in ids_of_one]
    assert sorted(claimed) == sorted(ids)


def test_entries_queued_before_the_group_existed_are_announced(redis_stores, redis_client):
    """An installation written before streams (no stream, no group) delivers its pending heads:
    the first consumer group creation announces them."""
    store = redis_stores()
    ids = queue_entries(store, "a", "b")
    redis_client.delete(store.keys.outbox_stream)  # as written by the per-task-lease version
    for entry_id in ids:
        redis_client.hdel(store.keys.outbox_entry(entry_id), "round")
    assert store.get_outbox(ids[0]) is not None
    fresh = redis_stores()
    assert sorted(c.entry.id for c in fresh.claim_outbox("w1", NOW)) == ids
    assert redis_client.xlen(store.keys.outbox_stream) == 2  # each announced once


def test_entries_announced_before_the_group_existed_are_read_once(redis_stores, redis_client):
    """Entries announced before any consumer created the group are handed out from the stream
    as they are, not announced a second time."""
    store = redis_stores()
    ids = queue_entries(store, "a", "b", "c")
    claims = redis_stores().claim_outbox("w1", NOW, limit=2)
    assert [c.entry.id for c in claims] == ids[:2]
    assert redis_client.xlen(store.keys.outbox_stream) == 3


def test_a_consumer_is_forgotten_only_when_it_holds_nothing(redis_stores, redis_client):
    """outbox_consumer_done removes a consumer with no claims and keeps one holding claims."""
    store = redis_stores()
    queue_entries(store, "a")
    store.claim_outbox("holder", NOW)
    store.claim_outbox("idle", NOW)
    store.outbox_consumer_done("holder")
    store.outbox_consumer_done("idle")
    names = {
        c["name"] for c in redis_client.xinfo_consumers(store.keys.outbox_stream, OUTBOX_GROUP)
    }
    assert names == {"holder"}
