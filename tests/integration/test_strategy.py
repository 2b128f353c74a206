"""Sync strategy against a real SEKMET: auto reads its CapabilityStatement once, picks the
incremental `_lastUpdated` plan for every type, and syncs; an explicit `full` re-pulls; a
newly seen patient pulls its related resources."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhir_bridge.sync.strategy import INCREMENTAL, Mode, TypePlan
from tests.integration.test_end_to_end import make_bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the packaged sample population, shared by this module's tests."""
    return seeded_server(sekmet_factory)


async def test_auto_picks_last_updated_on_sekmet_and_caches_it(seeded_url, tmp_path):
    """Default (auto): every type incremental from SEKMET's /metadata, decided once per Bridge;
    the second run stores nothing new."""
    bridge = make_bridge(seeded_url, tmp_path)
    source = bridge.settings.sources[0]
    try:
        assert source.sync_strategy == "auto"
        assert bridge.strategies.cached("sekmet") is None
        [first] = await bridge.sync_once()
        plans = bridge.strategies.cached("sekmet")
        assert first.ok, [t.error for t in first.types]
        assert plans == {t: INCREMENTAL for t in source.resource_types}
        assert first.totals.stored > 0
        [second] = await bridge.sync_once()
        assert second.ok and second.totals.stored == 0
        assert bridge.strategies.cached("sekmet") is plans
    finally:
        bridge.close()


async def test_configured_full_re_pulls_every_run(seeded_url, tmp_path):
    """sync_strategy: full re-reads every resource each run; the content hash keeps them
    unchanged so the second run stores nothing."""
    bridge = make_bridge(seeded_url, tmp_path, sync_strategy="full")
    try:
        [first] = await bridge.sync_once()
        [second] = await bridge.sync_once()
        assert bridge.strategies.cached("sekmet") == {
            t: TypePlan(Mode.FULL) for t in bridge.settings.sources[0].resource_types
        }
        assert first.ok and second.ok
        assert second.totals.received == first.totals.received > 0
        assert second.totals.stored == 0 and second.totals.unchanged == first.totals.received
    finally:
        bridge.close()


