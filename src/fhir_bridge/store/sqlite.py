"""The embedded storage engine: one SQLite file, no set-up.

One connection, shared by the API's worker threads and the sync/write-back loops behind a
lock: SQLite serialises writers anyway, and a single connection keeps `batch()` simple. WAL
mode lets readers of other processes (an operator's `sqlite3` shell, a backup) work while we
write; `synchronous=NORMAL` in WAL is durable across process crashes, which is what the
cursor/outbox invariants need.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from fhir_bridge.errors import StoreError, TaskNotFound
from fhir_bridge.patients.refs import patient_reference
from fhir_bridge.patients.terms import patient_terms
from fhir_bridge.store import bodies
from fhir_bridge.store.base import (
    AuditFilter,
    AuditRecord,
    DueCounts,
    Lease,
    QuarantineEntry,
    Store,
    StoredResource,
    TaskCursor,
    TaskFilter,
    TaskPage,
    TaskUpsert,
)
from fhir_bridge.tasks.model import (
    OutboxEntry,
    OutboxStatus,
    Priority,
    Task,
    TaskChange,
    TaskDraft,
    TaskEvent,
    TaskStatus,
)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    source TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
    version_id TEXT, last_updated TEXT, hash TEXT NOT NULL, body TEXT NOT NULL,
    stored_at TEXT NOT NULL, patient TEXT,
    PRIMARY KEY (source, type, id)
);
-- (source, patient, type, id): the patient lookups of `related` rules read it in id order
-- without a scan of the whole type (a bulk load of 100k resources slowed 12x without it).
DROP INDEX IF EXISTS resources_patient;
CREATE INDEX IF NOT EXISTS resources_patient_id ON resources (source, patient, type, id);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (source, type)
);
CREATE TABLE IF NOT EXISTS quarantine (
    source TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL, version_id TEXT,
    issues TEXT NOT NULL, body TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (source, type, id)
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, source TEXT NOT NULL,
    focus_type TEXT NOT NULL, focus_id TEXT NOT NULL, focus_version TEXT, patient TEXT,
    queue TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL,
    priority TEXT NOT NULL, priority_rank INTEGER NOT NULL, due TEXT,
    status TEXT NOT NULL, assignee TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    version INTEGER NOT NULL, mirror_id TEXT, mirror_version TEXT,
    description TEXT, labels TEXT NOT NULL DEFAULT '[]',
    UNIQUE (rule_id, source, focus_type, focus_id)
);
-- Task lists are read in (priority, due with none last, id) order: each index ends in that
-- order so a page is an index range, not a sort of every match (100k tasks: 30-70 ms -> <1 ms).
DROP INDEX IF EXISTS tasks_queue;
CREATE INDEX IF NOT EXISTS tasks_queue_order
    ON tasks (queue, status, priority_rank DESC, due IS NULL, due, id);
CREATE INDEX IF NOT EXISTS tasks_patient_order
    ON tasks (patient, priority_rank DESC, due IS NULL, due, id);
-- Only assigned tasks: lists are asked for by `assignee = ?`, which implies the index's WHERE,
-- and tasks are made unassigned unless their rule names an assignee, so a first load's inserts
-- mostly skip this index (-16% of its task SQL on the sample rules).
DROP INDEX IF EXISTS tasks_assignee_order;
CREATE INDEX IF NOT EXISTS tasks_assignee_set
    ON tasks (assignee, status, priority_rank DESC, due IS NULL, due, id)
    WHERE assignee IS NOT NULL;
-- The active lists (open + in progress) of a queue; used because the status list is inlined
-- as literals in the query (a partial index is only chosen for constants).
CREATE INDEX IF NOT EXISTS tasks_active_order
    ON tasks (queue, priority_rank DESC, due IS NULL, due, id)
    WHERE status IN ('open', 'in-progress');
CREATE INDEX IF NOT EXISTS tasks_status_due ON tasks (status, due, queue);  -- SLA counts
-- Tasks per (queue, status), kept by triggers: the board asks on every view, and counting
-- 100k index entries per request costs ~45 ms. REPLACE fires the delete trigger because the
-- connection turns `recursive_triggers` on.
CREATE TABLE IF NOT EXISTS task_counts (
    queue TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (queue, status)
);
CREATE TRIGGER IF NOT EXISTS task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (queue, status, n) VALUES (new.queue, new.status, 1)
    ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1 WHERE queue = old.queue AND status = old.status;
END;
CREATE TRIGGER IF NOT EXISTS task_counts_update AFTER UPDATE OF queue, status ON tasks
WHEN old.queue != new.queue OR old.status != new.status BEGIN
    UPDATE task_counts SET n = n - 1 WHERE queue = old.queue AND status = old.status;
    INSERT INTO task_counts (queue, status, n) VALUES (new.queue, new.status, 1)
    ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
END;
CREATE INDEX IF NOT EXISTS tasks_rule ON tasks (rule_id, status);
CREATE TABLE IF NOT EXISTS task_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, at TEXT NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, from_status TEXT, to_status TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, source TEXT NOT NULL,
    action TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL, last_error TEXT,
    created_at TEXT NOT NULL, delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, task_id, id);
CREATE TABLE IF NOT EXISTS outbox_detail (id INTEGER PRIMARY KEY, detail TEXT NOT NULL);
-- Append-only audit trail (added without a schema bump: a new table older files lack).
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recorded TEXT NOT NULL, agent TEXT NOT NULL,
    patient TEXT, task_id TEXT, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_patient ON audit (patient, id);
CREATE INDEX IF NOT EXISTS audit_agent ON audit (agent, id);
-- Patient identifiers (system, value) -> record, kept by triggers on `resources` so no write
-- path has to remember it; cross-source linking looks records up here instead of reading every
-- Patient. Added without a schema bump: `_backfill_identifiers` fills it for older files.
CREATE TABLE IF NOT EXISTS patient_identifiers (
    system TEXT NOT NULL, value TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patient_identifiers_key ON patient_identifiers (system, value);
CREATE INDEX IF NOT EXISTS patient_identifiers_record ON patient_identifiers (source, id);
CREATE TRIGGER IF NOT EXISTS patient_identifiers_insert AFTER INSERT ON resources
WHEN new.type = 'Patient' BEGIN
    DELETE FROM patient_identifiers WHERE source = new.source AND id = new.id;
    INSERT INTO patient_identifiers (system, value, source, id)
    SELECT json_extract(i.value, '$.system'), json_extract(i.value, '$.value'), new.source, new.id
    FROM json_each(new.body, '$.identifier') AS i
    WHERE json_type(i.value, '$.system') = 'text' AND json_type(i.value, '$.value') = 'text';
END;
CREATE TRIGGER IF NOT EXISTS patient_identifiers_update AFTER UPDATE OF body ON resources
WHEN new.type = 'Patient' BEGIN
    DELETE FROM patient_identifiers WHERE source = old.source AND id = old.id;
    INSERT INTO patient_identifiers (system, value, source, id)
    SELECT json_extract(i.value, '$.system'), json_extract(i.value, '$.value'), new.source, new.id
    FROM json_each(new.body, '$.identifier') AS i
    WHERE json_type(i.value, '$.system') = 'text' AND json_type(i.value, '$.value') = 'text';
END;
CREATE TRIGGER IF NOT EXISTS patient_identifiers_delete AFTER DELETE ON resources
WHEN old.type = 'Patient' BEGIN
    DELETE FROM patient_identifiers WHERE source = old.source AND id = old.id;
END;
-- Patient search terms (`patients.terms`: name words, birth date, identifier values) ->
-- record, written with each Patient (the words need Python's Unicode folding, so no trigger
-- makes them) and deleted with it by trigger; `term` ranges answer prefix searches. Added
-- without a schema bump: `_backfill_terms` fills it for older files.
CREATE TABLE IF NOT EXISTS patient_terms (
    term TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (term, source, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS patient_terms_record ON patient_terms (source, id);
CREATE TRIGGER IF NOT EXISTS patient_terms_delete AFTER DELETE ON resources
WHEN old.type = 'Patient' BEGIN
    DELETE FROM patient_terms WHERE source = old.source AND id = old.id;
END;
-- Facts people set by hand (patient links, ...): added without a schema bump, like audit.
CREATE TABLE IF NOT EXISTS facts (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)
);
"""

