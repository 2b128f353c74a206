"""Tests for fhir_bridge.metrics: /metrics after a sync of the sample data through a mocked EHR."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fhir_bridge.api import create_app
from fhir_bridge.config import Settings, SourceConfig
from fhir_bridge.fhir.client import FhirClient
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync.engine import sync_source
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from tests.utils import NOW, ROOT, sample

BASE = "http://ehr.test/fhir"
LAST_UPDATED = (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
BOGUS_ID = "bogus-gender-1"

# name -> label names of every series the catalog promises after a sync and a claim/complete.
CATALOG: dict[str, set[str]] = {
    "fhir_bridge_fhir_requests": {"source", "method", "resource_type", "status"},
    "fhir_bridge_fhir_request_duration_seconds": {"source", "method", "resource_type"},
    "fhir_bridge_fhir_retries": {"source", "method", "resource_type", "status"},
    "fhir_bridge_sync_resources_pulled": {"source", "resource_type"},
    "fhir_bridge_sync_resources_ingested": {"source", "resource_type", "outcome"},
    "fhir_bridge_sync_pages": {"source", "resource_type"},
    "fhir_bridge_sync_runs": {"source", "resource_type", "outcome"},
    "fhir_bridge_sync_duration_seconds": {"source", "resource_type"},
    "fhir_bridge_sync_last_success_timestamp_seconds": {"source", "resource_type"},
    "fhir_bridge_sync_lag_seconds": {"source", "resource_type"},
    "fhir_bridge_tasks_created": {"source", "resource_type"},
    "fhir_bridge_tasks": {"queue", "status"},
    "fhir_bridge_tasks_active": {"queue", "kind", "status"},
    "fhir_bridge_tasks_overdue": {"queue", "kind"},
    "fhir_bridge_task_time_to_claim_seconds": {"queue", "kind"},
    "fhir_bridge_task_time_to_complete_seconds": {"queue", "kind", "status"},
    "fhir_bridge_outbox_depth": {"source"},
    "fhir_bridge_outbox_dead_letters": {"source"},
    "fhir_bridge_outbox_oldest_pending_age_seconds": {"source"},
    "fhir_bridge_quarantine_entries": {"source", "resource_type", "reason"},
    "fhir_bridge_http_requests": {"method", "route", "status"},
    "fhir_bridge_http_request_duration_seconds": {"method", "route"},
    "fhir_bridge_source_last_sync_ok": {"source"},
    "fhir_bridge_mapping_rules_loaded": set(),
}
ID_LIKE = [
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I),
    re.compile(r"\b[0-9a-f]{16,}\b", re.I),  # task ids, request ids, job ids
    re.compile(r"\b[A-Z][A-Za-z]+/[A-Za-z0-9\-.]+"),  # a reference such as Patient/123
]


def _bundle(resource_type: str) -> dict[str, Any]:
    """A one-page searchset of the sample's `resource_type`, each stamped an hour before NOW."""
    resources = [] if resource_type in ("Task",) else _resources(resource_type)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _resources(resource_type: str) -> list[dict[str, Any]]:
    """The sample resources of a type with meta.lastUpdated, plus one invalid Patient."""
    try:
        resources = sample(resource_type)
    except FileNotFoundError:
        resources = []
    out = [r | {"meta": (r.get("meta") or {}) | {"lastUpdated": LAST_UPDATED}} for r in resources]
    if resource_type == "Patient":
        out.append(
            {
                "resourceType": "Patient",
                "id": BOGUS_ID,
                "gender": "bogus",
                "meta": {"lastUpdated": LAST_UPDATED},
            }
        )
    return out


