"""Patient search and consolidated history through the API, with the sample population
ingested under two source names (the same patients mirrored in two EHRs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.runtime import Bridge
from tests.api.sample import sample_bridge
from tests.logcapture import json_log_lines
from tests.utils import sample

MRN = "http://hospital.smarthealthit.org"
PATIENT = sample("Patient")[0]
PID = PATIENT["id"]


@pytest.fixture(scope="module")
def two_sources() -> Iterator[Bridge]:
    """The sample in "ehr" and in "clinic", the hospital MRN system trusted."""
    b = sample_bridge("ehr", "clinic", patients={"trusted_identifier_systems": [MRN]})
    yield b
    b.close()


@pytest.fixture(scope="module")
def client(two_sources: Bridge) -> TestClient:
    """A client of the two-source bridge (read-only tests share it)."""
    return TestClient(create_app(two_sources))


def items(section: dict) -> list[dict]:
    """Every item of a history section, whatever its sub-lists."""
    return [i for part in section.values() for i in part]


def test_search_by_name_finds_the_patient_in_both_sources(client: TestClient):
    """A name search lists the record of each source, with its history URL."""
    family = PATIENT["name"][0]["family"]
    found = client.get("/patients", params={"name": family.upper()}).json()
    mine = [m for m in found if m["id"] == PID]
    assert [m["source"] for m in mine] == ["clinic", "ehr"]
    assert mine[1]["history_url"] == f"/patients/ehr/{PID}/history"
    assert mine[0]["birth_date"] == PATIENT["birthDate"]


def test_search_by_identifier_and_birthdate(client: TestClient):
    """system|value and a birth date narrow to the same person."""
    mrn = next(i["value"] for i in PATIENT["identifier"] if i["system"] == MRN)
    by_mrn = client.get("/patients", params={"identifier": f"{MRN}|{mrn}"}).json()
    assert {(m["source"], m["id"]) for m in by_mrn} == {("ehr", PID), ("clinic", PID)}
    both = client.get(
        "/patients", params={"identifier": mrn, "birthdate": PATIENT["birthDate"]}
    ).json()
    assert len(both) == 2
    assert client.get("/patients", params={"identifier": mrn, "birthdate": "1800"}).json() == []


def test_search_needs_a_parameter_and_valid_dates(client: TestClient):
    """No search parameter, or a malformed birth date, is 422 in the error shape."""
    empty = client.get("/patients")
    assert empty.status_code == 422 and empty.json()["error"] == "invalid_request"
    bad = client.get("/patients", params={"birthdate": "01/02/1970"})
    assert bad.status_code == 422
    assert "01/02/1970" not in bad.text


def test_history_links_both_sources_and_lists_each_resource_once(
    client: TestClient, two_sources: Bridge
):
    """The clinic record is linked by MRN (explained), and each resource mirrored in the
    two sources is listed once, from the record asked for, with the clinic copy in also_in."""
    view = client.get(f"/patients/ehr/{PID}/history").json()
    assert [(link["source"], link["system"]) for link in view["links"]] == [
        ("ehr", None),
        ("clinic", MRN),
    ]
    assert MRN in view["links"][1]["reason"]
    stored = two_sources.store.resources_for_patient("ehr", f"Patient/{PID}")
    listed = [
        *items(view["care_plans"]),
        *items(view["appointments"]),
        *items(view["medications"]),
        *items(view["coverage"]),
        *view["other"],
    ]
    assert sorted(i["id"] for i in listed) == sorted(
        r.id for r in stored if r.resource_type != "Patient"
    )
    assert all(i["source"] == "ehr" for i in listed)
    assert all(
        i["also_in"] == [{"source": "clinic", "id": i["id"], "version_id": None}] for i in listed
    )
    assert all(i["summary"] and i["raw"] is None for i in listed)
    assert not any(d["conflict"] for d in view["demographics"].values())


def test_history_tasks_come_from_both_sources(client: TestClient, two_sources: Bridge):
    """Open tasks are those of the patient in each source (each source made its own)."""
    view = client.get(f"/patients/ehr/{PID}/history").json()
    per_source = {
        s: {t.id for t in two_sources.store.iter_tasks(patient=f"Patient/{PID}") if t.source == s}
        for s in ("ehr", "clinic")
    }
    assert per_source["ehr"] and per_source["clinic"]
    assert {t["id"] for t in view["tasks"]["open"]} == per_source["ehr"] | per_source["clinic"]
    assert view["tasks"]["closed"] == []


def test_history_raw_on_request(client: TestClient):
    """?raw=1 adds each item's FHIR JSON."""
    view = client.get(f"/patients/ehr/{PID}/history", params={"raw": 1}).json()
    plans = items(view["care_plans"])
    assert plans and all(p["raw"]["resourceType"] == "CarePlan" for p in plans)


def test_history_of_unknown_patient_is_404(client: TestClient):
    """An unknown source or patient id is 404 in the error shape."""
    resp = client.get("/patients/ehr/nope/history")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert client.get(f"/patients/nowhere/{PID}/history").status_code == 404


def test_history_without_trusted_systems_links_nothing(api: TestClient):
    """With no trusted identifier system (the default) only the record asked for is used."""
    view = api.get(f"/patients/ehr/{PID}/history").json()
    assert [link["source"] for link in view["links"]] == ["ehr"]
    assert all(i["also_in"] == [] for i in items(view["care_plans"]))


def test_patient_requests_log_no_phi(client: TestClient):
    """Searching and reading a history log neither the name searched for nor demographics."""
    family = PATIENT["name"][0]["family"]
    with json_log_lines() as logs:
        client.get("/patients", params={"name": family})
        client.get(f"/patients/ehr/{PID}/history")
    assert logs.lines
    assert family not in logs.text and PATIENT["birthDate"] not in logs.text