_PRIORITY_RANK = {Priority.ROUTINE: 0, Priority.URGENT: 1, Priority.ASAP: 2, Priority.STAT: 3}
_TASK_COLUMNS = (
    "id, rule_id, source, focus_type, focus_id, focus_version, patient, queue, kind, title, "
    "priority, due, status, assignee, created_at, updated_at, version, mirror_id, mirror_version, "
    "description, labels"
)
_TASK_INSERT = "INSERT OR REPLACE INTO tasks ({}) VALUES ({})".format(  # noqa: S608 (constants)
    _TASK_COLUMNS.replace("priority,", "priority, priority_rank,"), ", ".join("?" * 22)
)


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _task_from_row(row: sqlite3.Row) -> Task:
    created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
    assert created is not None and updated is not None  # noqa: S101  (NOT NULL columns)
    return Task(
        id=row["id"],
        rule_id=row["rule_id"],
        source=row["source"],
        focus_type=row["focus_type"],
        focus_id=row["focus_id"],
        focus_version=row["focus_version"],
        patient=row["patient"],
        queue=row["queue"],
        kind=row["kind"],
        title=row["title"],
        priority=Priority(row["priority"]),
        due=_dt(row["due"]),
        status=TaskStatus(row["status"]),
        assignee=row["assignee"],
        created_at=created,
        updated_at=updated,
        version=row["version"],
        mirror_id=row["mirror_id"],
        mirror_version=row["mirror_version"],
        description=row["description"],
        labels=tuple(json.loads(row["labels"])),
    )


