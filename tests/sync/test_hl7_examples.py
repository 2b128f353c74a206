"""The official HL7 R4 examples of the five types through ingest, with and without profiles."""

from __future__ import annotations

import json

import pytest

from fhir_bridge.mapping import RuleSet
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync.ingest import Ingestor, ProfilePolicy
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.profiles import ProfileSet
from tests.utils import NOW, ROOT

TYPES = ("Patient", "CarePlan", "Appointment", "MedicationStatement", "CoverageEligibilityRequest")


def examples() -> list[dict]:
    """Every committed HL7 example of the five types."""
    folder = ROOT / "tests" / "data" / "hl7"
    return [json.loads(p.read_text()) for t in TYPES for p in sorted((folder / t).glob("*.json"))]


@pytest.fixture
def ingestor(store) -> Ingestor:
    """An ingestor where source 'core' checks structure and core bindings, and source
    'profiled' also requires the five bridge profiles."""
    profiles = ProfileSet.load(ROOT / "profiles")
    urls = tuple(p.url for p in profiles.profiles)
    return Ingestor(
        store,
        RuleSet.load(ROOT / "mappings"),
        TaskService(store, lambda: NOW, []),
        lambda: NOW,
        profile_set=profiles,
        policies={"core": ProfilePolicy(), "profiled": ProfilePolicy(urls, quarantine=True)},
    )


def test_every_example_ingests_under_the_core_checks(ingestor: Ingestor, store: SqliteStore):
    """All 45 official examples parse and meet the core required bindings: none quarantined."""
    docs = examples()
    assert len(docs) == 45
    result = ingestor.ingest("core", docs)
    assert (result.stored, result.quarantined) == (45, 0)
    assert sum(store.resource_counts("core").values()) == 45


def test_profiled_source_quarantines_exactly_the_violators_with_their_reasons(
    ingestor: Ingestor, store: SqliteStore
):
    """Under the bridge profiles an example is quarantined iff the profile check finds an
    error, and the stored reasons are those errors, first issue an error of that type."""
    docs = examples()
    profiles = ingestor.profile_set
    assert profiles is not None
    urls = ingestor.policies["profiled"].profiles
    violators = {
        (d["resourceType"], d["id"]): [
            i for i in profiles.check_all(d, urls) if i["severity"] == "error"
        ]
        for d in docs
    }
    violators = {k: v for k, v in violators.items() if v}
    assert 0 < len(violators) < len(docs)
    result = ingestor.ingest("profiled", docs)
    assert result.quarantined == len(violators)
    assert result.stored == len(docs) - len(violators)
    entries, total = store.list_quarantine("profiled", limit=100)
    assert total == len(violators)
    for entry in entries:
        errors = violators[(entry.resource_type, entry.resource_id)]
        assert entry.issues[0]["severity"] == "error"
        assert entry.issues[0]["expression"].startswith(entry.resource_type)
        stored_errors = [i for i in entry.issues if i["severity"] == "error"]
        assert stored_errors == errors


def test_warn_policy_stores_violators(store: SqliteStore):
    """A source set to warn stores a resource that breaks its profile."""
    profiles = ProfileSet.load(ROOT / "profiles")
    ingestor = Ingestor(
        store,
        RuleSet.load(ROOT / "mappings"),
        TaskService(store, lambda: NOW, []),
        lambda: NOW,
        profile_set=profiles,
        policies={"lenient": ProfilePolicy(tuple(p.url for p in profiles.profiles), False)},
    )
    result = ingestor.ingest("lenient", examples())
    assert (result.stored, result.quarantined) == (45, 0)
