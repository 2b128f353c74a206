"""Tests for fhir_bridge.sync.files: NDJSON and Bundle files as bounded batches, then ingest."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.sync.files import (
    UnreadablePath,
    collect_files,
    ingest_files,
    read_batches,
)
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.service import TaskService
from tests.expected import expected_active_tasks
from tests.utils import NOW, sample


@pytest.fixture
def ingestor(store, rules) -> Ingestor:
    """An Ingestor with a fixed clock at NOW over the in-memory store."""
    return Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)


def _write_ndjson(path: Path, items: list) -> Path:
    """Write `items` as NDJSON to `path` and return it."""
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def test_ndjson_batches_are_bounded_and_split_by_type(tmp_path):
    """A mixed NDJSON file yields batches of at most the batch size, each of one type, in order."""
    patients, coverages = sample("Patient")[:7], sample("Coverage")[:3]
    path = _write_ndjson(tmp_path / "mixed.ndjson", patients + coverages)
    batches = list(read_batches(path, batch_size=3))
    assert [(b.resource_type, len(b.resources)) for b in batches] == [
        ("Patient", 3),
        ("Patient", 3),
        ("Patient", 1),
        ("Coverage", 3),
    ]
    assert [r["id"] for b in batches for r in b.resources] == [
        r["id"] for r in patients + coverages
    ]
    assert batches[-1].position == path.stat().st_size


def test_a_broken_line_is_passed_on_as_text_and_the_rest_still_reads(tmp_path):
    """A truncated line becomes a type-less item (to be quarantined); the lines around it read."""
    good = sample("Patient")[:2]
    path = tmp_path / "Patient.ndjson"
    path.write_text(
        json.dumps(good[0]) + "\n" + '{"resourceType": "Pat\n\n' + json.dumps(good[1]) + "\n",
        encoding="utf-8",
    )
    batches = list(read_batches(path))
    assert [b.resource_type for b in batches] == ["Patient", None, "Patient"]
    assert batches[1].resources == ['{"resourceType": "Pat']


def test_gzipped_ndjson_is_read(tmp_path):
    """A .ndjson.gz file reads like the plain one."""
    path = tmp_path / "Coverage.ndjson.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(c) + "\n" for c in sample("Coverage"))
    [batch] = list(read_batches(path))
    assert len(batch.resources) == len(sample("Coverage"))


@pytest.mark.parametrize("bundle_type", ["transaction", "batch", "collection", "searchset"])
def test_bundle_entries_are_read_and_deletes_skipped(tmp_path, bundle_type):
    """Every Bundle type gives its entries' resources; an entry without a resource is skipped."""
    entries = [{"resource": p} for p in sample("Patient")[:4]]
    entries.append({"request": {"method": "DELETE", "url": "Patient/gone"}})
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries}))
    [batch] = list(read_batches(path))
    assert batch.resource_type == "Patient"
    assert len(batch.resources) == 4


def test_a_json_file_that_is_not_json_is_an_error_not_a_crash(tmp_path):
    """A corrupt .json file yields one batch with an error and no resources."""
    path = tmp_path / "broken.json"
    path.write_text('{"resourceType": "Bundle", "entry": [')
    [batch] = list(read_batches(path))
    assert batch.error is not None and "not JSON" in batch.error
    assert batch.resources == []


def test_collect_files_names_every_bad_path(tmp_path):
    """Missing paths and folders without resource files are all named in one error."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnreadablePath) as caught:
        collect_files([tmp_path / "missing.ndjson", tmp_path / "empty"])
    assert "missing.ndjson" in str(caught.value) and "empty" in str(caught.value)


def test_ingesting_the_sample_folder_stores_everything_and_makes_the_expected_tasks(
    ingestor, store
):
    """The packaged NDJSON folder stores every resource and opens the predicted tasks."""
    seen: list[tuple[int, int, int]] = []
    report = ingest_files(
        ingestor, "file", [sample_data_dir()], batch_size=50, progress=lambda *a: seen.append(a)
    )
    counts = store.resource_counts("file")
    for path in sample_data_dir().glob("*.ndjson"):
        assert counts[path.stem] == len(sample(path.stem)), path.stem
    assert report.result.quarantined == 0 and report.errors == []
    assert report.result.tasks_closed == 0, "dependency order: Coverage before Appointment"
    active = {rule: n for rule, n in expected_active_tasks(NOW).items() if n}
    assert report.result.tasks_created == sum(active.values())
    assert seen[-1][0] == seen[-1][1], "progress ends at the total byte count"
    again = ingest_files(ingestor, "file", [sample_data_dir()])
    assert (again.result.stored, again.result.tasks_created) == (0, 0)


def test_bad_lines_are_quarantined_and_outcomes_counted(ingestor, store, tmp_path):
    """A broken line and a Patient born on 30 February are quarantined; OperationOutcomes are
    counted and not stored; the good resources are stored."""
    good = sample("Patient")[:3]
    bogus = good[0] | {"id": "bad-date", "birthDate": "1970-02-30"}
    path = tmp_path / "Patient.ndjson"
    path.write_text(
        "".join(json.dumps(p) + "\n" for p in [*good, bogus]) + "not json at all\n",
        encoding="utf-8",
    )
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    _write_ndjson(tmp_path / "error.ndjson", [outcome])
    report = ingest_files(ingestor, "drop", [tmp_path])
    assert (report.result.stored, report.result.quarantined, report.outcomes) == (3, 2, 1)
    assert store.list_quarantine("drop")[1] == 2
    assert store.resource_counts("drop") == {"Patient": 3}


def test_file_ingest_logs_no_phi(ingestor, tmp_path):
    """Ingesting the sample plus a broken line logs no name, birth date or identifier."""
    from structlog.testing import capture_logs

    from tests.integration.test_end_to_end import phi_values

    patients = sample("Patient")
    broken = json.dumps(patients[0])[:-40]  # a truncated line that still holds PHI
    (tmp_path / "Patient.ndjson").write_text(broken + "\n")
    with capture_logs() as logs:
        ingest_files(ingestor, "file", [sample_data_dir(), tmp_path])
    assert any(e["event"] == "resource_quarantined" for e in logs)
    text = json.dumps(logs, default=str)
    assert sorted(v for v in phi_values() if v in text) == []
