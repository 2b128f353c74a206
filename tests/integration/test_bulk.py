"""Bulk Data $export against a real SEKMET: ingest, incremental _since, Group level, resume."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.fhir.bulk import ExportRequest, PollPolicy
from fhir_bridge.sync.bulk import STATE_KEY, export_source, load_state
from tests.integration.test_end_to_end import (
    active_tasks_per_rule,
    expected_tasks_per_rule,
    make_bridge,
)
from tests.sandbox_fixtures import seeded_server
from tests.utils import sample

pytestmark = pytest.mark.integration

FAST = PollPolicy(initial_wait=0.1, max_wait=0.2)


class Recording(httpx.AsyncBaseTransport):
    """The real network, remembering each request's method and path."""

    def __init__(self) -> None:
        """Wrap a real transport."""
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Record, then send."""
        self.calls.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.inner.aclose()

    def kickoffs(self) -> int:
        """How many $export kick-offs were sent."""
        return sum(path.endswith("$export") for _, path in self.calls)


class Crash(Exception):
    """Stands for the process dying."""


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the sample population, shared by this module's tests."""
    return seeded_server(sekmet_factory)


async def test_export_ingests_everything_then_only_changes(seeded_url, tmp_path):
    """A first export stores every resource and makes the expected tasks, polling within the
    Retry-After cap; the next export asks `_since` the last one and gets only the change."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    try:
        async with FhirClient(source.url, source=source.name, sleep=sleep) as client:
            report = await export_source(source, client, bridge.ingestor, poll=FAST)
        assert report.ok, report.error
        assert waits and max(waits) <= FAST.max_wait, "SEKMET's Retry-After: 1 is capped"
        counts = bridge.store.resource_counts("sekmet")
        assert counts == {t: len(sample(t)) for t in source.resource_types}
        assert active_tasks_per_rule(bridge) == expected_tasks_per_rule()
        assert report.result.tasks_closed == 0, "Coverage is stored before Appointment"
        assert load_state(bridge.ingestor, "sekmet") == {"since": report.transaction_time}

        patient = sample("Patient")[0] | {"gender": "other"}
        assert httpx.put(f"{seeded_url}/Patient/{patient['id']}", json=patient).status_code == 200
        async with FhirClient(source.url, source=source.name) as client:
            again = await export_source(source, client, bridge.ingestor, poll=FAST)
        assert again.ok and (again.result.received, again.result.stored) == (1, 1)
        stored = bridge.store.get_resource("sekmet", "Patient", patient["id"])
        assert stored is not None and stored.body["gender"] == "other"
    finally:
        bridge.close()


async def test_group_level_export_gets_only_the_members(seeded_url, tmp_path):
    """Group/{id}/$export with _type=Patient stores exactly the group's two patients."""
    members = [p["id"] for p in sample("Patient")[:2]]
    group = {
        "resourceType": "Group",
        "id": "bulk-two",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in members],
    }
    assert httpx.put(f"{seeded_url}/Group/bulk-two", json=group).status_code in (200, 201)
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    request = ExportRequest(level="group", group_id="bulk-two", types=("Patient",))
    try:
        async with FhirClient(source.url, source=source.name) as client:
            report = await export_source(source, client, bridge.ingestor, request, poll=FAST)
        assert report.ok, report.error
        assert sorted(r.id for r in bridge.store.iter_resources("Patient", "sekmet")) == sorted(
            members
        )
    finally:
        bridge.close()


