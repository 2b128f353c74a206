"""Cross-source identity: links by trusted identifiers, transitive, each explained."""

from __future__ import annotations

import pytest

from fhir_bridge.patients.identity import (
    Decision,
    PatientRecord,
    decide,
    decisions,
    forget,
    linked_records,
    trusted_identifiers,
)
from tests.patients.conftest import CLINIC_ID, MRN, SSN, patient
from tests.utils import NOW

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


# -- admins' decisions -----------------------------------------------------------------------
def _decision(a: str, b: str, same: bool, by: str = "admin-ann") -> Decision:
    return Decision(PatientRecord.parse(a), PatientRecord.parse(b), same, by, NOW, "checked")


def _ids(store, key: str) -> list[str]:
    return [link.record.key for link in linked_records(store, PatientRecord.parse(key), TRUSTED)]


def test_same_person_decision_links_records_identifiers_miss(store):
    """z9 shares no trusted identifier; an admin's link joins it, and through it nothing else."""
    assert _ids(store, "lab/z9") == ["lab/z9"]
    decide(store, _decision("lab/z9", "ehr/p1", True))
    assert _ids(store, "lab/z9") == ["lab/z9", "ehr/p1", "clinic/c7", "lab/q3"]
    links = linked_records(store, PatientRecord("ehr", "p1"), TRUSTED)
    assert [lk.record.key for lk in links] == ["ehr/p1", "lab/z9", "clinic/c7", "lab/q3"]
    link = links[1]
    assert link.reason == "linked by admin-ann on 2026-11-26 as the same person as ehr/Patient/p1"
    assert link.via == PatientRecord("ehr", "p1") and link.system is None


def test_different_persons_decision_cuts_the_identifier_link(store):
    """Separating c7 from q3 cuts the clinic-id link: p1 keeps c7 but no longer reaches q3;
    forgetting the decision brings it back."""
    decide(store, _decision("lab/q3", "clinic/c7", False))
    assert _ids(store, "ehr/p1") == ["ehr/p1", "clinic/c7"]
    assert _ids(store, "lab/q3") == ["lab/q3"]
    assert forget(store, PatientRecord("clinic", "c7"), PatientRecord("lab", "q3")) is True
    assert forget(store, PatientRecord("clinic", "c7"), PatientRecord("lab", "q3")) is False
    assert _ids(store, "ehr/p1") == ["ehr/p1", "clinic/c7", "lab/q3"]


def test_separation_cuts_only_its_own_edge(store):
    """p1-q3 separated, but p1 reaches q3 through c7: q3 still shows, explained by its path."""
    decide(store, _decision("ehr/p1", "lab/q3", False))
    links = linked_records(store, PatientRecord("ehr", "p1"), TRUSTED)
    assert [link.record.key for link in links] == ["ehr/p1", "clinic/c7", "lab/q3"]
    assert links[2].via == PatientRecord("clinic", "c7")


def test_a_later_decision_replaces_an_earlier_one(store):
    """One decision per pair, whichever way round it is given."""
    decide(store, _decision("lab/z9", "ehr/p1", True))
    decide(store, _decision("ehr/p1", "lab/z9", False, by="admin-bob"))
    assert [(d.same_person, d.by) for d in decisions(store)] == [(False, "admin-bob")]
    assert "lab/z9" not in _ids(store, "ehr/p1")


def test_decisions_need_two_records_and_keys_parse_strictly(store):
    with pytest.raises(ValueError, match="itself"):
        decide(store, _decision("ehr/p1", "ehr/p1", True))
    for bad in ("p1", "/p1", "ehr/", "ehr/p/1"):
        with pytest.raises(ValueError, match="SOURCE/PATIENT_ID"):
            PatientRecord.parse(bad)


def test_decision_about_a_record_no_longer_stored_is_ignored(store):
    decide(store, _decision("ehr/p1", "lab/gone", True))
    assert _ids(store, "ehr/p1") == ["ehr/p1", "clinic/c7", "lab/q3"]
