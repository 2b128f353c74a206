"""Family contacts: who they are, whether the patient authorized sharing and why; the API
that lists them and sets coordinators' flags (audited); the contacts section of the history;
and a flag opening family tasks on the next re-evaluation."""

from __future__ import annotations

from fastapi.testclient import TestClient

from fhir_bridge.patients.contacts import (
    FACT_KIND,
    consent_decisions,
    contacts_of,
    fact_key,
    flag_value,
)
from fhir_bridge.runtime import Bridge
from tests.utils import sample

JUANA = "Patient/90f9d712-26ae-4373-8e79-80b85fbbaa46"
MONTE = "Patient/ae95b00c-2769-45b2-884f-316c7502c8ff"
ISABEL = "Patient/3fe3dac3-a8a6-49a7-8ad6-83a8726a3713"
NATALIA = "Patient/c6ca9bb4-ae49-4190-a0ba-e5091621793d"


def _consent(cid: str, status: str, kind: str, actor: str, when: str = "2026-01-01") -> dict:
    """A privacy consent naming one actor."""
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "dateTime": when,
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "provision": {"type": kind, "actor": [{"reference": {"reference": actor}}]},
    }


def test_consent_decisions_latest_active_wins_and_inactive_is_only_noted():
    """The newest active consent decides; a rejected one only explains; nested provisions count."""
    nested = _consent("c3", "active", "permit", "RelatedPerson/x", "2025-01-01")
    nested["provision"] = {"type": "deny", "provision": [nested["provision"]]}
    found = consent_decisions(
        [
            _consent("c1", "active", "permit", "RelatedPerson/a", "2025-01-01"),
            _consent("c2", "active", "deny", "RelatedPerson/a", "2026-06-01"),
            _consent("c4", "rejected", "permit", "RelatedPerson/b"),
            nested,
        ]
    )
    assert found["RelatedPerson/a"] == (False, "Consent/c2 (active, deny)")
    assert found["RelatedPerson/b"] == (None, "Consent/c4 (rejected): not in force")
    assert found["RelatedPerson/x"] == (True, "Consent/c3 (active, permit)")


def test_contacts_of_reads_channel_language_and_decides_in_order():
    """Relationship, preferred channel by rank, language; consent beats the flag, the flag
    beats nothing, and nothing is not authorized."""
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "communication": [{"language": {"coding": [{"code": "es"}]}, "preferred": True}],
        "contact": [{"relationship": [{"text": "sister"}], "name": {"given": ["Greta"]}}],
    }
    rp = {
        "resourceType": "RelatedPerson",
        "id": "rp1",
        "relationship": [{"coding": [{"code": "SON", "display": "son"}]}],
        "name": [{"given": ["Diego"], "family": "R"}],
        "telecom": [
            {"system": "email", "value": "d@example.org", "rank": 2},
            {"system": "sms", "value": "555", "rank": 1},
        ],
        "communication": [
            {"language": {"coding": [{"code": "en"}]}},
            {"language": {"coding": [{"code": "es-MX"}]}, "preferred": True},
        ],
    }
    flags = {
        fact_key("ehr", "RelatedPerson/rp1"): flag_value(True, "ann", "2026-11-26T12:00:00"),
        fact_key("ehr", "Patient/p1/contact/0"): flag_value(True, "ann", "2026-11-26T12:00"),
    }
    deny = _consent("c9", "active", "deny", "RelatedPerson/rp1")
    son, sister = contacts_of("ehr", patient, [rp], [deny], flags)
    assert (son.relationship, son.channel, son.telecom, son.language) == (
        "son",
        "sms",
        "555",
        "es-MX",
    )
    assert (son.name, son.given, son.authorized) == ("Diego R", "Diego", False)
    assert son.basis == "Consent/c9 (active, deny)"  # the patient's refusal beats the flag
    assert (sister.reference, sister.kind, sister.language) == (
        "Patient/p1/contact/0",
        "patient-contact",
        "es",
    )
    assert sister.authorized and sister.basis == "set by coordinator ann on 2026-11-26"
    assert sister.recipient == "Patient/p1"
    [plain] = contacts_of("ehr", None, [rp], [], {})
    assert (plain.authorized, plain.basis) == (False, "no consent on file")


