"""Tests for fhir_bridge.store.migrate and `fhir-bridge migrate`: SQLite to a real Redis."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_bridge.cli_worker import worker_app
from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.errors import StoreError
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store.base import AuditFilter, AuditRecord, QuarantineEntry, Store
from fhir_bridge.store.migrate import count, iter_audit, migrate
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from fhir_bridge.tasks.service import TaskService
from tests.store.conftest import REDIS_URL
from tests.utils import NOW, ROOT, sample

pytestmark = pytest.mark.integration
SOURCE = "main-ehr"
runner = CliRunner()


def populate(path: Path) -> None:
    """The sample population ingested at NOW, with cursors, quarantine, coordinator changes and
    outbox entries in every status."""
    store = SqliteStore(path)
    rules = RuleSet.load(ROOT / "mappings")
    tasks = TaskService(store, lambda: NOW, [SOURCE])
    ingestor = Ingestor(store, rules, tasks, lambda: NOW)
    for rtype in dependency_order(DEFAULT_RESOURCE_TYPES, rules):
        ingestor.ingest(SOURCE, sample(rtype), rtype, initial=True)
        store.set_cursor(SOURCE, rtype, "2026-11-26T11:00:00Z")
    store.set_cursor("other:ehr", "Patient", "2026-01-01T00:00:00Z")
    for i in range(3):
        store.add_quarantine(
            QuarantineEntry(
                SOURCE,
                "Patient",
                f"bad{i}",
                "1",
                [{"severity": "error", "code": "invalid"}],
                {"resourceType": "Patient", "id": f"bad{i}"},
                NOW + timedelta(seconds=i),
            )
        )
    ids = [t.id for t in store.list_tasks(limit=8).items]
    for tid in ids:
        tasks.claim(tid, "carol")
    tasks.change_status(ids[0], TaskStatus.COMPLETED, "carol", note="done")
    entries = store.list_outbox(limit=-1)
    store.outbox_delivered(entries[0].id, NOW)
    store.outbox_retry(entries[1].id, "503 from server", NOW + timedelta(minutes=5))
    store.outbox_park(entries[2].id, OutboxStatus.DEAD, "400", {"status": 400})
    store.outbox_park(entries[3].id, OutboxStatus.CONFLICT, "412", {"diff": {"a": [1, 2]}})
    store.outbox_discard(entries[4].id, "operator")
    for i, tid in enumerate(ids[:5]):
        store.add_audit(
            AuditRecord(
                recorded=NOW + timedelta(seconds=i),
                subtype="task-claim",
                action="U",
                outcome="0",
                agent="carol",
                roles=("coordinator",),
                address="10.0.0.1",
                patient=f"Patient/p{i % 2}",
                source=SOURCE,
                task_id=tid,
                status_code=200,
            )
        )
    store.put_fact("patient-link", "a/p1|b/p2", {"same_person": True, "by": "ann"})
    store.put_fact("contact-consent", "c1", {"authorized": False})
    store.close()


@pytest.fixture
def sqlite_path(tmp_path) -> Path:
    """A SQLite store file holding the populated sample installation."""
    path = tmp_path / "bridge.db"
    populate(path)
    return path


def assert_same(a: Store, b: Store) -> None:
    """Every resource, cursor, quarantine entry, task, history event and outbox entry is equal."""
    assert a.resource_counts() == b.resource_counts()
    for rtype in a.resource_counts():
        assert list(a.iter_resources(rtype)) == list(b.iter_resources(rtype))
    assert list(a.iter_cursors()) == list(b.iter_cursors())
    assert list(a.iter_quarantine()) == list(b.iter_quarantine())
    tasks_a, tasks_b = list(a.iter_tasks()), list(b.iter_tasks())
    assert tasks_a == tasks_b
    for t in tasks_a:
        assert a.task_history(t.id) == b.task_history(t.id)
    assert list(a.iter_outbox()) == list(b.iter_outbox())
    later = NOW + timedelta(days=1)
    assert a.due_outbox(later, limit=-1) == b.due_outbox(later, limit=-1)
    assert a.queue_counts() == b.queue_counts()
    assert list(iter_audit(a)) == list(iter_audit(b))
    for f in (AuditFilter(agent="carol"), AuditFilter(patient="Patient/p1")):
        assert a.list_audit(f) == b.list_audit(f)
    assert list(a.iter_facts()) == list(b.iter_facts())


def test_migrate_copies_every_entity(sqlite_path, redis_stores):
    """The sample installation migrated to Redis equals the SQLite one, entity by entity."""
    source, target = SqliteStore(sqlite_path), redis_stores()
    try:
        copied = migrate(source, target)
        assert copied == count(source)
        assert copied.tasks > 50 and copied.events > copied.tasks
        assert set(copied.outbox) == {s.value for s in OutboxStatus}
        assert copied.cursors == len(DEFAULT_RESOURCE_TYPES) + 1
        assert copied.audit == 5 and copied.facts == 2
        assert_same(source, target)
    finally:
        source.close()


def test_migrated_outbox_keeps_order_and_ids(sqlite_path, redis_stores):
    """After migration, new entries get fresh ids and due entries are the oldest per task."""
    source, target = SqliteStore(sqlite_path), redis_stores()
    try:
        migrate(source, target)
        top = max(e.id for e in source.iter_outbox())
        task = next(t for t in target.iter_tasks() if t.status is TaskStatus.OPEN)
        TaskService(target, lambda: NOW, [SOURCE]).claim(task.id, "dave")
        new = target.list_outbox(task_id=task.id)
        assert [e.id for e in new] == [top + 1]
        due = target.due_outbox(NOW + timedelta(days=1), limit=-1)
        assert len({e.task_id for e in due}) == len(due)
        for e in due:
            pending = target.list_outbox(OutboxStatus.PENDING, task_id=e.task_id)
            assert e.id == min(p.id for p in pending)
        # The consumer group hands out exactly the due heads (the migrated ones are announced).
        claims = target.claim_outbox("w1", NOW + timedelta(days=1), limit=1000)
        assert sorted(c.entry.id for c in claims) == sorted(e.id for e in due)
        record = AuditRecord(NOW, "task-claim", "U", "0", "dave", task_id=task.id)
        assert target.add_audit(record) == max(r.id for r in iter_audit(source)) + 1
    finally:
        source.close()


def test_migrate_refuses_a_non_empty_target(sqlite_path, redis_stores):
    """A target with data is refused; --force replaces what it held."""
    source, target = SqliteStore(sqlite_path), redis_stores()
    try:
        target.set_cursor("x", "Patient", "2020-01-01T00:00:00Z")
        with pytest.raises(StoreError, match="not empty"):
            migrate(source, target)
        assert source.resource_counts() and not target.resource_counts()
        migrate(source, target, force=True)
        assert ("x", "Patient", "2020-01-01T00:00:00Z") not in list(target.iter_cursors())
        assert_same(source, target)
    finally:
        source.close()


def test_cli_migrate_prints_and_verifies_counts(sqlite_path, redis_prefix, redis_stores):
    """`migrate --from sqlite:PATH --to URL --prefix P` exits 0 and prints the counts."""
    args = ["migrate", "--from", f"sqlite:{sqlite_path}", "--to", REDIS_URL]
    result = runner.invoke(worker_app, [*args, "--prefix", redis_prefix])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    source = SqliteStore(sqlite_path)
    try:
        counts = count(source)
        assert f"tasks: {counts.tasks} with {counts.events} history events" in result.output
        assert "audit records: 5" in result.output
        assert_same(source, redis_stores())
    finally:
        source.close()
    again = runner.invoke(worker_app, [*args, "--prefix", redis_prefix])
    assert again.exit_code == 2 and "not empty" in again.output


def test_cli_migrate_rejects_bad_arguments(tmp_path):
    """A missing SQLite file or a non-Redis target exits 2 with a readable error."""
    missing = runner.invoke(
        worker_app, ["migrate", "--from", f"sqlite:{tmp_path}/none.db", "--to", REDIS_URL]
    )
    assert missing.exit_code == 2 and "no SQLite store" in missing.output
    assert not (tmp_path / "none.db").exists()
    path = tmp_path / "b.db"
    SqliteStore(path).close()
    wrong = runner.invoke(worker_app, ["migrate", "--from", f"sqlite:{path}", "--to", "http://x"])
    assert wrong.exit_code == 2 and "redis://" in wrong.output


def test_redis_store_restore_is_isolated_per_prefix(redis_stores, redis_client):
    """`wipe` deletes only the keys of its own prefix and keeps the schema version."""
    store: RedisStore = redis_stores()
    other = RedisStore(REDIS_URL, key_prefix=store.keys.prefix + "-other")
    try:
        other.set_cursor("s", "Patient", "2020-01-01T00:00:00Z")
        store.set_cursor("s", "Patient", "2020-01-01T00:00:00Z")
        assert store.wipe() >= 2
        assert store.is_empty() and not other.is_empty()
        assert redis_client.hget(store.keys.meta, "schema_version") is not None
    finally:
        other.wipe()
        redis_client.delete(other.keys.meta)
        other.close()
