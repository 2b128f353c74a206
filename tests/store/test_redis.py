"""Tests for fhir_bridge.store.redis and store.keys: what only the Redis engine does.

Key layout, Cluster slots, error translation, WATCH conflicts and the indexes the protocol
does not expose. The storage protocol itself is tested on every engine in test_conformance.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from redis.crc import key_slot

from fhir_bridge.config import StorageConfig
from fhir_bridge.errors import StoreError
from fhir_bridge.store import RedisStore, Store, open_store
from fhir_bridge.store.base import OutboxClaim
from fhir_bridge.store.keys import Keys
from fhir_bridge.tasks.model import (
    OutboxEntry,
    OutboxStatus,
    Task,
    TaskChange,
    TaskEvent,
    TaskStatus,
)
from tests.store.conftest import REDIS_URL
from tests.store.test_conformance import (
    PATIENT,
    SOURCE,
    audit,
    claim_by,
    draft,
    mirror_change,
    quarantine,
    resource,
)
from tests.utils import NOW

integration = pytest.mark.integration


@pytest.fixture
def closed_url() -> str:
    """A redis:// URL on a local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def dead_client(closed_url) -> Iterator[redis.Redis]:
    """A client of a Redis that is not there."""
    client = redis.Redis.from_url(closed_url, decode_responses=True)
    yield client
    client.close()


def ids_in(client: redis.Redis, index: str) -> list[str]:
    """The task ids listed in one task index, in order."""
    return [m.rsplit(":", 1)[1] for m in client.zrange(index, 0, -1)]


# -- keys (no Redis needed) -----------------------------------------------------------------


def test_keys_share_one_hash_tag_and_escape_colons():
    """Every key starts with {prefix}:, and a ':' in a name cannot make two keys collide."""
    keys = Keys("fhir-bridge")
    assert keys.task("abc") == "{fhir-bridge}:task:abc"
    assert keys.tasks_queue("a:s:b") == "{fhir-bridge}:tasks:queue:a%3As%3Ab"
    assert keys.resource("s", "T", "x:y") != keys.resource("s:T", "x", "y")
    assert keys.resource("s", "T", "50%") == "{fhir-bridge}:res:s:T:50%25"
    assert keys.pattern == "{fhir-bridge}:*"


def test_keys_reject_a_prefix_that_would_break_the_hash_tag():
    """A prefix with braces or spaces is refused before any key is built."""
    for prefix in ("a}b", "{a", "", "a b"):
        with pytest.raises(ValueError, match="invalid Redis key prefix"):
            Keys(prefix)


# -- layout ---------------------------------------------------------------------------------


@integration
def test_every_key_is_under_the_prefix_in_one_cluster_slot(
    redis_stores, redis_client, redis_prefix
):
    """All keys a full workout writes start with {prefix}: and hash to the same Cluster slot."""
    store = redis_stores()
    store.put_resource(SOURCE, PATIENT, "h1")
    store.put_resource(SOURCE, resource("CarePlan", "c1"), "h2")
    store.set_cursor(SOURCE, "Patient", "2026-11-26T10:00:00Z")
    store.add_quarantine(quarantine("a1"))
    store.add_quarantine(quarantine(None, body={"x": 1}))
    task = store.upsert_task(draft(), NOW).task
    store.update_task(task.id, claim_by("alice"))
    store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 2}))
    (claim,) = store.claim_outbox("w1", NOW)
    store.outbox_retry(claim.entry.id, "timeout", NOW + timedelta(seconds=1))
    store.ack_outbox(claim)
    (again,) = store.claim_outbox("w1", NOW + timedelta(seconds=1))
    store.outbox_delivered(again.entry.id, NOW)
    store.list_tasks(statuses=[TaskStatus.OPEN, TaskStatus.COMPLETED], rule_id=task.rule_id)
    store.add_audit(audit(0))

    keys = list(redis_client.scan_iter(match=f"*{redis_prefix}*"))
    assert {store.keys.outbox_stream, store.keys.audit} <= set(keys)
    keys.append(store.keys.outbox_scheduled)  # empty again by now, so not listed
    assert len(keys) > 20
    assert [k for k in keys if not k.startswith("{" + redis_prefix + "}:")] == []
    assert {key_slot(k.encode()) for k in keys} == {key_slot(redis_prefix.encode())}
    assert list(redis_client.scan_iter(match=store.keys.temp("*"))) == []


