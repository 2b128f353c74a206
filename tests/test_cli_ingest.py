"""Tests for fhir_bridge.cli_ingest: `ingest PATH...` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_bridge.cli_ingest import ingest_app
from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.store.sqlite import SqliteStore
from tests.utils import ROOT, sample, settings_file

runner = CliRunner()


@pytest.fixture
def config(tmp_path) -> Path:
    """A settings file with no sources and a store in tmp_path."""
    path = settings_file(tmp_path)
    return path


def _counts(config: Path, source: str) -> dict[str, int]:
    """Resource counts of `source` in the store the config names."""
    store = SqliteStore(config.parent / "b.db")
    try:
        return store.resource_counts(source)
    finally:
        store.close()


def test_ingest_the_sample_folder_prints_counts_and_stores_everything(config):
    """`ingest <sample folder>` exits 0, prints the counts and stores every resource."""
    result = runner.invoke(ingest_app, ["ingest", "-c", str(config), str(sample_data_dir())])
    assert result.exit_code == 0, result.output
    files = sorted(sample_data_dir().glob("*.ndjson"))
    total = sum(len(sample(p.stem)) for p in files)
    assert f"{len(files)} files: {total} received, {total} stored" in result.output
    assert sum(_counts(config, "file").values()) == total


def test_progress_bar_is_drawn_when_asked(config):
    """`--progress` draws the bar (percent and resource count) even off a terminal."""
    path = str(sample_data_dir() / "Patient.ndjson")
    result = runner.invoke(ingest_app, ["ingest", "-c", str(config), "--progress", path])
    assert result.exit_code == 0, result.output
    assert "100%" in result.output and f"{len(sample('Patient'))} resources" in result.output


def test_source_option_and_quarantine_count(config, tmp_path):
    """`--source` names the source; a quarantined resource is counted and the exit status is 0."""
    path = tmp_path / "Patient.ndjson"
    bad = sample("Patient")[0] | {"id": "bad", "birthDate": "1970-02-30"}
    path.write_text(json.dumps(sample("Patient")[1]) + "\n" + json.dumps(bad) + "\n")
    result = runner.invoke(
        ingest_app, ["ingest", "-c", str(config), "--source", "lab-drop", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "1 resources quarantined" in result.output
    assert _counts(config, "lab-drop") == {"Patient": 1}


def test_unreadable_path_exits_2_and_creates_no_store(config, tmp_path):
    """A missing path is named, the exit status is 2 and no database file is created."""
    result = runner.invoke(ingest_app, ["ingest", "-c", str(config), str(tmp_path / "nope.ndjson")])
    assert result.exit_code == 2
    assert "nope.ndjson" in result.output and "does not exist" in result.output
    assert not (tmp_path / "b.db").exists()


def test_a_corrupt_json_file_exits_2_after_ingesting_the_rest(config, tmp_path):
    """A .json file that is not JSON is reported (exit 2); the NDJSON beside it is stored."""
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "Coverage.ndjson").write_text(json.dumps(sample("Coverage")[0]) + "\n")
    result = runner.invoke(ingest_app, ["ingest", "-c", str(config), str(tmp_path)])
    assert result.exit_code == 2
    assert "unreadable: broken.json" in result.output
    assert _counts(config, "file") == {"Coverage": 1}


def test_export_of_an_unknown_source_exits_2(config):
    """`export nope` names the problem and exits 2 without touching any server."""
    result = runner.invoke(ingest_app, ["export", "nope", "-c", str(config)])
    assert result.exit_code == 2
    assert "no source named 'nope'" in result.output


@pytest.mark.integration
def test_export_command_stores_what_the_server_holds_and_resumes_nothing(sekmet_factory, tmp_path):
    """`export` against a SEKMET holding two patients stores both; a second export sends
    `_since` and receives nothing new."""
    import httpx

    url = sekmet_factory().base_url
    for patient in sample("Patient")[:2]:
        assert httpx.put(f"{url}/Patient/{patient['id']}", json=patient).status_code == 201
    path = tmp_path / "bridge.yaml"
    path.write_text(
        f"sources: [{{name: ehr, base_url: '{url}', resource_types: [Patient]}}]\n"
        f"storage: {{path: {tmp_path / 'b.db'}}}\n"
        f"mappings_dir: {ROOT / 'mappings'}\nprofiles_dir: {ROOT / 'profiles'}\n"
    )
    args = ["export", "-c", str(path), "--max-wait", "0.2"]
    first = runner.invoke(ingest_app, args)
    assert first.exit_code == 0, first.output
    assert "ehr $export (1 files): 2 received, 2 stored" in first.output
    assert _counts(path, "ehr") == {"Patient": 2}
    second = runner.invoke(ingest_app, args)
    assert second.exit_code == 0, second.output
    assert "(0 files): 0 received" in second.output
