"""`fhir-bridge patients links|link|separate|forget` on a store holding two records."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_bridge.cli_patients import patients_app
from fhir_bridge.patients.identity import PatientRecord, linked_records
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.ingest import content_hash
from tests.utils import settings_file

runner = CliRunner()


@pytest.fixture
def config(tmp_path) -> Path:
    path = settings_file(tmp_path)
    store = SqliteStore(tmp_path / "b.db")
    for source, pid in (("ehr", "p1"), ("lab", "q9")):
        body = {"resourceType": "Patient", "id": pid}
        store.put_resource(source, body, content_hash(body))
    store.close()
    return path


def _linked(config: Path) -> list[str]:
    store = SqliteStore(config.parent / "b.db")
    try:
        return [lk.record.key for lk in linked_records(store, PatientRecord("ehr", "p1"), ())]
    finally:
        store.close()


def test_link_list_forget(config: Path) -> None:
    done = runner.invoke(
        patients_app, ["link", "ehr/p1", "lab/q9", "--note", "same DOB", "-c", str(config)]
    )
    assert done.exit_code == 0, done.output
    assert "are linked" in done.output
    assert _linked(config) == ["ehr/p1", "lab/q9"]
    listed = runner.invoke(patients_app, ["links", "-c", str(config)], terminal_width=200)
    assert (
        "ehr/p1" in listed.output and "same person" in listed.output and "same DOB" in listed.output
    )
    store = SqliteStore(config.parent / "b.db")
    records, _ = store.list_audit()
    store.close()
    assert sorted((r.subtype, r.action, r.patient) for r in records) == [
        ("patient-link", "U", "Patient/p1"),
        ("patient-link", "U", "Patient/q9"),
    ]
    assert all(r.agent.startswith("cli:") for r in records)
    gone = runner.invoke(patients_app, ["forget", "lab/q9", "ehr/p1", "-c", str(config)])
    assert gone.exit_code == 0 and _linked(config) == ["ehr/p1"]
    again = runner.invoke(patients_app, ["forget", "lab/q9", "ehr/p1", "-c", str(config)])
    assert again.exit_code == 1 and "no link decision" in again.output


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["link", "ehr/p1", "lab/nobody"], 1, "no Patient nobody"),
        (["separate", "ehr/p1", "ehr/p1"], 2, "two different records"),
        (["link", "p1", "lab/q9"], 2, "SOURCE/PATIENT_ID"),
    ],
)
def test_bad_arguments_say_what_is_wrong(config: Path, args, code, says) -> None:
    result = runner.invoke(patients_app, [*args, "-c", str(config)])
    assert result.exit_code == code
    assert says in result.output
    assert _linked(config) == ["ehr/p1"]