@integration
def test_task_indexes_per_assignee_and_patient_follow_the_task(redis_stores, redis_client):
    """The assignee and patient indexes gain and lose a task as it is claimed, released, moved."""
    store = redis_stores()
    k = store.keys
    task = store.upsert_task(draft(), NOW).task
    assert ids_in(redis_client, k.tasks_patient("Patient/p1")) == [task.id]
    store.update_task(task.id, claim_by("alice"))
    assert ids_in(redis_client, k.tasks_assignee("alice")) == [task.id]

    def release(current: Task) -> TaskChange:
        """Back to open, unassigned."""
        new = replace(current, status=TaskStatus.OPEN, assignee=None, version=current.version + 1)
        return TaskChange(new, TaskEvent(current.id, NOW, "alice", "release"))

    store.update_task(task.id, release)
    store.upsert_task(draft(patient="Patient/p2"), NOW)
    assert redis_client.exists(k.tasks_assignee("alice")) == 0
    assert redis_client.exists(k.tasks_patient("Patient/p1")) == 0
    assert ids_in(redis_client, k.tasks_patient("Patient/p2")) == [task.id]
    assert ids_in(redis_client, k.tasks_queue_status("scheduling", "open")) == [task.id]
    assert redis_client.exists(k.tasks_queue_status("scheduling", "in-progress")) == 0


@integration
def test_outbox_due_holds_one_head_per_task(redis_stores, redis_client):
    """outbox:due has exactly the oldest pending entry of each task, and empties with them."""
    store = redis_stores()
    k = store.keys
    a = store.upsert_task(draft("a"), NOW).task
    b = store.upsert_task(draft("b"), NOW).task
    store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2}))
    store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 3}))
    first_a, second_a, first_b = (e.id for e in store.list_outbox())
    assert sorted(int(m) for m in redis_client.zrange(k.outbox_due, 0, -1)) == [first_a, first_b]
    assert redis_client.lrange(k.outbox_pending(a.id), 0, -1) == [str(first_a), str(second_a)]

    for entry_id in (first_a, second_a, first_b):
        store.outbox_delivered(entry_id, NOW)
    assert redis_client.exists(k.outbox_due, k.outbox_pending(a.id), k.outbox_pending(b.id)) == 0
    assert redis_client.zcard(k.outbox_status(OutboxStatus.DELIVERED.value)) == 3


# -- atomicity under WATCH ------------------------------------------------------------------


@integration
def test_watch_conflict_reruns_the_change_on_fresh_data(redis_stores):
    """A write by another client between read and EXEC makes update_task start over."""
    store, other = redis_stores(), redis_stores()
    task = store.upsert_task(draft(), NOW).task
    seen: list[Task] = []

    def change(current: Task) -> TaskChange:
        """Complete the task; on the first run another client writes the task meanwhile."""
        seen.append(current)
        if len(seen) == 1:
            other.set_task_mirror(task.id, "Task/m1", "1")
        return mirror_change(TaskStatus.COMPLETED, NOW, {"n": 1})(current)

    result = store.update_task(task.id, change)
    assert [t.mirror_id for t in seen] == [None, "Task/m1"]
    assert (result.status, result.mirror_id) == (TaskStatus.COMPLETED, "Task/m1")
    assert store.get_task(task.id) == result
    assert [e.action for e in store.task_history(task.id)] == ["created", "status"]
    assert [e.payload for e in store.list_outbox()] == [{"n": 1}]


@integration
def test_endless_conflicts_give_up_with_store_error(redis_stores):
    """When every attempt conflicts, update_task stops after max_attempts and writes nothing."""
    store, other = redis_stores(), redis_stores()
    store.max_attempts = 3
    task = store.upsert_task(draft(), NOW).task
    runs: list[int] = []

    def change(current: Task) -> TaskChange:
        """Complete the task, while another client always writes it first."""
        runs.append(1)
        other.set_task_mirror(task.id, f"Task/m{len(runs)}", None)
        return mirror_change(TaskStatus.COMPLETED, NOW, {"n": 1})(current)

    with pytest.raises(StoreError, match="gave up after 3"):
        store.update_task(task.id, change)
    assert len(runs) == 3
    assert store.get_task(task.id).status is TaskStatus.OPEN
    assert len(store.task_history(task.id)) == 1
    assert store.list_outbox() == []


