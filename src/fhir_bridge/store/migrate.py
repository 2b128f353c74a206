"""Move an installation from one store to another (SQLite to Redis): `fhir-bridge migrate`.

Copies resources (latest version and content hash), cursors, quarantine, tasks exactly as they
are (ids, versions, timestamps, mirror ids) with their whole history, the outbox with every
entry's id, status, attempts, last error and detail, so pending write-backs go out from the
new store in the same order and delivered ones are not sent again, the audit trail with
its record ids (API cursors into it stay valid), and the facts people set by hand (patient
link decisions, ...). Counts are compared afterwards; a mismatch
is an error.

The source must not change while it is copied: stop the bridge first. The target must be
empty unless `force` is given, in which case everything under its prefix is deleted first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fhir_bridge.errors import StoreError
from fhir_bridge.store.base import AuditRecord, Store
from fhir_bridge.store.redis import RedisStore

# progress(what, how many so far)
Progress = Callable[[str, int], None]


@dataclass
class Counts:
    """How much one store holds, entity by entity."""

    resources: dict[str, int] = field(default_factory=dict)
    cursors: int = 0
    quarantine: int = 0
    tasks: int = 0
    events: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    audit: int = 0
    facts: int = 0

    def lines(self) -> list[str]:
        """One readable line per kind of entity."""
        res = ", ".join(f"{t} {n}" for t, n in sorted(self.resources.items())) or "none"
        box = ", ".join(f"{s} {n}" for s, n in sorted(self.outbox.items())) or "none"
        return [
            f"resources: {sum(self.resources.values())} ({res})",
            f"cursors: {self.cursors}",
            f"quarantine: {self.quarantine}",
            f"tasks: {self.tasks} with {self.events} history events",
            f"outbox: {sum(self.outbox.values())} ({box})",
            f"audit records: {self.audit}",
            f"facts: {self.facts}",
        ]


def iter_audit(store: Store) -> Iterator[AuditRecord]:
    """Every audit record, newest first, page by page."""
    cursor: int | None = None
    while True:
        records, cursor = store.list_audit(limit=500, cursor=cursor)
        yield from records
        if cursor is None:
            return


def count(store: Store) -> Counts:
    """Count everything `migrate` copies."""
    tasks = list(store.iter_tasks())
    return Counts(
        resources=dict(store.resource_counts()),
        cursors=sum(1 for _ in store.iter_cursors()),
        quarantine=store.list_quarantine(limit=0)[1],
        tasks=len(tasks),
        events=sum(len(store.task_history(t.id)) for t in tasks),
        outbox=dict(Counter(e.status.value for e in store.iter_outbox())),
        audit=sum(1 for _ in iter_audit(store)),
        facts=sum(1 for _ in store.iter_facts()),
    )


def migrate(
    source: Store, target: RedisStore, *, force: bool = False, progress: Progress | None = None
) -> Counts:
    """Copy everything from `source` into `target`, then check the counts.

    :returns: what was copied.
    :raises StoreError: the target holds data (and `force` is off), or the counts differ after.
    """
    if not target.is_empty():
        if not force:
            raise StoreError(
                f"the target under {target.keys.root} is not empty: "
                "choose another prefix, or --force to delete what it holds first"
            )
        target.wipe()
    report = progress or (lambda _what, _n: None)
    copied = Counts()
    for rtype in sorted(source.resource_counts()):
        for res in source.iter_resources(rtype):
            target.put_resource(res.source, res.body, res.content_hash)
            copied.resources[rtype] = copied.resources.get(rtype, 0) + 1
        report(f"resources {rtype}", copied.resources[rtype])
    for src, rtype, value in source.iter_cursors():
        target.set_cursor(src, rtype, value)
        copied.cursors += 1
    report("cursors", copied.cursors)
    # Oldest first, so the newest failure of a resource is the one that stays.
    for entry in reversed(list(source.iter_quarantine())):
        target.add_quarantine(entry)
        copied.quarantine += 1
    report("quarantine", copied.quarantine)
    for task in source.iter_tasks():
        events = source.task_history(task.id)
        target.restore_task(task, events)
        copied.tasks += 1
        copied.events += len(events)
        if copied.tasks % 1000 == 0:
            report("tasks", copied.tasks)
    report("tasks", copied.tasks)
    entries = list(source.iter_outbox())
    target.restore_outbox(entries)
    copied.outbox = dict(Counter(e.status.value for e in entries))
    report("outbox", len(entries))
    records = list(iter_audit(source))
    records.reverse()  # oldest first
    for start in range(0, len(records), 500):
        target.restore_audit(records[start : start + 500])
    copied.audit = len(records)
    report("audit records", copied.audit)
    for kind, key, fact in source.iter_facts():
        target.put_fact(kind, key, fact)
        copied.facts += 1
    report("facts", copied.facts)
    after = count(target)
    if after != copied:
        raise StoreError(
            "migration check failed: the target holds "
            + "; ".join(after.lines())
            + " but the source had "
            + "; ".join(copied.lines())
        )
    return copied
