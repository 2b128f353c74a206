"""Outcome figures a coordinator team is measured by, computed from the store.

Each figure carries the ids behind it (task ids; appointment references for no-show rates)
so a chart can link to the work. The exact definitions are in docs/family.md ("Outcome
figures"); in short, for a window [start, end):

- no-show rate: appointments that started in the window and ended kept (fulfilled, arrived,
  checked-in) or missed (noshow); rate = missed / (kept + missed), per ISO week of the start
  and per clinic (the Location participant). An appointment mirrored in several sources
  (same identifier, or the same content when it has none) counts once.
- approval turnaround: prior-authorization and verify-eligibility tasks completed in the
  window: completion time minus the task's creation (the request appearing in the bridge).
- no-show to outreach: no-show-outreach tasks completed in the window: completion time minus
  the missed appointment's start (the task's creation when the appointment is not stored).
- tasks opened / closed per queue per day: creation times; closing events (to completed or
  cancelled, by anyone) in the window; UTC days.
- SLA adherence: completions in the window of tasks with a due date: on time when completed
  at or before the due date.
- workload per coordinator: active tasks assigned now, of them overdue now, and completions
  in the window by that coordinator.

Median is the middle value (mean of the two middle ones); p90 is the nearest-rank 90th
percentile (the ceil(0.9 n)-th smallest).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fhir_bridge.store.base import Store, StoredResource
from fhir_bridge.tasks.model import Task, TaskEvent, TaskStatus

KEPT = frozenset({"fulfilled", "arrived", "checked-in"})
MISSED = "noshow"
APPROVAL_KINDS = frozenset({"prior-authorization", "verify-eligibility"})
OUTREACH_KIND = "no-show-outreach"
_CLOSED = frozenset({TaskStatus.COMPLETED.value, TaskStatus.CANCELLED.value})
_ACTIVE = frozenset({TaskStatus.OPEN.value, TaskStatus.IN_PROGRESS.value})
BRIDGE_ACTOR = "bridge"  # tasks.service.BRIDGE: changes the bridge made on its own


@dataclass
class Rate:
    """Missed appointments among those kept or missed, for one week or clinic."""

    group: str
    name: str | None
    kept: int
    missed: int
    rate: float | None
    appointments: list[str]  # source/Appointment/id of the missed ones
    task_ids: list[str]  # tasks about the missed ones (e.g. no-show-outreach)


@dataclass
class Durations:
    """How long something took, in hours, over the tasks behind it."""

    count: int
    median_hours: float | None
    p90_hours: float | None
    task_ids: list[str]


@dataclass
class DayCount:
    """Tasks one queue opened and closed on one UTC day."""

    day: date
    queue: str
    opened: int
    closed: int
    opened_task_ids: list[str]
    closed_task_ids: list[str]


@dataclass
class Sla:
    """Completions with a due date, and how many were on time (all queues, or one)."""

    queue: str
    completed: int
    on_time: int
    rate: float | None
    on_time_task_ids: list[str]
    late_task_ids: list[str]


@dataclass
class Workload:
    """One coordinator's work: active now, overdue now, completed in the window."""

    coordinator: str
    active: int
    overdue: int
    completed: int
    active_task_ids: list[str] = field(default_factory=list)
    overdue_task_ids: list[str] = field(default_factory=list)
    completed_task_ids: list[str] = field(default_factory=list)


@dataclass
class Outcomes:
    """Every outcome figure for one window."""

    start: datetime
    end: datetime
    at: datetime
    no_show_by_week: list[Rate]
    no_show_by_clinic: list[Rate]
    no_show_overall: Rate
    approval_turnaround: Durations
    no_show_to_outreach: Durations
    tasks_per_day: list[DayCount]
    sla: list[Sla]
    workload: list[Workload]


