"""Admins' link decisions through the API: two sources holding the same sample patients with
no trusted identifier system, so only a decision joins them; separating, forgetting, errors,
and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.runtime import Bridge
from tests.api.sample import sample_bridge
from tests.utils import sample

PATIENTS = sample("Patient")
P1, P2 = PATIENTS[0]["id"], PATIENTS[1]["id"]


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = sample_bridge("ehr", "clinic")
    yield b
    b.close()


@pytest.fixture
def client(bridge: Bridge) -> TestClient:
    return TestClient(create_app(bridge))


def linked(client: TestClient, source: str, pid: str) -> list[str]:
    links = client.get(f"/patients/{source}/{pid}/history").json()["links"]
    return [f"{link['source']}/{link['id']}" for link in links]


def test_link_joins_histories_and_forget_undoes_it(client: TestClient, bridge: Bridge):
    assert linked(client, "ehr", P1) == [f"ehr/{P1}"]
    answer = client.post(
        "/patients/links",
        json={"a": f"ehr/{P1}", "b": f"clinic/{P1}", "same_person": True, "note": "same MRN"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["decision"]["same_person"] is True and body["decision"]["by"] == "anonymous"
    assert [r["record"] for r in body["linked"]] == [f"ehr/{P1}", f"clinic/{P1}"]
    assert body["linked"][1]["reason"].startswith("linked by anonymous on 2026-11-26")
    assert linked(client, "clinic", P1) == [f"clinic/{P1}", f"ehr/{P1}"]
    listed = client.get("/patients/links").json()
    assert [(d["a"], d["b"], d["note"]) for d in listed] == [
        (f"ehr/{P1}", f"clinic/{P1}", "same MRN")
    ]

    gone = client.delete("/patients/links", params={"a": f"clinic/{P1}", "b": f"ehr/{P1}"})
    assert gone.status_code == 200 and gone.json() == {"forgotten": True}
    assert linked(client, "ehr", P1) == [f"ehr/{P1}"]
    again = client.delete("/patients/links", params={"a": f"clinic/{P1}", "b": f"ehr/{P1}"})
    assert again.status_code == 404


def test_separation_wins_over_a_trusted_identifier():
    """With the MRN system trusted the two mirrors link; an admin's "different persons" cuts it."""
    mrn = "http://hospital.smarthealthit.org"
    b = sample_bridge("ehr", "clinic", patients={"trusted_identifier_systems": [mrn]})
    try:
        client = TestClient(create_app(b))
        assert linked(client, "ehr", P1) == [f"ehr/{P1}", f"clinic/{P1}"]
        decision = {"a": f"ehr/{P1}", "b": f"clinic/{P1}", "same_person": False}
        assert client.post("/patients/links", json=decision).status_code == 200
        assert linked(client, "ehr", P1) == [f"ehr/{P1}"]
    finally:
        b.close()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"a": f"ehr/{P1}", "b": f"ehr/{P1}", "same_person": True}, 422, "b"),
        ({"a": f"ehr/{P1}", "b": "clinic/nobody", "same_person": True}, 404, None),
        ({"a": "ehr", "b": f"clinic/{P1}", "same_person": True}, 422, "a"),
        ({"a": f"ehr/{P1}", "b": f"clinic/{P2}"}, 422, "same_person"),
    ],
)
def test_bad_decisions_are_refused_with_a_reason(client: TestClient, body, status, field):
    answer = client.post("/patients/links", json=body)
    assert answer.status_code == status, answer.text
    if field:
        assert field in answer.text
    assert client.get("/patients/links").json() == []


def test_decisions_are_audited_per_record(client: TestClient, bridge: Bridge):
    decision = {"a": f"ehr/{P1}", "b": f"clinic/{P2}", "same_person": True, "note": "x"}
    assert client.post("/patients/links", json=decision).status_code == 200
    client.delete("/patients/links", params={"a": f"ehr/{P1}", "b": f"clinic/{P2}"})
    records, _ = bridge.store.list_audit()
    links = [r for r in records if r.subtype == "patient-link"]
    assert sorted((r.action, r.source, r.patient, r.status_code) for r in links) == [
        ("D", "clinic", f"Patient/{P2}", 200),
        ("D", "ehr", f"Patient/{P1}", 200),
        ("U", "clinic", f"Patient/{P2}", 200),
        ("U", "ehr", f"Patient/{P1}", 200),
    ]
