"""The daily huddle: the active tasks that need the team's attention, grouped by patient.

A task is on the list for each of these reasons (one task may have several):

- `blocked`: a write-back of it is dead (the EHR refused it or the retries ran out): the
  coordinator's work does not reach the EHR until someone looks;
- `conflict`: a write-back of it is in conflict (the EHR changed what it would set);
- `overdue`: its due date has passed;
- `waiting`: the same patient (same source) has active work in a queue this task waits on
  (`WAITS_ON`: scheduling, follow-up and family work wait on insurance), listed in `waiting_on`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fhir_bridge.patients.history import demographics
from fhir_bridge.store.base import Store
from fhir_bridge.tasks.model import OutboxStatus, Task, TaskStatus

REASONS = ("blocked", "conflict", "overdue", "waiting")
# queue -> the queues whose active work for the same patient it waits on
WAITS_ON: Mapping[str, frozenset[str]] = {
    "scheduling": frozenset({"insurance"}),
    "follow-up": frozenset({"insurance"}),
    "family": frozenset({"insurance"}),
}
_ACTIVE = (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)
_PARKED = {OutboxStatus.DEAD: "blocked", OutboxStatus.CONFLICT: "conflict"}
_OUTBOX_SCAN = 10_000  # parked entries are few; an installation with more has bigger problems


@dataclass
class HuddleTask:
    """One task on the huddle list, with why it is there."""

    id: str
    source: str
    queue: str
    kind: str
    title: str
    status: str
    priority: str
    assignee: str | None
    due: datetime | None
    focus: str
    reasons: list[str]
    waiting_on: list[dict[str, str]] = field(default_factory=list)
    outbox: list[dict[str, object]] = field(default_factory=list)


@dataclass
class HuddlePatient:
    """A patient's tasks on the list (`patient` is None for tasks about no patient)."""

    source: str
    patient: str | None
    tasks: list[HuddleTask]
    name: str | None = None  # the patient's name as that source holds it, for the printed list


@dataclass
class Huddle:
    """The huddle list: counts per reason and the tasks, grouped by patient."""

    at: datetime
    queue: str | None
    counts: dict[str, int]
    patients: list[HuddlePatient]


def _parked(store: Store) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for status, reason in _PARKED.items():
        for entry in store.list_outbox(status=status, limit=_OUTBOX_SCAN):
            out.setdefault(entry.task_id, []).append(
                {"id": entry.id, "status": entry.status.value, "reason": reason,
                 "action": entry.action, "error": entry.last_error}
            )  # fmt: skip
    return out


def _active(store: Store) -> list[Task]:
    return [t for status in _ACTIVE for t in store.iter_tasks(statuses=[status])]


def _entry(
    task: Task, now: datetime, parked: list[dict[str, object]], others: Iterable[Task]
) -> HuddleTask | None:
    reasons = sorted({str(p["reason"]) for p in parked})
    if task.due is not None and task.due < now:
        reasons.append("overdue")
    waits = WAITS_ON.get(task.queue, frozenset())
    waiting_on = [
        {"task_id": o.id, "queue": o.queue, "kind": o.kind}
        for o in others
        if o.queue in waits and o.id != task.id
    ]
    if waiting_on:
        reasons.append("waiting")
    if not reasons:
        return None
    return HuddleTask(
        task.id, task.source, task.queue, task.kind, task.title, task.status.value,
        task.priority.value, task.assignee, task.due, task.focus,
        sorted(reasons, key=REASONS.index), waiting_on, parked,
    )  # fmt: skip


def _name(store: Store, source: str, patient: str | None) -> str | None:
    if patient is None or not patient.startswith("Patient/"):
        return None
    stored = store.get_resource(source, "Patient", patient.removeprefix("Patient/"))
    return demographics([stored])["name"].value if stored is not None else None


def huddle(
    store: Store, now: datetime, queue: str | None = None, assignee: str | None = None
) -> Huddle:
    """The huddle list at `now`, for one queue (or all) and one coordinator (or everyone).

    Patients come in order of their most pressing task (most reasons, then earliest due).
    """
    active = _active(store)
    parked = _parked(store)
    by_patient: dict[tuple[str, str | None], list[Task]] = {}
    for task in active:
        by_patient.setdefault((task.source, task.patient), []).append(task)
    groups: list[HuddlePatient] = []
    counts = dict.fromkeys(REASONS, 0)
    for (source, patient), tasks in by_patient.items():
        listed = []
        for task in tasks:
            if (queue and task.queue != queue) or (assignee and task.assignee != assignee):
                continue
            others = tasks if patient is not None else []
            entry = _entry(task, now, parked.get(task.id, []), others)
            if entry is not None:
                listed.append(entry)
                for reason in entry.reasons:
                    counts[reason] += 1
        if listed:
            listed.sort(key=lambda t: (-len(t.reasons), t.due or now, t.id))
            groups.append(HuddlePatient(source, patient, listed, _name(store, source, patient)))
    groups.sort(key=lambda g: (-len(g.tasks[0].reasons), g.tasks[0].due or now, g.tasks[0].id))
    counts["tasks"] = sum(len(g.tasks) for g in groups)
    counts["patients"] = len(groups)
    return Huddle(now, queue, counts, groups)