class FakeEhr:
    """An httpx transport answering searches from the sample; the first Patient search gets 429."""

    def __init__(self) -> None:
        self.throttled = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one request."""
        resource_type = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if resource_type == "Patient" and not self.throttled:
            self.throttled = True
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200, json=_bundle(resource_type))


async def _no_sleep(_seconds: float) -> None:
    """Retries wait for nothing in tests."""


@pytest.fixture
async def synced() -> AsyncIterator[Bridge]:
    """A bridge that synced the sample from the fake EHR, with metrics wired as in production."""
    source = SourceConfig(name="ehr", base_url=BASE, writeback=True)
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(source,),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    client = FhirClient(
        BASE,
        transport=httpx.MockTransport(FakeEhr()),
        source="ehr",
        sleep=_no_sleep,
        observer=bridge.metrics,
    )
    async with client:
        report = await sync_source(source, client, bridge.ingestor, metrics=bridge.metrics)
    assert report.ok, [t.error for t in report.types]
    bridge.metrics.observe_source("ehr", ok=report.ok)
    yield bridge
    bridge.close()


async def _scrape_after_work(bridge: Bridge) -> tuple[str, dict[str, Any]]:
    """Claim and complete a task through the API, park one outbox entry, then scrape /metrics."""
    app = create_app(bridge)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bridge"
    ) as api:
        task = (await api.get("/queues/scheduling/tasks", params={"limit": 1})).json()["items"][0]
        claimed = await api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
        assert claimed.status_code == 200, claimed.text
        done = await api.post(
            f"/tasks/{task['id']}/status", json={"coordinator": "alice", "status": "completed"}
        )
        assert done.status_code == 200, done.text
        first = bridge.store.list_outbox(OutboxStatus.PENDING)[0]
        bridge.store.outbox_dead(first.id, "parked by the test")
        response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, task


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a scrape as (name, labels, value)."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _value(text: str, name: str, **labels: str) -> float:
    """The value of the one sample named `name` whose labels include `labels`."""
    found = [v for n, ls, v in _samples(text) if n == name and labels.items() <= ls.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def test_scrape_exposes_every_catalog_series_with_its_labels(synced):
    """After a sync, a claim and a completion, /metrics has each catalog metric and label set."""
    text, _task = await _scrape_after_work(synced)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, label_names in CATALOG.items():
        assert name in families, name
        samples = families[name].samples
        assert samples, f"{name} has no series"
        for s in samples:
            assert set(s.labels) - {"le"} == label_names, (name, s.labels)


async def test_sync_figures_count_requests_429_retries_and_pulled_resources(synced):
    """The 429 is counted and retried once; pulled and quarantined match what the EHR sent."""
    text, _task = await _scrape_after_work(synced)
    ehr = {"source": "ehr"}
    patient = {**ehr, "resource_type": "Patient"}
    assert _value(text, "fhir_bridge_fhir_requests_total", **patient, status="429") == 1
    assert _value(text, "fhir_bridge_fhir_requests_total", **patient, status="200") == 1
    assert _value(text, "fhir_bridge_fhir_retries_total", **patient, status="429") == 1
    pulled = _value(text, "fhir_bridge_sync_resources_pulled_total", **patient)
    assert pulled == len(sample("Patient")) + 1
    appointments = {**ehr, "resource_type": "Appointment"}
    assert _value(text, "fhir_bridge_sync_resources_pulled_total", **appointments) == len(
        sample("Appointment")
    )
    assert _value(text, "fhir_bridge_quarantine_entries", **patient, reason="code-invalid") == 1
    quarantined = {**patient, "outcome": "quarantined"}
    assert _value(text, "fhir_bridge_sync_resources_ingested_total", **quarantined) == 1
    assert _value(text, "fhir_bridge_sync_lag_seconds", **appointments) == 3600.0
    assert _value(text, "fhir_bridge_sync_runs_total", **appointments, outcome="ok") == 1
    assert _value(text, "fhir_bridge_sync_last_success_timestamp_seconds", **appointments) > 0
    assert _value(text, "fhir_bridge_source_last_sync_ok", **ehr) == 1
    assert _value(text, "fhir_bridge_mapping_rules_loaded") == len(synced.rules.rules)


async def test_task_and_outbox_figures_follow_the_store(synced):
    """Task gauges equal the store's counts; the claim and completion are timed; outbox split."""
    text, task = await _scrape_after_work(synced)
    for queue, counts in synced.store.queue_counts().items():
        for status, n in counts.items():
            assert _value(text, "fhir_bridge_tasks", queue=queue, status=status) == n
    active = sum(v for n, _, v in _samples(text) if n == "fhir_bridge_tasks_active")
    open_and_busy = sum(
        c.get("open", 0) + c.get("in-progress", 0) for c in synced.store.queue_counts().values()
    )
    assert active == open_and_busy
    labels = {"queue": "scheduling", "kind": task["kind"]}
    assert _value(text, "fhir_bridge_task_time_to_claim_seconds_count", **labels) == 1
    done = {**labels, "status": "completed"}
    assert _value(text, "fhir_bridge_task_time_to_complete_seconds_count", **done) == 1
    pending = len(synced.store.list_outbox(OutboxStatus.PENDING))
    assert pending >= 1, "the completion's write-back is still waiting"
    assert _value(text, "fhir_bridge_outbox_depth", source="ehr") == pending
    assert _value(text, "fhir_bridge_outbox_dead_letters", source="ehr") == 1
    route = {"method": "POST", "route": "/tasks/{task_id}/claim", "status": "200"}
    assert _value(text, "fhir_bridge_http_requests_total", **route) == 1