# -- helpers -----------------------------------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def percentile(values: Iterable[float], share: float) -> float | None:
    """The nearest-rank percentile: the ceil(share * n)-th smallest value."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def durations(pairs: Iterable[tuple[str, float]]) -> Durations:
    """Median and p90 (hours, 2 decimals) of (task id, hours) pairs."""
    items = sorted(pairs, key=lambda p: p[1])
    hours = [h for _, h in items]
    median = round(statistics.median(hours), 2) if hours else None
    p90 = percentile(hours, 0.9)
    return Durations(
        len(hours), median, None if p90 is None else round(p90, 2), [i for i, _ in items]
    )


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


# -- appointments ------------------------------------------------------------------------------


def _dedupe(resources: Iterable[StoredResource]) -> list[StoredResource]:
    """One per appointment: a later one sharing an identifier (or, without identifiers, the
    whole content) with an earlier one is a mirror in another source, as in the history."""
    seen: set[tuple[str, str]] = set()
    out = []
    for stored in resources:
        keys = {
            (str(i.get("system")), str(i.get("value")))
            for i in stored.body.get("identifier") or []
            if isinstance(i, dict) and i.get("value")
        } or {("content", stored.content_hash)}
        if keys & seen:
            continue
        seen |= keys
        out.append(stored)
    return out


def _clinic(body: dict[str, Any]) -> tuple[str, str | None]:
    for participant in body.get("participant") or []:
        actor = (participant or {}).get("actor") or {}
        ref = actor.get("reference")
        if isinstance(ref, str) and ref.startswith("Location/"):
            return ref, actor.get("display")
    return "unknown", None


def _rate(
    group: str,
    name: str | None,
    rows: list[tuple[StoredResource, bool]],
    tasks_of: dict[str, list[str]],
    scoped: bool = False,
) -> Rate:
    missed = [f"{s.source}/Appointment/{s.id}" for s, m in rows if m]
    kept = sum(1 for _, m in rows if not m)
    total = kept + len(missed)
    ids = sorted({t for ref in missed for t in tasks_of.get(ref, [])})
    named = [ref for ref in missed if ref in tasks_of] if scoped else missed
    return Rate(
        group,
        name,
        kept,
        len(missed),
        round(len(missed) / total, 4) if total else None,
        named,
        ids,
    )


def _no_shows(
    store: Store,
    start: datetime,
    end: datetime,
    tasks_of: dict[str, list[str]],
    scoped: bool,
) -> tuple[list[Rate], list[Rate], Rate]:
    rows: list[tuple[StoredResource, bool]] = []
    for stored in _dedupe(store.iter_resources("Appointment")):
        status, when = stored.body.get("status"), _instant(stored.body.get("start"))
        if when is None or not (start <= when < end) or (status not in KEPT and status != MISSED):
            continue
        rows.append((stored, status == MISSED))
    weeks: dict[str, list[tuple[StoredResource, bool]]] = {}
    clinics: dict[str, list[tuple[StoredResource, bool]]] = {}
    names: dict[str, str | None] = {}
    for row in rows:
        when = _instant(row[0].body.get("start"))
        assert when is not None  # noqa: S101  (filtered above)
        year, week, _ = when.astimezone(UTC).isocalendar()
        weeks.setdefault(f"{year}-W{week:02d}", []).append(row)
        clinic, name = _clinic(row[0].body)
        clinics.setdefault(clinic, []).append(row)
        names[clinic] = names.get(clinic) or name
    by_week = [_rate(w, None, r, tasks_of, scoped) for w, r in sorted(weeks.items())]
    by_clinic = [_rate(c, names[c], r, tasks_of, scoped) for c, r in sorted(clinics.items())]
    return by_week, by_clinic, _rate("all", None, rows, tasks_of, scoped)


# -- tasks -------------------------------------------------------------------------------------


def _closing(events: list[TaskEvent]) -> list[TaskEvent]:
    return [
        e
        for e in events
        if e.to_status in _CLOSED and (e.from_status in _ACTIVE or e.from_status is None)
    ]


def outcomes(
    store: Store,
    now: datetime,
    start: datetime,
    end: datetime,
    queues: frozenset[str] | None = None,
) -> Outcomes:
    """Every figure for the window [start, end) as the store holds it at `now`.

    `queues` scopes the figures to those queues' tasks (a coordinator restricted to some
    queues, or a dashboard for one team). No-show rates stay counts over every appointment
    (appointments belong to no queue), but only the missed appointments behind an in-scope
    task are named, so a scoped reader sees no references from other teams' work.
    """
    tasks = [t for t in store.iter_tasks() if queues is None or t.queue in queues]
    history = store.task_histories([t.id for t in tasks])
    tasks_of: dict[str, list[str]] = {}
    for t in tasks:
        tasks_of.setdefault(f"{t.source}/{t.focus}", []).append(t.id)
    by_week, by_clinic, overall = _no_shows(store, start, end, tasks_of, queues is not None)
    completions = {
        t.id: [
            e
            for e in _closing(history[t.id])
            if e.to_status == TaskStatus.COMPLETED.value and start <= e.at < end
        ]
        for t in tasks
    }
    return Outcomes(
        start, end, now, by_week, by_clinic, overall,
        _approvals(tasks, completions),
        _outreach(store, tasks, completions),
        _per_day(tasks, history, start, end),
        _sla(tasks, completions),
        _workload(tasks, completions, now),
    )  # fmt: skip


def _approvals(tasks: list[Task], completions: dict[str, list[TaskEvent]]) -> Durations:
    pairs = [
        (t.id, _hours(done[-1].at - t.created_at))
        for t in tasks
        if t.kind in APPROVAL_KINDS and (done := completions[t.id])
    ]
    return durations(pairs)


def _outreach(
    store: Store, tasks: list[Task], completions: dict[str, list[TaskEvent]]
) -> Durations:
    pairs = []
    for t in tasks:
        done = completions[t.id]
        if t.kind != OUTREACH_KIND or not done:
            continue
        focus = store.get_resource(t.source, t.focus_type, t.focus_id)
        missed_at = _instant((focus.body if focus else {}).get("start")) or t.created_at
        pairs.append((t.id, _hours(done[-1].at - missed_at)))
    return durations(pairs)


def _per_day(
    tasks: list[Task], history: dict[str, list[TaskEvent]], start: datetime, end: datetime
) -> list[DayCount]:
    days: dict[tuple[date, str], DayCount] = {}

    def row(at: datetime, queue: str) -> DayCount:
        key = (at.astimezone(UTC).date(), queue)
        return days.setdefault(key, DayCount(key[0], queue, 0, 0, [], []))

    for t in tasks:
        if start <= t.created_at < end:
            r = row(t.created_at, t.queue)
            r.opened += 1
            r.opened_task_ids.append(t.id)
        for e in _closing(history[t.id]):
            if start <= e.at < end:
                r = row(e.at, t.queue)
                r.closed += 1
                r.closed_task_ids.append(t.id)
    return [days[k] for k in sorted(days)]


def _sla(tasks: list[Task], completions: dict[str, list[TaskEvent]]) -> list[Sla]:
    groups: dict[str, Sla] = {"all": Sla("all", 0, 0, None, [], [])}
    for t in tasks:
        done = completions[t.id]
        if not done or t.due is None:
            continue
        on_time = done[-1].at <= t.due
        for name in ("all", t.queue):
            g = groups.setdefault(name, Sla(name, 0, 0, None, [], []))
            g.completed += 1
            g.on_time += on_time
            (g.on_time_task_ids if on_time else g.late_task_ids).append(t.id)
    for g in groups.values():
        g.rate = round(g.on_time / g.completed, 4) if g.completed else None
    return [groups["all"], *(groups[k] for k in sorted(groups) if k != "all")]


def _workload(
    tasks: list[Task], completions: dict[str, list[TaskEvent]], now: datetime
) -> list[Workload]:
    people: dict[str, Workload] = {}
    for t in tasks:
        if t.is_active and t.assignee:
            w = people.setdefault(t.assignee, Workload(t.assignee, 0, 0, 0))
            w.active += 1
            w.active_task_ids.append(t.id)
            if t.due is not None and t.due < now:
                w.overdue += 1
                w.overdue_task_ids.append(t.id)
        for e in completions[t.id][-1:]:
            if e.actor != BRIDGE_ACTOR:
                w = people.setdefault(e.actor, Workload(e.actor, 0, 0, 0))
                w.completed += 1
                w.completed_task_ids.append(t.id)
    return [people[k] for k in sorted(people)]


# -- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = ("metric", "group", "value", "count", "ids")


def csv_rows(figures: Outcomes) -> list[tuple[str, str, str, int, str]]:
    """One row per figure and group: metric, group, value, how many behind it, their ids."""
    rows: list[tuple[str, str, str, int, str]] = []

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    for label, rates in (("week", figures.no_show_by_week), ("clinic", figures.no_show_by_clinic)):
        for r in [*rates, *([figures.no_show_overall] if label == "week" else [])]:
            group = "all" if r is figures.no_show_overall else f"{label}={r.group}"
            rows.append(
                ("no_show_rate", group, num(r.rate), r.kept + r.missed, " ".join(r.appointments))
            )
    for name, d in (
        ("approval_turnaround", figures.approval_turnaround),
        ("no_show_to_outreach", figures.no_show_to_outreach),
    ):
        rows.append(
            (f"{name}_median_hours", "all", num(d.median_hours), d.count, " ".join(d.task_ids))
        )
        rows.append((f"{name}_p90_hours", "all", num(d.p90_hours), d.count, " ".join(d.task_ids)))
    for c in figures.tasks_per_day:
        group = f"day={c.day.isoformat()} queue={c.queue}"
        rows.append(("tasks_opened", group, str(c.opened), c.opened, " ".join(c.opened_task_ids)))
        rows.append(("tasks_closed", group, str(c.closed), c.closed, " ".join(c.closed_task_ids)))
    for s in figures.sla:
        ids = " ".join([*s.on_time_task_ids, *s.late_task_ids])
        rows.append(("sla_adherence", f"queue={s.queue}", num(s.rate), s.completed, ids))
    for w in figures.workload:
        group = f"coordinator={w.coordinator}"
        rows.append(
            ("workload_active", group, str(w.active), w.active, " ".join(w.active_task_ids))
        )
        rows.append(
            ("workload_overdue", group, str(w.overdue), w.overdue, " ".join(w.overdue_task_ids))
        )
        rows.append(
            (
                "workload_completed",
                group,
                str(w.completed),
                w.completed,
                " ".join(w.completed_task_ids),
            )
        )
    return rows
