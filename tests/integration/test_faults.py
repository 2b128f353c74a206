"""Sync through a fault-injecting proxy in front of a real SEKMET: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.runtime import Bridge
from fhir_bridge.sync.engine import sync_source
from tests.faultproxy import FaultProxy
from tests.integration.test_end_to_end import (
    active_tasks_per_rule,
    expected_tasks_per_rule,
    make_bridge,
)
from tests.sandbox_fixtures import seeded_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the sample population, shared by this module's tests."""
    return seeded_server(sekmet_factory)


def server_versions(url: str, resource_types: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """(type, id) -> versionId of every resource the server holds now, read directly."""
    versions: dict[tuple[str, str], str] = {}
    with httpx.Client() as http:
        for rtype in resource_types:
            next_url: str | None = f"{url}/{rtype}?_count=1000"
            while next_url:
                bundle = http.get(next_url).json()
                for entry in bundle.get("entry", []):
                    res = entry["resource"]
                    versions[(rtype, res["id"])] = res["meta"]["versionId"]
                next_url = next(
                    (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"),
                    None,
                )
    return versions


def assert_store_matches_server(bridge: Bridge, url: str) -> None:
    """Every resource on the server is in the store at its latest version."""
    source = bridge.settings.sources[0]
    on_server = server_versions(url, source.resource_types)
    assert len(on_server) > 500
    stale = {
        key: version
        for key, version in on_server.items()
        if (stored := bridge.store.get_resource(source.name, *key)) is None
        or stored.version_id != version
    }
    assert stale == {}, f"{len(stale)} resources missing or stale"


def assert_no_duplicate_tasks(bridge: Bridge) -> None:
    """At most one task per rule and focus resource."""
    keys = Counter(
        (t.rule_id, t.source, t.focus_type, t.focus_id) for t in bridge.store.iter_tasks()
    )
    assert keys and max(keys.values()) == 1


def _search(rtype: str | None = None):
    """Matches GET searches (of one type, if given): not $export, not reads."""

    def match(method: str, target: str) -> bool:
        path = target.split("?", 1)[0]
        wanted = path.rsplit("/", 1)[-1] == rtype if rtype else True
        return method == "GET" and "?" in target and wanted

    return match


async def test_bursts_resets_truncation_and_delays_lose_nothing(seeded_url, tmp_path):
    """429 bursts (Retry-After honoured up to the cap), 503s, resets, truncated bodies and a
    timed-out page are all retried: every resource ends up stored at its latest version, the
    expected tasks open, none twice; a second faulty run changes nothing."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    policy = RetryPolicy(attempts=5, max_wait=0.3, initial_wait=0.01)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    faults = ["ok", "429", "429", "429", "503", "ok", "reset", "truncate", "ok", "delay"]
    faults += ["ok", "reset", "ok", "truncate", "503", "ok", "429"]
    try:
        async with FaultProxy(seeded_url, delay=1.5) as proxy:
            proxy.plan(_search(), list(faults))
            async with FhirClient(
                proxy.base_url, source=source.name, retry=policy, timeout=1.0, sleep=sleep
            ) as client:
                report = await sync_source(source, client, bridge.ingestor)
                assert report.ok, [t.error for t in report.types]
                assert Counter(proxy.injected) == Counter(f for f in faults if f != "ok")
                throttled = faults.count("429") + faults.count("503")
                assert waits.count(0.3) == throttled, "Retry-After: 1, capped at 0.3 s"
                assert_store_matches_server(bridge, seeded_url)
                assert active_tasks_per_rule(bridge) == expected_tasks_per_rule()
                assert_no_duplicate_tasks(bridge)

                proxy.plan(_search(), ["reset", "429", "truncate", "ok", "503"])
                again = await sync_source(source, client, bridge.ingestor, full=True)
        assert again.ok and again.totals.stored == 0 and again.totals.tasks_created == 0
        assert_no_duplicate_tasks(bridge)
    finally:
        bridge.close()


async def test_bad_answers_fail_their_type_only_and_the_next_run_completes(seeded_url, tmp_path):
    """Cut-off JSON, an HTML login page, a next link that loops and a page that keeps timing
    out each fail only their type with a clear error; pages stored before stay stored; the
    next run resumes and ends with everything stored and no duplicate task."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    policy = RetryPolicy(attempts=2, max_wait=0.05, initial_wait=0.01)
    try:
        async with FaultProxy(seeded_url, delay=1.5) as proxy:
            proxy.plan(_search("Appointment"), ["ok", "garbage"])
            proxy.plan(_search("MedicationStatement"), ["html"])
            proxy.plan(_search("CarePlan"), ["loop"])
            proxy.plan(_search("Patient"), ["delay", "delay"])
            async with FhirClient(
                proxy.base_url, source=source.name, retry=policy, timeout=1.0
            ) as client:
                first = await sync_source(source, client, bridge.ingestor)
                errors = {t.resource_type: t.error for t in first.types}
                assert "not a JSON object" in errors["Appointment"]
                assert "not a JSON object" in errors["MedicationStatement"]
                assert "next link loops" in errors["CarePlan"]
                assert "ReadTimeout" in errors["Patient"]
                assert errors["Coverage"] is None and errors["CoverageEligibilityRequest"] is None
                assert all("on source sekmet" in e for e in errors.values() if e)
                counts = bridge.store.resource_counts("sekmet")
                assert counts["Appointment"] == source.page_size, "page 1 stays stored"
                assert counts.get("Patient", 0) == 0
                assert bridge.store.get_cursor("sekmet", "Appointment") is not None

                second = await sync_source(source, client, bridge.ingestor)
        assert second.ok, [t.error for t in second.types]
        assert_store_matches_server(bridge, seeded_url)
        assert active_tasks_per_rule(bridge) == expected_tasks_per_rule()
        assert_no_duplicate_tasks(bridge)
    finally:
        bridge.close()


async def test_a_first_load_cut_off_and_resumed_opens_no_new_patient_tasks(seeded_url, tmp_path):
    """Patients of a first load that failed after page 1 are still 'first load' when the next
    run fetches them: no intake-review task opens for them."""
    bridge = make_bridge(seeded_url, tmp_path, resource_types=("Patient",))
    source = bridge.settings.sources[0].model_copy(update={"page_size": 10})
    policy = RetryPolicy(attempts=1)
    try:
        async with FaultProxy(seeded_url) as proxy:
            proxy.plan(_search("Patient"), ["ok", "garbage"])
            async with FhirClient(proxy.base_url, source=source.name, retry=policy) as client:
                first = await sync_source(source, client, bridge.ingestor)
                assert not first.ok and bridge.store.resource_counts("sekmet")["Patient"] == 10
                second = await sync_source(source, client, bridge.ingestor)
        assert second.ok
        assert bridge.store.list_tasks(rule_id="intake-review").total == 0
    finally:
        bridge.close()