@integration
def test_a_changed_task_is_the_only_one_tried_again(redis_stores, monkeypatch):
    """When another client changes one task of a page between the page's read and its
    compare-and-set, only that task is read and written again: the others are written once,
    and the changed task keeps the other client's change plus the refresh (version + 2)."""
    store, other = redis_stores(), redis_stores()
    drafts = [draft(f"a{i}") for i in range(5)]
    store.upsert_tasks(drafts, NOW)
    contested = drafts[3].id
    rounds: list[list[int]] = []
    apply = store._apply_guarded

    def interfere(guarded):
        """Record which drafts this round writes; before the first, claim the contested task."""
        rounds.append([g.position for g in guarded])
        if len(rounds) == 1:
            other.update_task(contested, claim_by("alice"))
        return apply(guarded)

    monkeypatch.setattr(store, "_apply_guarded", interfere)
    before = store.conflicts
    later = NOW + timedelta(hours=1)
    got = store.upsert_tasks([replace(d, title="Retitled") for d in drafts], later)
    assert rounds == [[0, 1, 2, 3, 4], [3]]
    assert store.conflicts - before == 1
    assert [o.task.version for o in got] == [2, 2, 2, 3, 2]
    task = store.get_task(contested)
    assert (task.title, task.status, task.assignee, task.version) == (
        "Retitled",
        TaskStatus.IN_PROGRESS,
        "alice",
        3,
    )
    assert got[3].task == task
    assert [e.action for e in store.task_history(contested)] == ["created", "claim", "refreshed"]
    for d in drafts[:3] + drafts[4:]:
        assert [e.action for e in store.task_history(d.id)] == ["created", "refreshed"]


@integration
def test_a_repeated_draft_after_a_conflict_is_tried_again_too(redis_stores, monkeypatch):
    """A page naming one task twice: when the first write of it conflicts, the second (worked
    out on top of the first) is tried again with it, in order."""
    store, other = redis_stores(), redis_stores()
    store.upsert_task(draft("a1"), NOW)
    rounds: list[list[int]] = []
    apply = store._apply_guarded

    def interfere(guarded):
        """Record each round; before the first, another client refreshes the task."""
        rounds.append([g.position for g in guarded])
        if len(rounds) == 1:
            other.upsert_task(draft("a1", title="Theirs"), NOW)
        return apply(guarded)

    monkeypatch.setattr(store, "_apply_guarded", interfere)
    page = [draft("a0"), draft("a1", title="Ours"), draft("a1", title="Ours again")]
    got = store.upsert_tasks(page, NOW)
    assert rounds == [[0, 1, 2], [1, 2]]
    assert [(o.created, o.updated, o.task.version) for o in got] == [
        (True, False, 1),
        (False, True, 3),
        (False, True, 4),
    ]
    assert store.get_task(page[1].id).title == "Ours again"
    assert [e.action for e in store.task_history(page[1].id)] == ["created"] + ["refreshed"] * 3


@integration
def test_endless_task_conflicts_give_up_with_store_error(redis_stores, monkeypatch):
    """When a task conflicts on every attempt, upsert_tasks stops after max_attempts; the
    page's other tasks were written (each task is atomic, the page is not)."""
    store, other = redis_stores(), redis_stores()
    store.max_attempts = 3
    store.upsert_task(draft("a1"), NOW)
    apply = store._apply_guarded
    runs: list[int] = []

    def interfere(guarded):
        """Another client changes the task before every compare-and-set."""
        runs.append(1)
        other.set_task_mirror(draft("a1").id, f"Task/m{len(runs)}", None)
        return apply(guarded)

    monkeypatch.setattr(store, "_apply_guarded", interfere)
    with pytest.raises(StoreError, match="gave up after 3"):
        store.upsert_tasks([draft("a0"), draft("a1", title="Never")], NOW)
    assert len(runs) == 3
    assert store.get_task(draft("a1").id).title == draft("a1").title
    assert store.get_task(draft("a0").id) is not None


