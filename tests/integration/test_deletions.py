"""Deletion detection against a real SEKMET: a resource deleted on the server leaves the store
and its active tasks are cancelled "deleted in the EHR"; the re-evaluation sweep keeps them so."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import respx

from fhir_bridge.config import SourceConfig
from fhir_bridge.fhir import FhirClient
from fhir_bridge.sync.deletions import DELETED_REASON, reconcile_source, reconcile_type
from fhir_bridge.tasks.model import TaskStatus
from tests.integration.test_end_to_end import make_bridge
from tests.sandbox_fixtures import seeded_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the sample population; each test deletes its own resources."""
    return seeded_server(sekmet_factory)


def open_tasks_on(bridge, types=("Appointment", "CarePlan")):
    """Open tasks whose focus is one of `types`."""
    return [t for t in bridge.store.iter_tasks(statuses=[TaskStatus.OPEN]) if t.focus_type in types]


async def test_deleted_resource_closes_its_tasks(seeded_url, tmp_path):
    """After a sync, deleting a task's focus resource on SEKMET and reconciling removes the
    resource from the store and cancels the task with the reason; the other resources and
    tasks stay; a second reconciliation and a re-evaluation change nothing."""
    url = seeded_url
    bridge = make_bridge(url, tmp_path)
    source = bridge.settings.sources[0]
    try:
        [report] = await bridge.sync_once()
        assert report.ok, [t.error for t in report.types]
        active = open_tasks_on(bridge)
        assert active, "the sample opens tasks on appointments or care plans"
        victim = active[0]
        before = bridge.store.resource_counts("sekmet")
        async with httpx.AsyncClient() as http:
            gone = await http.delete(f"{url}/{victim.focus_type}/{victim.focus_id}")
            assert gone.status_code in (200, 204)

        async with bridge.client(source) as client:
            results = {
                r.resource_type: r for r in await reconcile_source(source, client, bridge.ingestor)
            }
            again = await reconcile_source(source, client, bridge.ingestor)

        hit = results[victim.focus_type]
        assert (hit.missing, hit.deleted, hit.error, hit.skipped) == (1, 1, None, None)
        assert hit.tasks_closed >= 1
        assert sum(r.deleted for r in results.values()) == 1
        assert all(r.deleted == 0 and r.missing == 0 for r in again)
        assert bridge.store.get_resource("sekmet", victim.focus_type, victim.focus_id) is None
        after = bridge.store.resource_counts("sekmet")
        assert after[victim.focus_type] == before[victim.focus_type] - 1
        closed = bridge.store.get_task(victim.id)
        assert closed is not None and closed.status is TaskStatus.CANCELLED
        last = bridge.store.task_history(victim.id)[-1]
        assert DELETED_REASON in str(last.detail)
        others = [t for t in active[1:] if t.focus_id != victim.focus_id]
        assert all(bridge.store.get_task(t.id).status is TaskStatus.OPEN for t in others)

        await bridge._reevaluate()
        assert bridge.store.get_task(victim.id).status is TaskStatus.CANCELLED
    finally:
        bridge.close()


async def test_run_loops_reconcile_on_their_interval(seeded_url, tmp_path):
    """With reconcile_interval set, the running bridge notices a deletion by itself."""
    bridge = make_bridge(seeded_url, tmp_path, reconcile_interval=0.2, poll_interval=3600)
    stop = asyncio.Event()
    loops = asyncio.create_task(bridge.run_loops(stop, writeback=False))
    try:
        deadline = time.monotonic() + 30
        while bridge.source_state["sekmet"].runs == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert bridge.source_state["sekmet"].last_ok is True
        victim = open_tasks_on(bridge)[-1]
        async with httpx.AsyncClient() as http:
            gone = await http.delete(f"{seeded_url}/{victim.focus_type}/{victim.focus_id}")
            assert gone.status_code in (200, 204)
        deadline = time.monotonic() + 15

        def done() -> bool:
            # The task is closed first, then the resource removed (a crash in between leaves
            # the resource for the next reconciliation to find): wait for both.
            cancelled = bridge.store.get_task(victim.id).status is TaskStatus.CANCELLED
            return cancelled and not bridge.store.get_resource(
                "sekmet", victim.focus_type, victim.focus_id
            )

        while time.monotonic() < deadline and not done():
            await asyncio.sleep(0.1)
        assert bridge.store.get_task(victim.id).status is TaskStatus.CANCELLED
        assert bridge.store.get_resource("sekmet", victim.focus_type, victim.focus_id) is None
    finally:
        stop.set()
        await asyncio.wait_for(loops, timeout=30)
        bridge.close()


BASE = "https://ehr.example.org/fhir"


def id_bundle(*ids: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "CarePlan", "id": i}} for i in ids],
    }


async def test_listing_that_would_remove_most_is_skipped(tmp_path):
    """A server listing none of 3 stored resources (wrong server, missing rights) removes
    nothing; a missing id the server still reads is kept; a failed listing removes nothing."""
    bridge = make_bridge(BASE, tmp_path, resource_types=("CarePlan",))
    source: SourceConfig = bridge.settings.sources[0]
    for rid in ("c1", "c2", "c3"):
        bridge.store.put_resource("sekmet", {"resourceType": "CarePlan", "id": rid}, rid)
    try:
        with respx.mock(base_url=BASE) as fhir:
            search = fhir.get("/CarePlan").mock(return_value=httpx.Response(200, json=id_bundle()))
            read = fhir.get("/CarePlan/c3").mock(
                return_value=httpx.Response(200, json={"resourceType": "CarePlan", "id": "c3"})
            )
            async with FhirClient(BASE, source="sekmet") as client:
                skipped = await reconcile_type(source, "CarePlan", client, bridge.ingestor)
                assert skipped.missing == 3 and skipped.deleted == 0
                assert skipped.skipped and "more than 50%" in skipped.skipped
                assert search.calls.last.request.url.params["_elements"] == "id"

                search.mock(return_value=httpx.Response(200, json=id_bundle("c1", "c2")))
                kept = await reconcile_type(source, "CarePlan", client, bridge.ingestor)
                assert (kept.missing, kept.deleted) == (1, 0) and read.call_count == 1

                search.mock(return_value=httpx.Response(400))
                failed = await reconcile_type(source, "CarePlan", client, bridge.ingestor)
                assert failed.error and "HTTP 400" in failed.error
        assert bridge.store.resource_counts("sekmet") == {"CarePlan": 3}
    finally:
        bridge.close()