async def test_overdue_counts_active_tasks_past_their_due_date(synced):
    """tasks_overdue equals the active tasks whose due date is before the bridge's now."""
    text, _task = await _scrape_after_work(synced)
    expected = sum(
        1
        for t in synced.store.iter_tasks(statuses=[TaskStatus.OPEN, TaskStatus.IN_PROGRESS])
        if t.due is not None and t.due < NOW
    )
    got = sum(v for n, _, v in _samples(text) if n == "fhir_bridge_tasks_overdue")
    assert got == expected
    assert expected > 0, "the sample should have overdue tasks at NOW"


async def test_no_label_value_is_an_id_or_reference(synced):
    """No label carries a resource id, task id, patient reference or other id-like value."""
    text, task = await _scrape_after_work(synced)
    ids = {r["id"] for rtype in CATALOG_TYPES for r in sample(rtype)} | {task["id"], BOGUS_ID}
    values = {v for _, labels, _ in _samples(text) for k, v in labels.items() if k != "le"}
    assert values, "the scrape has labels"
    assert not values & ids
    for value in values:
        for pattern in ID_LIKE:
            assert not pattern.search(value), value
    assert task["id"] not in text and task["patient"] not in text


def test_each_bridge_has_its_own_registry():
    """Two bridges never share a series: counting in one leaves the other at zero."""
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(SourceConfig(name="ehr", base_url=BASE),),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    one = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    two = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    try:
        one.metrics.request("ehr", "GET", "Patient", 200, 0.1)
        assert "fhir_bridge_fhir_requests_total{" in one.metrics.render().decode()
        assert "fhir_bridge_fhir_requests_total{" not in two.metrics.render().decode()
    finally:
        one.close()
        two.close()


def test_a_failing_store_leaves_the_scrape_answering():
    """When the store cannot be read, /metrics still answers with the code-path series."""
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(SourceConfig(name="ehr", base_url=BASE),),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    bridge.metrics.request("ehr", "GET", "Patient", None, 0.1)
    bridge.close()
    text = bridge.metrics.render().decode()
    assert 'status="error"' in text
    assert "fhir_bridge_tasks{" not in text


CATALOG_TYPES = ("Patient", "Appointment", "CarePlan", "Coverage", "MedicationStatement")


async def test_network_errors_are_counted_as_error_status_and_retried():
    """A connection failure counts as status 'error', in requests and in retries."""
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(SourceConfig(name="ehr", base_url=BASE),),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        """Refuse the first connection, then answer an empty Bundle."""
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    client = FhirClient(
        BASE,
        transport=httpx.MockTransport(flaky),
        source="ehr",
        sleep=_no_sleep,
        observer=bridge.metrics,
    )
    try:
        async with client:
            pages = [p async for p in client.search("Patient", {"_count": "1"})]
        assert len(pages) == 1
        text = bridge.metrics.render().decode()
    finally:
        bridge.close()
    labels = {"source": "ehr", "method": "GET", "resource_type": "Patient"}
    assert _value(text, "fhir_bridge_fhir_requests_total", **labels, status="error") == 1
    assert _value(text, "fhir_bridge_fhir_requests_total", **labels, status="200") == 1
    assert _value(text, "fhir_bridge_fhir_retries_total", **labels, status="error") == 1