@integration
def test_page_methods_cost_one_or_two_round_trips(redis_stores, monkeypatch):
    """Ingest's per-page calls cost a fixed number of round trips whatever the page size."""
    store = redis_stores()
    store.put_resource(SOURCE, PATIENT, "h1")
    sent: list[int] = []
    send = redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        """Count each request written to a connection."""
        sent.append(1)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)

    def trips(call: Callable[[], object]) -> int:
        """Round trips `call` made."""
        sent.clear()
        call()
        return len(sent)

    drafts = [draft(f"a{i}") for i in range(40)]
    ids = [d.id for d in drafts]
    assert trips(lambda: store.rules_with_tasks(SOURCE, "Appointment", ["r1", "r2"])) == 1
    assert trips(lambda: store.get_tasks(ids)) == 1
    assert trips(lambda: store.upsert_tasks(drafts, NOW)) == 2
    assert trips(lambda: store.upsert_tasks([replace(d, title="x") for d in drafts], NOW)) == 2
    assert trips(lambda: store.release_quarantines(SOURCE, [("Appointment", i) for i in ids])) == 1
    assert trips(lambda: store.resources_for_patient(SOURCE, "Patient/p1", "Patient")) == 1


@integration
def test_resources_for_patient_reads_keys_with_escaped_parts(redis_stores):
    """The one-script read finds resources whose source and ids hold ':' and '%' (escaped in
    their keys) and skips nothing."""
    store = redis_stores()
    source = "ehr:50%"
    store.put_resource(source, resource("CarePlan", "c:1%"), "h1")
    store.put_resource(source, resource("Condition", "x%3A"), "h2")
    store.put_resource(source, resource("CarePlan", "c2"), "h3")
    found = store.resources_for_patient(source, "Patient/p1")
    assert [(r.resource_type, r.id) for r in found] == [
        ("CarePlan", "c2"),
        ("CarePlan", "c:1%"),
        ("Condition", "x%3A"),
    ]
    assert [r.id for r in store.resources_for_patient(source, "Patient/p1", "Condition")] == [
        "x%3A"
    ]
    assert store.resources_for_patient(source, "Patient/p2") == []


# -- errors and opening ---------------------------------------------------------------------

_ENTRY = OutboxEntry(
    1, "0" * 20, SOURCE, "mirror", {}, OutboxStatus.PENDING, 0, NOW, None, NOW, None
)
CALLS: dict[str, Callable[[Store], object]] = {
    "put_resource": lambda s: s.put_resource(SOURCE, PATIENT, "h1"),
    "get_resource": lambda s: s.get_resource(SOURCE, "Patient", "p1"),
    "delete_resource": lambda s: s.delete_resource(SOURCE, "Patient", "p1"),
    "resources_for_patient": lambda s: s.resources_for_patient(SOURCE, "Patient/p1"),
    "iter_resources": lambda s: list(s.iter_resources("Patient")),
    "resource_counts": lambda s: s.resource_counts(),
    "get_cursor": lambda s: s.get_cursor(SOURCE, "Patient"),
    "set_cursor": lambda s: s.set_cursor(SOURCE, "Patient", "x"),
    "add_quarantine": lambda s: s.add_quarantine(quarantine("a1")),
    "list_quarantine": lambda s: s.list_quarantine(),
    "add_audit": lambda s: s.add_audit(audit(0)),
    "list_audit": lambda s: s.list_audit(),
    "release_quarantine": lambda s: s.release_quarantine(SOURCE, "Appointment", "a1"),
    "upsert_task": lambda s: s.upsert_task(draft(), NOW),
    "get_task": lambda s: s.get_task("0" * 20),
    "list_tasks": lambda s: s.list_tasks(statuses=[TaskStatus.OPEN], rule_id="r"),
    "iter_tasks": lambda s: list(s.iter_tasks()),
    "queue_counts": lambda s: s.queue_counts(),
    "update_task": lambda s: s.update_task("0" * 20, claim_by("alice")),
    "set_task_mirror": lambda s: s.set_task_mirror("0" * 20, "Task/1", None),
    "task_history": lambda s: s.task_history("0" * 20),
    "due_outbox": lambda s: s.due_outbox(NOW),
    "outbox_delivered": lambda s: s.outbox_delivered(1, NOW),
    "outbox_retry": lambda s: s.outbox_retry(1, "x", NOW),
    "outbox_dead": lambda s: s.outbox_dead(1, "x"),
    "list_outbox": lambda s: s.list_outbox(),
    "get_outbox": lambda s: s.get_outbox(1),
    "outbox_park": lambda s: s.outbox_park(1, OutboxStatus.DEAD, "x", {}),
    "outbox_requeue": lambda s: s.outbox_requeue(1, NOW),
    "outbox_discard": lambda s: s.outbox_discard(1, "x"),
    "claim_outbox": lambda s: s.claim_outbox("w1", NOW),
    "ack_outbox": lambda s: s.ack_outbox(OutboxClaim(_ENTRY, "1-0")),
    "touch_outbox": lambda s: s.touch_outbox("w1", [OutboxClaim(_ENTRY, "1-0")]),
    "outbox_consumer_done": lambda s: s.outbox_consumer_done("w1"),
    "put_fact": lambda s: s.put_fact("patient-link", "k", {"a": 1}),
    "get_fact": lambda s: s.get_fact("patient-link", "k"),
    "list_facts": lambda s: s.list_facts("patient-link"),
    "iter_facts": lambda s: list(s.iter_facts()),
    "patients_with_identifier": lambda s: s.patients_with_identifier("urn:mrn", "1"),
}


