"""Outcome figures: no-show rates against a count made directly from the sample NDJSON, and
turnaround, outreach, per-day, SLA and workload figures against a scripted sequence of task
events whose answers are worked out by hand; the JSON and CSV routes."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from fhir_bridge.outcomes.metrics import outcomes, percentile
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore
from fhir_bridge.tasks.model import TaskStatus
from fhir_bridge.tasks.service import TaskService
from tests.api.sample import sample_bridge
from tests.utils import NOW, make_draft, sample

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 11, 27, tzinfo=UTC)


def _independent_no_shows() -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """(kept, missed) per ISO week and per Location, straight from Appointment.ndjson."""
    weeks: dict[str, list[int]] = {}
    clinics: dict[str, list[int]] = {}
    for a in sample("Appointment"):
        start = datetime.fromisoformat(a["start"]) if a.get("start") else None
        if start is None or not START <= start < END:
            continue
        if a["status"] not in ("fulfilled", "arrived", "checked-in", "noshow"):
            continue
        missed = a["status"] == "noshow"
        iso = start.isocalendar()
        week = f"{iso[0]}-W{iso[1]:02d}"
        clinic = next(
            (p["actor"]["reference"] for p in a["participant"]
             if p["actor"].get("reference", "").startswith("Location/")),
            "unknown",
        )  # fmt: skip
        for table, key in ((weeks, week), (clinics, clinic)):
            row = table.setdefault(key, [0, 0])
            row[missed] += 1
    return (
        {k: (v[0], v[1]) for k, v in weeks.items()},
        {k: (v[0], v[1]) for k, v in clinics.items()},
    )


def test_no_show_rates_match_the_sample_files(bridge: Bridge):
    """Per week and per clinic, kept and missed equal a count made from the NDJSON; the rate
    is missed / (kept + missed); the no-show-outreach tasks are linked to their week."""
    weeks, clinics = _independent_no_shows()
    figures = outcomes(bridge.store, NOW, START, END)
    assert {r.group: (r.kept, r.missed) for r in figures.no_show_by_week} == weeks
    assert {r.group: (r.kept, r.missed) for r in figures.no_show_by_clinic} == clinics
    overall = figures.no_show_overall
    kept, missed = sum(v[0] for v in weeks.values()), sum(v[1] for v in weeks.values())
    assert (overall.kept, overall.missed) == (kept, missed) and missed > 0
    assert overall.rate == round(missed / (kept + missed), 4)
    outreach = {t.id for t in bridge.store.iter_tasks(rule_id="no-show-outreach")}
    linked = {i for r in figures.no_show_by_week for i in r.task_ids}
    assert outreach and outreach <= linked


def test_an_appointment_in_two_sources_counts_once():
    """The same sample loaded as two sources gives the same no-show figures as one source."""
    one, two = sample_bridge("ehr"), sample_bridge("ehr", "clinic")
    try:
        a = outcomes(one.store, NOW, START, END)
        b = outcomes(two.store, NOW, START, END)
        assert [(r.group, r.kept, r.missed) for r in b.no_show_by_week] == [
            (r.group, r.kept, r.missed) for r in a.no_show_by_week
        ]
        assert (b.no_show_overall.kept, b.no_show_overall.missed) == (
            a.no_show_overall.kept,
            a.no_show_overall.missed,
        )
    finally:
        one.close()
        two.close()


def test_percentiles_are_nearest_rank():
    """p90 of 1..10 is 9, of 1..11 is 10, of one value that value, of none None."""
    assert percentile(range(1, 11), 0.9) == 9
    assert percentile(range(1, 12), 0.9) == 10
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([], 0.9) is None


class Clock:
    """A clock the script moves."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def test_scripted_task_events_give_the_figures_worked_out_by_hand():
    """Three approvals completed after 2, 4 and 30 hours (median 4, p90 30); outreach 50 hours
    after the missed visit; opened/closed per queue per day; SLA 2 of 3 on time; workload."""
    store = SqliteStore(":memory:")
    clock = Clock()
    service = TaskService(store, clock, ())
    missed_at = NOW - timedelta(hours=2)
    store.put_resource(
        "ehr",
        {"resourceType": "Appointment", "id": "a9", "status": "noshow",
         "start": missed_at.isoformat(), "participant": []},
        "h1",
    )  # fmt: skip
    drafts = {
        "pa": make_draft(rule_id="prior-authorization", kind="prior-authorization",
                         queue="insurance", focus_type="CoverageEligibilityRequest", focus_id="q1",
                         due=NOW + timedelta(hours=3)),
        "ve1": make_draft(rule_id="verify-eligibility", kind="verify-eligibility",
                          queue="insurance", focus_type="CoverageEligibilityRequest",
                          focus_id="q2", due=NOW + timedelta(hours=5)),
        "ve2": make_draft(rule_id="verify-eligibility", kind="verify-eligibility",
                          queue="insurance", focus_type="CoverageEligibilityRequest",
                          focus_id="q3", due=NOW + timedelta(hours=24)),
        "out": make_draft(source="ehr", focus_id="a9", due=None),
        "open": make_draft(focus_id="a10", due=NOW + timedelta(hours=1)),
    }  # fmt: skip
    ids = {name: store.upsert_task(d, NOW).task.id for name, d in drafts.items()}

    def complete(name: str, hours: float, who: str) -> None:
        clock.now = NOW + timedelta(hours=hours)
        service.claim(ids[name], who)
        service.change_status(ids[name], TaskStatus.COMPLETED, who)

    complete("pa", 2, "ann")  # on time (due +3h)
    complete("ve1", 4, "bo")  # on time (due +5h)
    complete("ve2", 30, "ann")  # late (due +24h), the next day
    complete("out", 48, "bo")  # 50 h after the missed visit; no due date
    clock.now = NOW + timedelta(hours=49)
    service.claim(ids["open"], "cy")  # active, overdue at +49h

    figures = outcomes(store, clock.now, NOW - timedelta(days=1), NOW + timedelta(days=3))
    turnaround = figures.approval_turnaround
    assert (turnaround.count, turnaround.median_hours, turnaround.p90_hours) == (3, 4.0, 30.0)
    assert turnaround.task_ids == [ids["pa"], ids["ve1"], ids["ve2"]]
    outreach = figures.no_show_to_outreach
    assert (outreach.count, outreach.median_hours, outreach.task_ids) == (1, 50.0, [ids["out"]])

    per_day = {(c.day.isoformat(), c.queue): (c.opened, c.closed) for c in figures.tasks_per_day}
    assert per_day == {
        ("2026-11-26", "insurance"): (3, 2),  # pa at 14:00, ve1 at 16:00
        ("2026-11-26", "scheduling"): (2, 0),
        ("2026-11-27", "insurance"): (0, 1),  # ve2 at 18:00 next day
        ("2026-11-28", "scheduling"): (0, 1),  # outreach at 12:00 two days later
    }

    sla = {s.queue: (s.completed, s.on_time, s.rate) for s in figures.sla}
    assert sla == {"all": (3, 2, 0.6667), "insurance": (3, 2, 0.6667)}
    everything = next(s for s in figures.sla if s.queue == "all")
    assert everything.late_task_ids == [ids["ve2"]]
    assert everything.on_time_task_ids == [ids["pa"], ids["ve1"]]

    work = {w.coordinator: (w.active, w.overdue, w.completed) for w in figures.workload}
    assert work == {"ann": (0, 0, 2), "bo": (0, 0, 2), "cy": (1, 1, 0)}
    store.close()


def test_api_json_and_csv(api: TestClient):
    """GET /outcomes answers every figure for the window; /outcomes.csv the same as rows
    (metric, group, value, count, ids); from after to is 422."""
    body = api.get("/outcomes", params={"from": "2026-01-01", "to": "2026-11-26"}).json()
    assert body["start"].startswith("2026-01-01") and body["end"].startswith("2026-11-27")
    assert body["no_show_overall"]["missed"] > 0
    assert set(body) >= {"no_show_by_week", "no_show_by_clinic", "approval_turnaround",
                         "no_show_to_outreach", "tasks_per_day", "sla", "workload"}  # fmt: skip
    answer = api.get("/outcomes.csv", params={"from": "2026-01-01", "to": "2026-11-26"})
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["metric", "group", "value", "count", "ids"]
    [overall] = [r for r in rows if r[:2] == ["no_show_rate", "all"]]
    assert float(overall[2]) == body["no_show_overall"]["rate"]
    assert int(overall[3]) == body["no_show_overall"]["kept"] + body["no_show_overall"]["missed"]
    reversed_ = api.get("/outcomes", params={"from": "2026-11-26", "to": "2026-01-01"})
    assert reversed_.status_code == 422