def _task_params(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.rule_id,
        task.source,
        task.focus_type,
        task.focus_id,
        task.focus_version,
        task.patient,
        task.queue,
        task.kind,
        task.title,
        task.priority.value,
        _PRIORITY_RANK[task.priority],
        _ts(task.due),
        task.status.value,
        task.assignee,
        _ts(task.created_at),
        _ts(task.updated_at),
        task.version,
        task.mirror_id,
        task.mirror_version,
        task.description,
        json.dumps(list(task.labels)),
    )


def _after_clause(cursor: TaskCursor) -> tuple[str, list[Any]]:
    """The WHERE part that keeps the tasks after `cursor` in listing order
    (priority_rank DESC, due IS NULL, due, id)."""
    rank = _PRIORITY_RANK[cursor.priority]
    due = _ts(cursor.due)
    if due is None:
        later_due, due_params = "(due IS NULL AND id > ?)", [cursor.id]
    else:
        later_due = "(due IS NULL OR due > ? OR (due = ? AND id > ?))"
        due_params = [due, due, cursor.id]
    params: list[Any] = [rank, rank, *due_params]
    return f"(priority_rank < ? OR (priority_rank = ? AND {later_due}))", params


def _resource_from_row(r: sqlite3.Row) -> StoredResource:
    return StoredResource(
        source=r["source"],
        resource_type=r["type"],
        id=r["id"],
        version_id=r["version_id"],
        last_updated=r["last_updated"],
        content_hash=r["hash"],
        body=bodies.loads(r["body"]),
    )


_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's limit on bound parameters
_RESOURCE_UPSERT = (
    "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (source, type, id) DO UPDATE SET version_id=excluded.version_id, "
    "last_updated=excluded.last_updated, hash=excluded.hash, body=excluded.body, "
    "stored_at=excluded.stored_at, patient=excluded.patient WHERE hash != excluded.hash"
)


def _event_from_row(r: sqlite3.Row) -> TaskEvent:
    return TaskEvent(
        task_id=r["task_id"],
        at=datetime.fromisoformat(r["at"]),
        actor=r["actor"],
        action=r["action"],
        from_status=r["from_status"],
        to_status=r["to_status"],
        detail=json.loads(r["detail"]),
    )


def _outbox_from_row(row: sqlite3.Row) -> OutboxEntry:
    next_at, created = _dt(row["next_attempt_at"]), _dt(row["created_at"])
    assert next_at is not None and created is not None  # noqa: S101  (NOT NULL columns)
    return OutboxEntry(
        id=row["id"],
        task_id=row["task_id"],
        source=row["source"],
        action=row["action"],
        payload=json.loads(row["payload"]),
        status=OutboxStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=next_at,
        last_error=row["last_error"],
        created_at=created,
        delivered_at=_dt(row["delivered_at"]),
        detail=json.loads(row["detail"]) if row["detail"] else None,
    )


def _put_terms(db: sqlite3.Connection, source: str, rid: str, patient: dict[str, Any]) -> None:
    """Replace the search terms of one Patient record (inside the caller's transaction)."""
    db.execute("DELETE FROM patient_terms WHERE source = ? AND id = ?", (source, rid))
    db.executemany(
        "INSERT OR IGNORE INTO patient_terms (term, source, id) VALUES (?, ?, ?)",
        [(term, source, rid) for term in patient_terms(patient)],
    )


# Outbox rows with their detail (kept in a side table so older store files need no migration).
_OUTBOX_SELECT = "SELECT o.*, d.detail FROM outbox o LEFT JOIN outbox_detail d ON d.id = o.id"