def test_error_translation_covers_the_whole_protocol():
    """Every data method of the Store protocol is in the connection-loss test below."""
    # `_list_tasks` is the engine half of `list_tasks`, which CALLS exercises.
    assert "list_tasks" in CALLS
    assert Store.__abstractmethods__ - {"close", "batch", "_list_tasks"} <= set(CALLS)


@integration
@pytest.mark.parametrize("method", sorted(CALLS))
def test_lost_connection_raises_store_error(redis_stores, dead_client, monkeypatch, method):
    """When Redis goes away, every method raises StoreError (from the redis error), no redis.*."""
    store = redis_stores()
    monkeypatch.setattr(store, "_redis", dead_client)
    with pytest.raises(StoreError, match=r"^Redis \w+ failed") as caught:
        CALLS[method](store)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_unreachable_redis_fails_to_open_with_store_error(closed_url):
    """Opening a store on a closed port raises StoreError naming the URL."""
    with pytest.raises(
        StoreError, match=r"cannot open Redis store at redis://127\.0\.0\.1"
    ) as caught:
        RedisStore(closed_url, key_prefix="never-used")
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_open_error_never_shows_the_password(closed_url):
    """The password of a redis:// URL is masked in the error message."""
    url = closed_url.replace("redis://", "redis://bridge:s3cret@")
    with pytest.raises(StoreError) as caught:
        RedisStore(url, key_prefix="never-used")
    assert "s3cret" not in str(caught.value)
    assert "redis://bridge:***@127.0.0.1" in str(caught.value)


@integration
def test_client_without_decoded_responses_is_refused(redis_prefix):
    """An injected client must decode responses to str."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(StoreError, match="decode_responses=True"):
            RedisStore(REDIS_URL, key_prefix=redis_prefix, client=client)
    finally:
        client.close()


@integration
def test_injected_client_stays_open_after_close(redis_client, redis_prefix):
    """close() leaves a client the caller passed in open for the caller."""
    store = RedisStore("ignored://", key_prefix=redis_prefix, client=redis_client)
    store.set_cursor(SOURCE, "Patient", "x")
    store.close()
    assert redis_client.ping() is True
    assert store.get_cursor(SOURCE, "Patient") == "x"


@integration
def test_other_schema_version_is_refused(redis_client, redis_prefix):
    """Keys written by another layout version are not read as if they were ours."""
    redis_client.hset(Keys(redis_prefix).meta, "schema_version", "0")
    with pytest.raises(StoreError, match="schema version 0"):
        RedisStore(REDIS_URL, key_prefix=redis_prefix)


@integration
def test_open_store_opens_redis_for_engine_redis(redis_stores, redis_prefix):
    """open_store gives a RedisStore on the configured URL and prefix."""
    storage = StorageConfig(engine="redis", redis_url=REDIS_URL, key_prefix=redis_prefix)
    store = open_store(storage)
    try:
        assert isinstance(store, RedisStore)
        assert store.keys.prefix == redis_prefix
        store.set_cursor(SOURCE, "Patient", "x")
        assert redis_stores().get_cursor(SOURCE, "Patient") == "x"
    finally:
        store.close()
