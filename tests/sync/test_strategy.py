"""Sync strategy: chosen from recorded CapabilityStatements, overridable in config, and the
searches each plan makes (respx, no server)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from fhir_bridge.config import SourceConfig
from fhir_bridge.fhir import FhirClient
from fhir_bridge.sync.engine import since_param, sync_source, sync_type
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.sync.strategy import (
    INCREMENTAL,
    Mode,
    StrategyCache,
    TypePlan,
    plans_from_metadata,
)
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW

BASE = "https://ehr.example.org/fhir"
TYPES = ("Patient", "Appointment", "MedicationStatement", "CoverageEligibilityRequest")


def capability(params: dict[str, list[str]]) -> dict[str, Any]:
    """A CapabilityStatement whose types all support search-type with the given params."""
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": rtype,
                        "interaction": [{"code": "search-type"}, {"code": "read"}],
                        "searchParam": [{"name": n, "type": "date"} for n in names],
                    }
                    for rtype, names in params.items()
                ],
            }
        ],
    }


WITH_LAST_UPDATED = capability({t: ["_lastUpdated", "_count"] for t in TYPES})
WITHOUT_LAST_UPDATED = capability(
    {
        "Patient": ["_count", "name"],
        "Appointment": ["_count", "date"],
        "MedicationStatement": ["_count", "effective"],
        "CoverageEligibilityRequest": ["_count", "created"],
    }
)


def source(**kw: Any) -> SourceConfig:
    """A source at BASE syncing TYPES."""
    return SourceConfig(name="ehr", base_url=BASE, **{"resource_types": TYPES, **kw})


@pytest.fixture
def ingestor(store, rules) -> Ingestor:
    """An Ingestor over an in-memory store, fixed clock."""
    return Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)


def empty_bundle(request: httpx.Request) -> httpx.Response:
    """An empty searchset answer."""
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 0})


def test_last_updated_declared_picks_incremental_everywhere():
    """A server declaring _lastUpdated on every type gets the incremental plan for all."""
    plans = plans_from_metadata(source(), WITH_LAST_UPDATED)
    assert plans == {t: INCREMENTAL for t in TYPES}


def test_without_last_updated_uses_date_params_or_full():
    """Without _lastUpdated: each type's date param with a ge cursor, or full when none."""
    plans = plans_from_metadata(source(), WITHOUT_LAST_UPDATED)
    assert plans == {
        "Patient": TypePlan(Mode.FULL),
        "Appointment": TypePlan(Mode.CREATED, "date"),
        "MedicationStatement": TypePlan(Mode.CREATED, "effective"),
        "CoverageEligibilityRequest": TypePlan(Mode.CREATED, "created"),
    }


def test_undeclared_type_and_missing_metadata_fall_back_to_full():
    """A type absent from /metadata (or no CapabilityStatement at all) is re-pulled in full."""
    assert plans_from_metadata(source(), capability({"Patient": ["_lastUpdated"]}))[
        "Appointment"
    ] == TypePlan(Mode.FULL)
    assert set(plans_from_metadata(source(), None).values()) == {TypePlan(Mode.FULL)}


async def test_auto_reads_metadata_once_per_cache():
    """In auto the CapabilityStatement is fetched on the first call only, then cached."""
    cache = StrategyCache()
    with respx.mock(base_url=BASE) as api:
        meta = api.get("/metadata").respond(200, json=WITHOUT_LAST_UPDATED)
        async with FhirClient(BASE) as client:
            first = await cache.plans(source(), client)
            second = await cache.plans(source(), client)
    assert meta.call_count == 1
    assert first is second and first["Appointment"] == TypePlan(Mode.CREATED, "date")


async def test_configured_strategy_overrides_metadata():
    """An explicit sync_strategy never reads /metadata; created without a date param is full."""
    with respx.mock(base_url=BASE, assert_all_called=False) as api:
        meta = api.get("/metadata").respond(200, json=WITH_LAST_UPDATED)
        async with FhirClient(BASE) as client:
            plans = await StrategyCache().plans(source(sync_strategy="created"), client)
            full = await StrategyCache().plans(source(sync_strategy="full"), client)
    assert meta.call_count == 0
    assert plans["Patient"] == TypePlan(Mode.FULL)
    assert plans["MedicationStatement"] == TypePlan(Mode.CREATED, "effective")
    assert set(full.values()) == {TypePlan(Mode.FULL)}


