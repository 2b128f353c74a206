"""Consolidated history against two real SEKMET servers holding the same population, one of
them with a changed phone number: linked by MRN, mirrors listed once, the conflict shown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.config import PatientsConfig, Settings, SourceConfig, StorageConfig
from fhir_bridge.runtime import Bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW, ROOT, sample

pytestmark = pytest.mark.integration

MRN = "http://hospital.smarthealthit.org"


async def test_history_across_two_servers(sekmet_factory, tmp_path: Path):
    """After syncing both servers, the history links the two records, lists every mirrored
    resource once with the other server's version, and shows the changed phone as a conflict."""
    ehr, clinic = seeded_server(sekmet_factory), seeded_server(sekmet_factory)
    patient = next(p for p in sample("Patient") if p.get("telecom"))
    changed = {**patient, "telecom": [{"system": "phone", "value": "555-0142", "use": "home"}]}
    resp = httpx.put(f"{clinic}/Patient/{patient['id']}", json=changed, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(
            SourceConfig(name="ehr", base_url=ehr, page_size=100),
            SourceConfig(name="clinic", base_url=clinic, page_size=100),
        ),
        storage=StorageConfig(path=tmp_path / "bridge.db"),
        patients=PatientsConfig(trusted_identifier_systems=(MRN,)),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, clock=lambda: NOW)
    try:
        reports = await bridge.sync_once()
        assert all(r.ok for r in reports)
        view = TestClient(create_app(bridge)).get(f"/patients/ehr/{patient['id']}/history").json()
    finally:
        bridge.close()
    assert [link["source"] for link in view["links"]] == ["ehr", "clinic"]
    phone = view["demographics"]["phone"]
    assert phone["conflict"] is True
    assert {v["source"]: v["value"] for v in phone["by_source"]}["clinic"] == "555-0142"
    assert view["demographics"]["birth_date"] == {
        "value": patient["birthDate"],
        "conflict": False,
        "by_source": [
            {"source": "ehr", "id": patient["id"], "value": patient["birthDate"]},
            {"source": "clinic", "id": patient["id"], "value": patient["birthDate"]},
        ],
    }
    listed = [i for part in view["care_plans"].values() for i in part]
    listed += [i for part in view["appointments"].values() for i in part]
    assert listed and all(i["source"] == "ehr" and i["version_id"] for i in listed)
    assert all([m["source"] for m in i["also_in"]] == ["clinic"] for i in listed)
    assert all(m["version_id"] for i in listed for m in i["also_in"])
    ids = [i["id"] for i in listed]
    assert len(ids) == len(set(ids))
