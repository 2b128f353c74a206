"""Cross-source identity: links by trusted identifiers, transitive, each explained."""

from __future__ import annotations

from fhir_bridge.patients.identity import PatientRecord, linked_records, trusted_identifiers
from tests.patients.conftest import CLINIC_ID, MRN, SSN, patient

TRUSTED = (MRN, CLINIC_ID)


def test_links_follow_trusted_identifiers_transitively(store):
    """p1 links to c7 by MRN and, through c7, to q3 by the clinic id; z9 (SSN only) stays out."""
    links = linked_records(store, PatientRecord("ehr", "p1"), TRUSTED)
    assert [(link.record.source, link.record.id) for link in links] == [
        ("ehr", "p1"),
        ("clinic", "c7"),
        ("lab", "q3"),
    ]
    assert links[0].via is None and links[0].reason == "the record asked for"
    assert (links[1].via, links[1].system) == (PatientRecord("ehr", "p1"), MRN)
    assert (links[2].via, links[2].system) == (PatientRecord("clinic", "c7"), CLINIC_ID)
    assert "Patient/c7" in links[2].reason and CLINIC_ID in links[2].reason


def test_link_reasons_never_quote_identifier_values(store):
    """Explanations name systems and record ids, never an identifier value."""
    for link in linked_records(store, PatientRecord("lab", "q3"), TRUSTED):
        assert "123" not in link.reason and "C-7" not in link.reason


def test_untrusted_systems_do_not_link(store):
    """With only the SSN system absent from the trusted list, p1 and z9 stay apart; with no
    trusted system at all only the record itself is returned."""
    assert len(linked_records(store, PatientRecord("lab", "z9"), TRUSTED)) == 1
    assert len(linked_records(store, PatientRecord("ehr", "p1"), ())) == 1
    assert len(linked_records(store, PatientRecord("ehr", "p1"), (SSN,))) == 2


def test_unknown_anchor_has_no_links(store):
    """A Patient that is not stored gives no links at all."""
    assert linked_records(store, PatientRecord("ehr", "nope"), TRUSTED) == []


def test_trusted_identifiers_ignore_blank_and_foreign_values():
    """Only (system, value) pairs of trusted systems with a value are kept."""
    body = patient("x", (MRN, "1"), (SSN, "2"))
    body["identifier"].append({"system": MRN, "value": ""})
    body["identifier"].append({"value": "no-system"})
    assert trusted_identifiers(body, TRUSTED) == {(MRN, "1")}