async def test_metadata_failure_is_incremental_and_not_cached():
    """When /metadata fails the run is incremental and the next run asks again."""
    cache = StrategyCache()
    with respx.mock(base_url=BASE) as api:
        meta = api.get("/metadata").respond(404)
        async with FhirClient(BASE) as client:
            plans = await cache.plans(source(), client)
            await cache.plans(source(), client)
    assert plans == {t: INCREMENTAL for t in TYPES}
    assert meta.call_count == 2 and cache.cached("ehr") is None


def query_of(request: httpx.Request) -> dict[str, list[str]]:
    """The query parameters of a request."""
    return parse_qs(urlsplit(str(request.url)).query)


async def test_created_plan_searches_date_ge_previous_run_start(ingestor, store):
    """A created plan sends no _lastUpdated; the second run sends date=ge(first run - overlap)."""
    src = source(overlap=60)
    with respx.mock(base_url=BASE) as api:
        route = api.get("/Appointment").mock(side_effect=empty_bundle)
        async with FhirClient(BASE) as client:
            plan = TypePlan(Mode.CREATED, "date")
            first = await sync_type(src, "Appointment", client, ingestor, plan=plan)
            await sync_type(src, "Appointment", client, ingestor, plan=plan)
    assert first.error is None and first.cursor is not None
    q1, q2 = (query_of(call.request) for call in route.calls)
    assert "date" not in q1 and "_lastUpdated" not in q1 and "_sort" not in q1
    assert "_lastUpdated" not in q2
    assert q2["date"] == [since_param(first.cursor, 60)]
    assert store.get_cursor("ehr", "Appointment") > first.cursor


async def test_full_plan_never_sends_a_cursor(ingestor, store):
    """A full plan searches without any date filter on every run, even with a cursor stored."""
    store.set_cursor("ehr", "Patient", "2026-01-01T00:00:00+00:00")
    with respx.mock(base_url=BASE) as api:
        route = api.get("/Patient").mock(side_effect=empty_bundle)
        async with FhirClient(BASE) as client:
            for _ in range(2):
                await sync_type(source(), "Patient", client, ingestor, plan=TypePlan(Mode.FULL))
    assert route.call_count == 2
    for call in route.calls:
        assert set(query_of(call.request)) == {"_count"}


async def test_sync_source_applies_auto_plans_per_type(ingestor, store):
    """sync_source in auto after a first load: /metadata first and once; Patient in full,
    Appointment by date from its cursor."""
    src = source(resource_types=("Patient", "Appointment"), overlap=0)
    store.set_cursor("ehr", "Appointment", "2026-01-01T00:00:00+00:00")
    with respx.mock(base_url=BASE) as api:
        meta = api.get("/metadata").respond(200, json=WITHOUT_LAST_UPDATED)
        patients = api.get("/Patient").mock(side_effect=empty_bundle)
        appts = api.get("/Appointment").mock(side_effect=empty_bundle)
        cache = StrategyCache()
        async with FhirClient(BASE) as client:
            for _ in range(2):
                report = await sync_source(src, client, ingestor, strategies=cache)
                assert report.ok
        first_path = api.calls[0].request.url.path
    assert meta.call_count == 1 and first_path.endswith("/metadata")
    assert all(set(query_of(c.request)) == {"_count"} for c in patients.calls)
    assert query_of(appts.calls[0].request)["date"] == ["ge2026-01-01T00:00:00.000Z"]


async def test_first_load_in_auto_reads_metadata_after_the_searches(ingestor):
    """On a first load auto searches before reading /metadata (the plan cannot change what a
    first load fetches) and caches the decision once the run succeeded."""
    src = source(resource_types=("Patient",))
    cache = StrategyCache()
    with respx.mock(base_url=BASE) as api:
        api.get("/metadata").respond(200, json=WITHOUT_LAST_UPDATED)
        api.get("/Patient").mock(side_effect=empty_bundle)
        async with FhirClient(BASE) as client:
            report = await sync_source(src, client, ingestor, strategies=cache)
        paths = [c.request.url.path.rsplit("/", 1)[-1] for c in api.calls]
    assert report.ok
    assert paths == ["Patient", "metadata"]
    assert cache.cached("ehr") == {"Patient": TypePlan(Mode.FULL)}


async def test_failed_first_load_leaves_the_decision_open(ingestor):
    """A first load whose search fails does not read /metadata; nothing is cached."""
    src = source(resource_types=("Patient",), retry_attempts=1)
    cache = StrategyCache()
    with respx.mock(base_url=BASE, assert_all_called=False) as api:
        meta = api.get("/metadata").respond(200, json=WITH_LAST_UPDATED)
        api.get("/Patient").respond(400)
        async with FhirClient(BASE) as client:
            report = await sync_source(src, client, ingestor, strategies=cache)
    assert not report.ok
    assert meta.call_count == 0 and cache.cached("ehr") is None