def new_patient_and_appointment(suffix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sample Patient under a fresh id and a sample Appointment pointing at it."""
    patient = copy.deepcopy(sample("Patient")[0])
    patient["id"] = f"newpt-{suffix}"
    patient.pop("meta", None)
    appointment = copy.deepcopy(sample("Appointment")[0])
    appointment["id"] = f"newappt-{suffix}"
    appointment.pop("meta", None)
    for participant in appointment.get("participant", []):
        actor = participant.get("actor", {})
        if str(actor.get("reference", "")).startswith("Patient/"):
            actor["reference"] = f"Patient/{patient['id']}"
    return patient, appointment


async def test_newly_seen_patient_pulls_its_appointment(seeded_url, tmp_path):
    """A Patient first stored after the initial load brings its Appointment, though the
    Appointment cursor lies past it; an Appointment of a known patient is not pulled so."""
    bridge = make_bridge(seeded_url, tmp_path)
    try:
        [first] = await bridge.sync_once()
        assert first.ok
        patient, appointment = new_patient_and_appointment(uuid.uuid4().hex[:8])
        known = copy.deepcopy(sample("Appointment")[0])
        known["id"] = f"knownappt-{uuid.uuid4().hex[:8]}"
        known.pop("meta", None)
        async with httpx.AsyncClient(timeout=10) as http:
            for res in (patient, appointment, known):
                put = await http.put(f"{seeded_url}/{res['resourceType']}/{res['id']}", json=res)
                assert put.status_code in (200, 201), put.text
        bridge.store.set_cursor("sekmet", "Appointment", "2099-01-01T00:00:00+00:00")
        [second] = await bridge.sync_once()
        assert second.ok, [t.error for t in second.types]
        [patients] = [t for t in second.types if t.resource_type == "Patient"]
        assert patients.new_patients == [patient["id"]]
        assert bridge.store.get_resource("sekmet", "Appointment", appointment["id"]) is not None
        assert bridge.store.get_resource("sekmet", "Appointment", known["id"]) is None
    finally:
        bridge.close()


async def test_configured_created_finds_new_and_misses_old_edits(seeded_url, tmp_path):
    """sync_strategy: created on SEKMET: the second run finds an Appointment starting after the
    first run, and (as documented) misses an edit of an Appointment that started before it."""
    bridge = make_bridge(seeded_url, tmp_path, sync_strategy="created")
    try:
        [first] = await bridge.sync_once()
        assert first.ok
        assert bridge.strategies.cached("sekmet")["Appointment"] == TypePlan(Mode.CREATED, "date")
        new = copy.deepcopy(sample("Appointment")[0])
        new["id"] = f"future-{uuid.uuid4().hex[:8]}"
        new.pop("meta", None)
        start = datetime.now(UTC) + timedelta(days=3)
        new["start"] = start.isoformat(timespec="seconds")
        new["end"] = (start + timedelta(minutes=30)).isoformat(timespec="seconds")
        past = datetime.now(UTC) - timedelta(hours=1)
        old = copy.deepcopy(
            next(
                a
                for a in sample("Appointment")
                if "start" in a and datetime.fromisoformat(a["start"]) < past
            )
        )
        old.pop("meta", None)
        old["comment"] = f"edited {uuid.uuid4().hex[:6]}"
        async with httpx.AsyncClient(timeout=10) as http:
            for res in (new, old):
                put = await http.put(f"{seeded_url}/Appointment/{res['id']}", json=res)
                assert put.status_code in (200, 201), put.text
        [second] = await bridge.sync_once()
        assert second.ok, [t.error for t in second.types]
        assert bridge.store.get_resource("sekmet", "Appointment", new["id"]) is not None
        stored_old = bridge.store.get_resource("sekmet", "Appointment", old["id"])
        assert stored_old is not None
        assert stored_old.body.get("comment") != old["comment"]
    finally:
        bridge.close()


async def test_a_worker_follows_the_plan_and_pulls_a_new_patients_resources(seeded_url, tmp_path):
    """`fhir-bridge worker` syncs pair by pair: it uses the source's plan (here `created`) and,
    like `sync_source`, pulls a newly seen patient's Appointment lying past the cursor."""
    from fhir_bridge.store.leases import lease_manager
    from fhir_bridge.sync.engine import dependency_order
    from fhir_bridge.worker import Worker, WorkerOptions

    bridge = make_bridge(seeded_url, tmp_path, sync_strategy="created", poll_interval=0.05)
    source = bridge.settings.sources[0]
    worker = Worker(bridge, lease_manager(bridge.store, "w1"), "sync", WorkerOptions(lease_ttl=5))

    async def every_pair() -> dict[str, Any]:
        reports = {}
        async with bridge.client(source) as client:
            for rtype in dependency_order(source.resource_types, bridge.rules):
                reports[rtype] = await worker.sync_pair(source, rtype, client)
        await asyncio.sleep(0.1)  # past each pair's next poll
        return reports

    try:
        first = await every_pair()
        assert all(r is not None and r.error is None for r in first.values()), first
        assert bridge.strategies.cached("sekmet")["Appointment"] == TypePlan(Mode.CREATED, "date")
        patient, appointment = new_patient_and_appointment(uuid.uuid4().hex[:8])
        async with httpx.AsyncClient(timeout=10) as http:
            for res in (patient, appointment):
                put = await http.put(f"{seeded_url}/{res['resourceType']}/{res['id']}", json=res)
                assert put.status_code in (200, 201), put.text
        bridge.store.set_cursor("sekmet", "Appointment", "2099-01-01T00:00:00+00:00")
        second = await every_pair()
        assert second["Patient"] is not None and second["Patient"].new_patients == [patient["id"]]
        assert bridge.store.get_resource("sekmet", "Appointment", appointment["id"]) is not None
    finally:
        bridge.close()