class SqliteStore(Store):
    """Storage in one SQLite file (or `:memory:` for tests)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA recursive_triggers=ON")  # see task_counts in _SCHEMA
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            found = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        if int(found) != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"SQLite store {self.path} has schema version {found}, this fhir_bridge needs "
                f"{SCHEMA_VERSION}: move the file aside and sync again "
                "(stores before 1.0 are not migrated)"
            )
        self._lock = threading.RLock()
        self._depth = 0
        self._backfill_identifiers()
        self._backfill_terms()
        self._backfill_task_counts()

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (or a nested part of the enclosing one), errors as StoreError."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._db
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"SQLite commit failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite read failed: {exc}") from exc

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""
        try:
            with self._tx() as db:
                changed: int = db.execute(sql, params).rowcount
                return changed
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        try:
            with self._tx():
                yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    # -- resources ---------------------------------------------------------------------------
    def put_resource(self, source: str, resource: dict[str, Any], content_hash: str) -> bool:
        rtype, rid = resource["resourceType"], resource["id"]
        meta = resource.get("meta") or {}
        try:
            with self._tx() as db:
                # One statement: an unchanged hash makes the upsert's WHERE false, no row.
                changed: int = db.execute(
                    _RESOURCE_UPSERT,
                    (
                        source,
                        rtype,
                        rid,
                        meta.get("versionId"),
                        meta.get("lastUpdated"),
                        content_hash,
                        bodies.dumps(resource),
                        _now(),
                        patient_reference(resource),
                    ),
                ).rowcount
                if changed and rtype == "Patient":
                    _put_terms(db, source, rid, resource)
                return changed > 0
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def put_resources(
        self,
        source: str,
        items: Sequence[tuple[dict[str, Any], str]],
        *,
        unmapped: bool = False,  # nothing to mark: `batch` is one transaction with the tasks
    ) -> list[bool]:
        if not items:
            return []
        wanted: dict[str, list[str]] = {}
        for resource, _ in items:
            wanted.setdefault(resource["resourceType"], []).append(resource["id"])
        stored_at = _now()
        try:
            with self._tx() as db:
                hashes = {
                    (rtype, rid): digest
                    for rtype, ids in wanted.items()
                    for rid, digest in self.resource_hashes(source, rtype, ids).items()
                }
                written, rows = [], []
                for resource, digest in items:
                    key = (resource["resourceType"], resource["id"])
                    changed = hashes.get(key) != digest
                    written.append(changed)
                    if changed:
                        hashes[key] = digest
                        meta = resource.get("meta") or {}
                        rows.append(
                            (
                                source,
                                *key,
                                meta.get("versionId"),
                                meta.get("lastUpdated"),
                                digest,
                                bodies.dumps(resource),
                                stored_at,
                                patient_reference(resource),
                            )
                        )
                db.executemany(
                    "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                for (resource, _), changed in zip(items, written, strict=True):
                    if changed and resource["resourceType"] == "Patient":
                        _put_terms(db, source, resource["id"], resource)
                return written
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def resource_hashes(
        self, source: str, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, str]:
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(resource_ids))
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            rows = self._read(
                "SELECT id, hash FROM resources WHERE source=? AND type=? "  # noqa: S608
                f"AND id IN ({', '.join('?' * len(chunk))})",
                (source, resource_type, *chunk),
            )
            found.update((r["id"], r["hash"]) for r in rows)
        return found

    def delete_resource(self, source: str, resource_type: str, resource_id: str) -> bool:
        return (
            self._write(
                "DELETE FROM resources WHERE source=? AND type=? AND id=?",
                (source, resource_type, resource_id),
            )
            > 0
        )

    def get_resource(
        self, source: str, resource_type: str, resource_id: str
    ) -> StoredResource | None:
        rows = self._read(
            "SELECT * FROM resources WHERE source=? AND type=? AND id=?",
            (source, resource_type, resource_id),
        )
        return _resource_from_row(rows[0]) if rows else None

    def resources_for_patient(
        self, source: str, patient: str, resource_type: str | None = None
    ) -> list[StoredResource]:
        if resource_type is None:
            rows = self._read(
                "SELECT * FROM resources WHERE source=? AND patient=? ORDER BY type, id",
                (source, patient),
            )
        else:
            rows = self._read(
                "SELECT * FROM resources WHERE source=? AND patient=? AND type=? ORDER BY id",
                (source, patient, resource_type),
            )
        return [_resource_from_row(r) for r in rows]

    def iter_resources(
        self, resource_type: str, source: str | None = None
    ) -> Iterator[StoredResource]:
        last = ("", "")
        while True:
            clauses = "type=? AND (source, id) > (?, ?)" + (" AND source=?" if source else "")
            params: list[Any] = [resource_type, *last] + ([source] if source else [])
            rows = self._read(
                f"SELECT * FROM resources WHERE {clauses} ORDER BY source, id LIMIT 500",  # noqa: S608
                params,
            )
            if not rows:
                return
            yield from (_resource_from_row(r) for r in rows)
            last = (rows[-1]["source"], rows[-1]["id"])

    def resource_counts(self, source: str | None = None) -> dict[str, int]:
        if source is None:
            rows = self._read("SELECT type, COUNT(*) AS n FROM resources GROUP BY type")
        else:
            rows = self._read(
                "SELECT type, COUNT(*) AS n FROM resources WHERE source=? GROUP BY type", (source,)
            )
        return {r["type"]: r["n"] for r in rows}

    # -- cursors -----------------------------------------------------------------------------
    def get_cursor(self, source: str, resource_type: str) -> str | None:
        rows = self._read(
            "SELECT value FROM cursors WHERE source=? AND type=?", (source, resource_type)
        )
        return rows[0]["value"] if rows else None

    def set_cursor(self, source: str, resource_type: str, value: str | None) -> None:
        if value is None:
            self._write("DELETE FROM cursors WHERE source=? AND type=?", (source, resource_type))
        else:
            self._write(
                "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?)",
                (source, resource_type, value, _now()),
            )

    # -- quarantine --------------------------------------------------------------------------
    def add_quarantine(self, entry: QuarantineEntry) -> None:
        # Entries without an id are keyed by their content, so none overwrites another.
        key = (
            entry.resource_id
            or "(no id) "
            + hashlib.sha256(json.dumps(entry.body, sort_keys=True).encode()).hexdigest()[:16]
        )
        self._write(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entry.source,
                entry.resource_type,
                key,
                entry.version_id,
                json.dumps(entry.issues),
                json.dumps(entry.body),
                _ts(entry.at),
            ),
        )

    def list_quarantine(
        self, source: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[QuarantineEntry], int]:
        where, params = ("WHERE source=?", [source]) if source else ("", [])
        total = self._read(f"SELECT COUNT(*) AS n FROM quarantine {where}", params)[0]["n"]  # noqa: S608
        rows = self._read(
            f"SELECT * FROM quarantine {where} ORDER BY at DESC, id LIMIT ? OFFSET ?",  # noqa: S608
            [*params, limit, offset],
        )
        entries = [
            QuarantineEntry(
                source=r["source"],
                resource_type=r["type"],
                resource_id=None if r["id"].startswith("(no id)") else r["id"],
                version_id=r["version_id"],
                issues=json.loads(r["issues"]),
                body=json.loads(r["body"]),
                at=datetime.fromisoformat(r["at"]),
            )
            for r in rows
        ]
        return entries, total

    def release_quarantine(self, source: str, resource_type: str, resource_id: str) -> None:
        self._write(
            "DELETE FROM quarantine WHERE source=? AND type=? AND id=?",
            (source, resource_type, resource_id),
        )

    def release_quarantines(self, source: str, keys: Sequence[tuple[str, str]]) -> None:
        try:
            with self._tx() as db:
                db.executemany(
                    "DELETE FROM quarantine WHERE source=? AND type=? AND id=?",
                    [(source, rtype, rid) for rtype, rid in keys],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    # -- audit trail -------------------------------------------------------------------------
    def add_audit(self, record: AuditRecord) -> int:
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO audit (recorded, agent, patient, task_id, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        _ts(record.recorded),
                        record.agent,
                        record.patient,
                        record.task_id,
                        json.dumps(record.to_json()),
                    ),
                )
                return int(cur.lastrowid or 0)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def list_audit(
        self, filters: AuditFilter | None = None, limit: int = 100, cursor: int | None = None
    ) -> tuple[list[AuditRecord], int | None]:
        f = filters or AuditFilter()
        where: list[str] = ["1=1"]
        params: list[Any] = []
        for column, value in (("agent", f.agent), ("patient", f.patient), ("task_id", f.task_id)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        if f.since is not None:
            where.append("recorded>=?")
            params.append(_ts(f.since))
        if f.until is not None:
            where.append("recorded<?")
            params.append(_ts(f.until))
        if cursor is not None:
            where.append("id<?")
            params.append(cursor)
        rows = self._read(
            f"SELECT id, body FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",  # noqa: S608
            [*params, limit + 1],
        )
        records = [AuditRecord.from_json(json.loads(r["body"]), r["id"]) for r in rows[:limit]]
        more = len(rows) > limit and records
        return records, records[-1].id if more else None

    # -- tasks -------------------------------------------------------------------------------
    def _task_row(self, db: sqlite3.Connection, task_id: str) -> Task | None:
        row = db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()  # noqa: S608
        return _task_from_row(row) if row else None

    def _save_task(self, db: sqlite3.Connection, task: Task) -> None:
        db.execute(_TASK_INSERT, _task_params(task))

    def _add_event(self, db: sqlite3.Connection, event: TaskEvent) -> None:
        db.execute(
            "INSERT INTO task_events (task_id, at, actor, action, from_status, to_status, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event.task_id,
                _ts(event.at),
                event.actor,
                event.action,
                event.from_status,
                event.to_status,
                json.dumps(event.detail),
            ),
        )

    def upsert_task(self, draft: TaskDraft, now: datetime) -> TaskUpsert:
        try:
            with self._tx() as db:
                current = self._task_row(db, draft.id)
                if current is None:
                    task = Task.from_draft(draft, now)
                    self._save_task(db, task)
                    self._add_event(
                        db,
                        TaskEvent(
                            task.id,
                            now,
                            "bridge",
                            "created",
                            None,
                            task.status.value,
                            {"focus_version": draft.focus_version},
                        ),
                    )
                    return TaskUpsert(task, created=True, updated=False)
                refreshed = current.refreshed(draft, now)
                if refreshed is None:
                    return TaskUpsert(current, created=False, updated=False)
                self._save_task(db, refreshed)
                self._add_event(
                    db,
                    TaskEvent(
                        current.id,
                        now,
                        "bridge",
                        "refreshed",
                        None,
                        None,
                        {"focus_version": draft.focus_version},
                    ),
                )
                return TaskUpsert(refreshed, created=False, updated=True)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def upsert_tasks(self, drafts: Sequence[TaskDraft], now: datetime) -> list[TaskUpsert]:
        ids = [d.id for d in drafts]
        try:
            with self._tx() as db:
                if len(set(ids)) < len(ids) or self.get_tasks(ids):
                    return [self.upsert_task(d, now) for d in drafts]  # refreshes: one by one
                # All new (the usual batch of a first load): two statements for the lot.
                tasks = [Task.from_draft(d, now) for d in drafts]
                db.executemany(_TASK_INSERT, [_task_params(t) for t in tasks])
                at = _ts(now)
                db.executemany(
                    "INSERT INTO task_events (task_id, at, actor, action, from_status, "
                    "to_status, detail) VALUES (?, ?, 'bridge', 'created', NULL, ?, ?)",
                    [
                        (t.id, at, t.status.value, json.dumps({"focus_version": d.focus_version}))
                        for t, d in zip(tasks, drafts, strict=True)
                    ],
                )
                return [TaskUpsert(t, created=True, updated=False) for t in tasks]
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def get_task(self, task_id: str) -> Task | None:
        with self._lock:
            return self._task_row(self._db, task_id)

    def rules_with_tasks(
        self,
        source: str,
        focus_type: str,
        rule_ids: Sequence[str],
        focus_ids: Sequence[str] | None = None,
    ) -> set[str]:
        wanted = list(dict.fromkeys(rule_ids))
        if not wanted:
            return set()
        rules = f"rule_id IN ({', '.join('?' * len(wanted))})"
        ids = None if focus_ids is None else list(dict.fromkeys(focus_ids))
        chunks = (
            [None]
            if ids is None
            else [ids[i : i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK)]
        )
        found: set[str] = set()
        for chunk in chunks:  # the UNIQUE (rule_id, source, focus_type, focus_id) index answers
            focus = "" if chunk is None else f" AND focus_id IN ({', '.join('?' * len(chunk))})"
            rows = self._read(
                f"SELECT DISTINCT rule_id FROM tasks WHERE {rules} "  # noqa: S608
                f"AND source=? AND focus_type=?{focus}",
                (*wanted, source, focus_type, *(chunk or ())),
            )
            found.update(r["rule_id"] for r in rows)
        return found

    def get_tasks(self, task_ids: Sequence[str]) -> dict[str, Task]:
        found: dict[str, Task] = {}
        ids = list(dict.fromkeys(task_ids))
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            rows = self._read(
                f"SELECT {_TASK_COLUMNS} FROM tasks "  # noqa: S608
                f"WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((r["id"], _task_from_row(r)) for r in rows)
        return found

    def _list_tasks(
        self, f: TaskFilter, limit: int, offset: int, after: TaskCursor | None
    ) -> TaskPage:
        queue, statuses, rule_id, kind, assignee = (
            f.queue,
            f.statuses,
            f.rule_id,
            f.kind,
            f.assignee,
        )
        patient, label, due_after, due_before = f.patient, f.label, f.due_after, f.due_before
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("queue", queue),
            ("rule_id", rule_id),
            ("kind", kind),
            ("assignee", assignee),
            ("patient", patient),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if statuses:  # enum values inlined: lets SQLite pick tasks_active_order
            clauses.append(f"status IN ({', '.join(repr(s.value) for s in sorted(statuses))})")
        if label is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(tasks.labels) WHERE value = ?)")
            params.append(label)
        # Due dates are stored as UTC ISO strings of one shape, so text order is time order.
        if due_after is not None:
            clauses.append("due >= ?")
            params.append(_ts(due_after))
        if due_before is not None:
            clauses.append("due < ?")
            params.append(_ts(due_before))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if f == TaskFilter(queue=queue, statuses=statuses):
            total = self._counted(queue, statuses)
        else:
            total = self._read(f"SELECT COUNT(*) AS n FROM tasks {where}", params)[0]["n"]  # noqa: S608
        if after is not None:
            keyset, keyset_params = _after_clause(after)
            where = f"{where} AND {keyset}" if where else f"WHERE {keyset}"
            params = [*params, *keyset_params]
        rows = self._read(
            f"SELECT {_TASK_COLUMNS} FROM tasks {where} "  # noqa: S608
            "ORDER BY priority_rank DESC, due IS NULL, due, id LIMIT ? OFFSET ?",
            [*params, limit + 1, offset],
        )
        tasks = [_task_from_row(r) for r in rows]
        return TaskPage(tasks[:limit], total, more=len(tasks) > limit)

    def _counted(self, queue: str | None, statuses: Sequence[TaskStatus]) -> int:
        """The number of tasks of `queue` (any) in `statuses` (any), from `task_counts`: a
        queue's open list counts tens of thousands of index entries per page otherwise
        (58k: ~5-20 ms a request)."""
        clauses, params = [], []
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(TaskStatus(s).value for s in statuses)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"SELECT COALESCE(SUM(n), 0) AS n FROM task_counts {where}", params)  # noqa: S608
        return int(rows[0]["n"])

    def due_counts(self, now: datetime, day_end: datetime) -> dict[str, DueCounts]:
        # Two index ranges over (status, due): only the tasks counted are read.
        active = "status IN ('open', 'in-progress')"
        overdue = self._read(
            f"SELECT queue, COUNT(*) AS n FROM tasks WHERE {active} AND due < ? GROUP BY queue",  # noqa: S608
            (_ts(now),),
        )
        today = self._read(
            f"SELECT queue, COUNT(*) AS n FROM tasks WHERE {active} AND due >= ? AND due < ? "  # noqa: S608
            "GROUP BY queue",
            (_ts(now), _ts(day_end)),
        )
        queues = self._read(f"SELECT DISTINCT queue FROM task_counts WHERE n > 0 AND {active}")  # noqa: S608
        counts = {r["queue"]: DueCounts(overdue=0, due_today=0) for r in queues}
        for r in overdue:
            counts[r["queue"]] = DueCounts(overdue=r["n"], due_today=0)
        for r in today:
            found = counts.get(r["queue"], DueCounts())
            counts[r["queue"]] = DueCounts(overdue=found.overdue, due_today=r["n"])
        return counts

    def queue_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for r in self._read(
            "SELECT queue, status, n FROM task_counts WHERE n > 0 ORDER BY queue, status"
        ):
            counts.setdefault(r["queue"], {})[r["status"]] = r["n"]
        return counts

    def update_task(self, task_id: str, change: Callable[[Task], TaskChange]) -> Task:
        try:
            with self._tx() as db:
                current = self._task_row(db, task_id)
                if current is None:
                    raise TaskNotFound(f"no task {task_id}")
                result = change(current)
                self._save_task(db, result.task)
                self._add_event(db, result.event)
                for draft in result.outbox:
                    at = _ts(result.event.at)
                    db.execute(
                        "INSERT INTO outbox (task_id, source, action, payload, status, attempts, "
                        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
                        (
                            draft.task_id,
                            draft.source,
                            draft.action,
                            json.dumps(draft.payload),
                            at,
                            at,
                        ),
                    )
                return result.task
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def set_task_mirror(self, task_id: str, mirror_id: str, mirror_version: str | None) -> None:
        self._write(
            "UPDATE tasks SET mirror_id=?, mirror_version=? WHERE id=?",
            (mirror_id, mirror_version, task_id),
        )

    def task_history(self, task_id: str) -> list[TaskEvent]:
        rows = self._read("SELECT * FROM task_events WHERE task_id=? ORDER BY seq", (task_id,))
        return [_event_from_row(r) for r in rows]

    def task_histories(self, task_ids: Sequence[str]) -> dict[str, list[TaskEvent]]:
        out: dict[str, list[TaskEvent]] = {task_id: [] for task_id in task_ids}
        ids = list(out)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(
                f"SELECT * FROM task_events WHERE task_id IN ({marks}) ORDER BY task_id, seq",  # noqa: S608
                chunk,
            )
            for r in rows:
                out[r["task_id"]].append(_event_from_row(r))
        return out

    # -- outbox ------------------------------------------------------------------------------
    def due_outbox(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        rows = self._read(
            f"{_OUTBOX_SELECT} JOIN (SELECT task_id, MIN(id) AS first_id FROM outbox "  # noqa: S608
            "WHERE status='pending' GROUP BY task_id) f ON o.id = f.first_id "
            "WHERE o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
            (_ts(now), limit),
        )
        return [_outbox_from_row(r) for r in rows]

    def outbox_delivered(self, entry_id: int, now: datetime) -> None:
        self._write(
            "UPDATE outbox SET status='delivered', attempts=attempts+1, delivered_at=?, "
            "last_error=NULL WHERE id=?",
            (_ts(now), entry_id),
        )

    def outbox_retry(self, entry_id: int, error: str, next_attempt_at: datetime) -> None:
        self._write(
            "UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
            (error, _ts(next_attempt_at), entry_id),
        )

    def outbox_dead(self, entry_id: int, error: str) -> None:
        self._write(
            "UPDATE outbox SET status='dead', attempts=attempts+1, last_error=? WHERE id=?",
            (error, entry_id),
        )

    def list_outbox(
        self, status: OutboxStatus | None = None, task_id: str | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        clauses, params = [], []
        if status is not None:
            clauses.append("o.status = ?")
            params.append(status.value)
        if task_id is not None:
            clauses.append("o.task_id = ?")
            params.append(task_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"{_OUTBOX_SELECT} {where} ORDER BY o.id LIMIT ?", [*params, limit])
        return [_outbox_from_row(r) for r in rows]

    def get_outbox(self, entry_id: int) -> OutboxEntry | None:
        rows = self._read(f"{_OUTBOX_SELECT} WHERE o.id = ?", (entry_id,))
        return _outbox_from_row(rows[0]) if rows else None

    def outbox_park(
        self, entry_id: int, status: OutboxStatus, error: str, detail: dict[str, Any]
    ) -> None:
        if status not in (OutboxStatus.DEAD, OutboxStatus.CONFLICT):
            raise ValueError(f"an entry is parked as dead or conflict, not {status.value}")
        try:
            with self._tx() as db:
                db.execute(
                    "UPDATE outbox SET status=?, attempts=attempts+1, last_error=? WHERE id=?",
                    (status.value, error, entry_id),
                )
                db.execute(
                    "INSERT OR REPLACE INTO outbox_detail (id, detail) VALUES (?, ?)",
                    (entry_id, json.dumps(detail)),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def outbox_requeue(self, entry_id: int, now: datetime) -> bool:
        return (
            self._write(
                "UPDATE outbox SET status='pending', attempts=0, next_attempt_at=? "
                "WHERE id=? AND status IN ('dead', 'conflict')",
                (_ts(now), entry_id),
            )
            > 0
        )

    def outbox_discard(self, entry_id: int, reason: str) -> bool:
        return (
            self._write(
                "UPDATE outbox SET status='discarded', last_error=? "
                "WHERE id=? AND status NOT IN ('delivered', 'discarded')",
                (reason, entry_id),
            )
            > 0
        )

    # -- bulk reads (for `store/migrate.py`) -------------------------------------------------
    def iter_cursors(self) -> Iterator[tuple[str, str, str]]:
        rows = self._read("SELECT source, type, value FROM cursors ORDER BY source, type")
        for r in rows:
            yield r["source"], r["type"], r["value"]

    # -- fenced writes -----------------------------------------------------------------------
    def set_cursor_fenced(
        self, source: str, resource_type: str, value: str | None, lease: Lease
    ) -> bool:
        # One process uses this file (leases are in-process): the token check alone fences a
        # stale holder. The highest token is kept in `meta`, so the schema does not change.
        fence = f"fence:{lease.name}"
        try:
            with self._tx() as db:
                row = db.execute("SELECT value FROM meta WHERE key = ?", (fence,)).fetchone()
                if row is not None and lease.token < int(row["value"]):
                    return False
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (fence, str(lease.token)),
                )
                if value is None:
                    db.execute(
                        "DELETE FROM cursors WHERE source=? AND type=?", (source, resource_type)
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?)",
                        (source, resource_type, value, _now()),
                    )
                return True
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    # -- facts -------------------------------------------------------------------------------
    def put_fact(self, kind: str, key: str, value: dict[str, Any] | None) -> bool:
        if value is None:
            return self._write("DELETE FROM facts WHERE kind=? AND key=?", (kind, key)) > 0
        body = json.dumps(value, sort_keys=True)
        return (
            self._write(
                "INSERT INTO facts (kind, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value=excluded.value "
                "WHERE facts.value != excluded.value",
                (kind, key, body),
            )
            > 0
        )

    def get_fact(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self._read("SELECT value FROM facts WHERE kind=? AND key=?", (kind, key))
        return cast(dict[str, Any], json.loads(rows[0]["value"])) if rows else None

    def list_facts(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT key, value FROM facts WHERE kind=? ORDER BY key", (kind,))
        return {r["key"]: json.loads(r["value"]) for r in rows}

    def iter_facts(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for r in self._read("SELECT kind, key, value FROM facts ORDER BY kind, key"):
            yield r["kind"], r["key"], json.loads(r["value"])

    # -- patient identifiers -----------------------------------------------------------------
    def _backfill_once(
        self, marker: str, *steps: str | Callable[[sqlite3.Connection], None]
    ) -> None:
        """Run `steps` (SQL, or functions of the connection) in one transaction unless `meta`
        holds `marker` (then set it): fills a table added without a schema bump, once, for a
        file written before it existed."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM meta WHERE key=?", (marker,)).fetchone():
                return
            for step in steps:
                if isinstance(step, str):
                    db.execute(step)
                else:
                    step(db)
            db.execute("INSERT INTO meta (key, value) VALUES (?, '1')", (marker,))

    def _backfill_identifiers(self) -> None:
        self._backfill_once(
            "patient_identifiers",
            "DELETE FROM patient_identifiers",
            "INSERT INTO patient_identifiers (system, value, source, id) "
            "SELECT json_extract(i.value, '$.system'), json_extract(i.value, '$.value'), "
            "r.source, r.id FROM resources AS r, json_each(r.body, '$.identifier') AS i "
            "WHERE r.type = 'Patient' AND json_type(i.value, '$.system') = 'text' "
            "AND json_type(i.value, '$.value') = 'text'",
        )

    def _backfill_terms(self) -> None:
        def fill(db: sqlite3.Connection) -> None:
            for row in db.execute("SELECT source, id, body FROM resources WHERE type='Patient'"):
                _put_terms(db, row["source"], row["id"], bodies.loads(row["body"]))

        self._backfill_once("patient_terms", "DELETE FROM patient_terms", fill)

    def patients_with_term(self, term: str, prefix: bool) -> set[tuple[str, str]]:
        if prefix:  # every term from `term` up to the last text starting with it
            sql = "SELECT DISTINCT source, id FROM patient_terms WHERE term >= ? AND term < ?"
            rows = self._read(sql, (term, term + "\U0010ffff"))
        else:
            rows = self._read("SELECT source, id FROM patient_terms WHERE term = ?", (term,))
        return {(r["source"], r["id"]) for r in rows}

    def _backfill_task_counts(self) -> None:
        self._backfill_once(
            "task_counts",
            "DELETE FROM task_counts",
            "INSERT INTO task_counts (queue, status, n) "
            "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status",
        )

    def patients_with_identifier(self, system: str, value: str) -> list[tuple[str, str]]:
        rows = self._read(
            "SELECT DISTINCT source, id FROM patient_identifiers WHERE system=? AND value=? "
            "ORDER BY source, id",
            (system, value),
        )
        return [(r["source"], r["id"]) for r in rows]