async def test_a_crashed_export_resumes_without_a_new_job_or_duplicates(seeded_url, tmp_path):
    """A run that dies after some batches leaves its job state; the next run polls the same
    job, skips the lines already stored, and ends with every resource and no duplicate task."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    transport = Recording()
    batches = 0

    def crash_mid_patients(_: str, rtype: str, *__: object) -> None:
        nonlocal batches
        batches += 1
        if rtype == "Patient":
            raise Crash  # after the first 10 patients: the rest must still count as first load

    try:
        async with FhirClient(source.url, source=source.name, transport=transport) as client:
            with pytest.raises(Crash):
                await export_source(
                    source,
                    client,
                    bridge.ingestor,
                    poll=FAST,
                    batch_size=10,
                    progress=crash_mid_patients,
                )
        state = json.loads(bridge.store.get_cursor("sekmet", STATE_KEY))
        crashed_at = sum(state["done"].values())
        patients_done = [n for url, n in state["done"].items() if url.endswith("/Patient.ndjson")]
        assert patients_done == [10], "the crash came after the first 10 patients"
        assert state["first_load"] == sorted(source.resource_types)
        assert sum(bridge.store.resource_counts("sekmet").values()) == crashed_at

        async with FhirClient(source.url, source=source.name, transport=transport) as client:
            report = await export_source(source, client, bridge.ingestor, poll=FAST, batch_size=10)
        assert report.ok and report.resumed
        assert transport.kickoffs() == 1, "the same job is resumed, not started again"
        assert report.skipped_lines == crashed_at
        total = sum(len(sample(t)) for t in source.resource_types)
        assert report.result.received == total - crashed_at
        assert sum(bridge.store.resource_counts("sekmet").values()) == total
        expected = expected_tasks_per_rule()
        assert active_tasks_per_rule(bridge) == expected
        assert bridge.store.list_tasks(limit=1).total == sum(expected.values()), "no duplicates"
        assert ("DELETE", transport.calls[-1][1]) == transport.calls[-1], "job cleaned up"
    finally:
        bridge.close()


async def test_export_through_faults_stores_everything(seeded_url, tmp_path):
    """429 and 503 while polling, truncated and reset file downloads: retried and resumed
    mid-file, every resource stored once, the expected tasks and no more."""
    from tests.faultproxy import FaultProxy

    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    policy = RetryPolicy(attempts=4, max_wait=0.2, initial_wait=0.01)
    try:
        async with FaultProxy(seeded_url) as proxy:
            proxy.plan(lambda m, t: "/bulk-status/" in t, ["429", "503"])
            proxy.plan(lambda m, t: "/bulk-files/" in t, ["truncate", "reset", "ok", "truncate"])
            async with FhirClient(proxy.base_url, source=source.name, retry=policy) as client:
                report = await export_source(
                    source, client, bridge.ingestor, poll=FAST, batch_size=20, parallel=2
                )
        assert report.ok, report.error
        assert sorted(proxy.injected) == sorted(["429", "503", "truncate", "reset", "truncate"])
        assert bridge.store.resource_counts("sekmet") == {
            t: len(sample(t)) for t in source.resource_types
        }
        assert report.result.received == sum(len(sample(t)) for t in source.resource_types)
        assert active_tasks_per_rule(bridge) == expected_tasks_per_rule()
    finally:
        bridge.close()


async def test_files_the_server_dropped_make_the_next_run_start_a_new_export(seeded_url, tmp_path):
    """When a resumed job's files are gone (404), the run reports it and forgets the job; the
    run after that starts a new export and completes."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]

    def crash(*_: object) -> None:
        raise Crash

    try:
        async with FhirClient(source.url, source=source.name) as client:
            with pytest.raises(Crash):
                await export_source(source, client, bridge.ingestor, poll=FAST, progress=crash)
            state = load_state(bridge.ingestor, "sekmet")
            assert httpx.delete(state["status_url"]).status_code == 202  # server drops the files
            failed = await export_source(source, client, bridge.ingestor, poll=FAST)
            assert not failed.ok and "HTTP 404" in (failed.error or "")
            assert "manifest" not in load_state(bridge.ingestor, "sekmet")
            done = await export_source(source, client, bridge.ingestor, poll=FAST)
        assert done.ok and not done.resumed
        assert bridge.store.resource_counts("sekmet") == {
            t: len(sample(t)) for t in source.resource_types
        }
    finally:
        bridge.close()