def test_api_lists_contacts_with_their_authorization(api: TestClient, bridge: Bridge):
    """GET /family/contacts: the consented son is authorized by the Consent, the sister of a
    patient without consent is not, a rejected consent is named; unknown patients are 404;
    each read is in the audit trail."""
    juana = api.get("/family/contacts", params={"source": "ehr", "patient": JUANA}).json()
    [read] = [r for r in bridge.store.list_audit()[0] if r.subtype == "family-contacts"]
    assert (read.patient, read.source, read.action) == (JUANA, "ehr", "R")
    assert [(c["reference"], c["authorized"], c["basis"]) for c in juana] == [
        ("RelatedPerson/family-juana-son", True, "Consent/family-consent-juana (active, permit)")
    ]
    assert juana[0]["language"] == "es" and juana[0]["relationship"] == "son"
    assert juana[0]["source"] == "ehr" and "version_id" in juana[0]
    monte = api.get("/family/contacts", params={"source": "ehr", "patient": MONTE}).json()
    assert [(c["kind"], c["relationship"], c["authorized"], c["basis"]) for c in monte] == [
        ("patient-contact", "sister", False, "no consent on file")
    ]
    isabel = api.get("/family/contacts", params={"source": "ehr", "patient": ISABEL}).json()
    assert isabel[0]["basis"].startswith("Consent/family-consent-isabel (rejected): not in force")
    missing = api.get("/family/contacts", params={"source": "ehr", "patient": "Patient/nobody"})
    assert missing.status_code == 404


def test_flag_set_and_clear_is_stored_audited_and_opens_family_tasks(
    api: TestClient, bridge: Bridge
):
    """A coordinator authorizes Monte's sister: the fact is stored, the answer says who and
    when, an audit record names the patient, and the same request opens family tasks for his
    recent no-shows (the route re-evaluates his rules); clearing the flag closes them again."""
    contact = f"{MONTE}/contact/0"
    body = {"source": "ehr", "patient": MONTE, "contact": contact, "authorized": True}
    answer = api.post("/family/sharing", json=body | {"coordinator": "ann"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["changed"] is True
    assert answer.json()["contact"]["authorized"] is True
    assert answer.json()["contact"]["basis"] == "set by coordinator ann on 2026-11-26"
    assert bridge.store.get_fact(FACT_KIND, fact_key("ehr", contact))["by"] == "ann"
    [record] = [r for r in bridge.store.list_audit()[0] if r.subtype == "family-sharing"]
    assert (record.patient, record.source, record.action) == (MONTE, "ehr", "U")

    opened = [t for t in bridge.store.iter_tasks(queue="family") if t.patient == MONTE]
    recent_noshows = [
        a
        for a in sample("Appointment")
        if a["status"] == "noshow"
        and any(p["actor"].get("reference") == MONTE for p in a["participant"])
        and a["start"] >= "2026-10-27"
    ]
    assert len(opened) == len(recent_noshows) > 0
    assert {t.rule_id for t in opened} == {"family-appointment-missed"}
    assert all("recipient:" + MONTE in t.labels for t in opened)
    assert opened[0].description.startswith("Monte missed the ")

    cleared = api.post("/family/sharing", json=body | {"authorized": None})
    assert cleared.json()["contact"]["authorized"] is False
    assert bridge.store.get_fact(FACT_KIND, fact_key("ehr", contact)) is None
    again = {t.id: t for t in bridge.store.iter_tasks(queue="family") if t.patient == MONTE}
    assert {t.status.value for t in again.values()} == {"cancelled"}


def test_flag_for_a_stranger_is_404_and_a_bad_contact_is_422(api: TestClient):
    """Only contacts of the named patient can be flagged; malformed references are refused."""
    body = {"source": "ehr", "patient": MONTE, "authorized": True}
    other = api.post("/family/sharing", json=body | {"contact": "RelatedPerson/family-juana-son"})
    assert other.status_code == 404
    bad = api.post("/family/sharing", json=body | {"contact": "Practitioner/x"})
    assert bad.status_code == 422


def test_history_has_a_contacts_section_with_source_and_version(api: TestClient):
    """The consolidated history lists the contacts (not among `other`), with authorization."""
    patient_id = JUANA.split("/")[1]
    body = api.get(f"/patients/ehr/{patient_id}/history").json()
    [son] = body["contacts"]
    assert son["reference"] == "RelatedPerson/family-juana-son"
    assert son["source"] == "ehr" and "version_id" in son
    assert son["authorized"] is True
    assert not [i for i in body["other"] if i["type"] == "RelatedPerson"]
    natalia = api.get(f"/patients/ehr/{NATALIA.split('/')[1]}/history").json()
    assert [(c["authorized"], c["basis"]) for c in natalia["contacts"]] == [
        (False, "Consent/family-consent-natalia (active, deny)")
    ]
