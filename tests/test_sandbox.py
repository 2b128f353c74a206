"""The SEKMET sandbox: install/start/stop, seeding the packaged sample data, and the test data."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_bridge.sandbox import (
    Sekmet,
    default_venv,
    ensure_installed,
    free_port,
    load_ndjson,
    sample_data_dir,
    sample_files,
    seed,
)
from fhir_bridge.sandbox.sekmet import _deep_merge
from tests.sandbox_fixtures import seeded_server
from tests.utils import sample


def _documented_counts() -> dict[str, int]:
    """The per-type table of src/fhir_bridge/sandbox/data/synthea/README.md (`| Type | n |`)."""
    table = re.findall(r"^\| ([A-Z][A-Za-z]+) \| (\d+) \|$", _readme(), flags=re.MULTILINE)
    return {rtype: int(n) for rtype, n in table}


def _readme() -> str:
    return (sample_data_dir() / "README.md").read_text(encoding="utf-8")


# The packaged sample as documented in its README.
DOCUMENTED_COUNTS = _documented_counts()
HL7_DIR = Path(__file__).parent / "data" / "hl7"


def _line_counts() -> dict[str, int]:
    """Non-blank lines per NDJSON file, counted without the package's own loader."""
    counts = {}
    for path in sorted(sample_data_dir().glob("*.ndjson")):
        with path.open(encoding="utf-8") as handle:
            counts[path.stem] = sum(1 for line in handle if line.strip())
    return counts


def _ids_in_file(rtype: str) -> set[str]:
    """The ids of one sample NDJSON file."""
    return {resource["id"] for resource in sample(rtype)}


def _total(client: httpx.Client, rtype: str) -> int:
    resp = client.get(f"/{rtype}", params={"_summary": "count"})
    assert resp.status_code == 200, resp.text
    total = resp.json()["total"]
    assert isinstance(total, int)
    return total


def _page_ids(client: httpx.Client, rtype: str, count: int) -> list[str]:
    ids: list[str] = []
    url: str | None = f"/{rtype}?_count={count}"
    while url:
        bundle: dict[str, Any] = client.get(url).json()
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return ids


# ---------------------------------------------------------------- without a server


def test_packaged_data_matches_readme():
    """The packaged NDJSON files hold the types and counts the data README documents."""
    assert _line_counts() == DOCUMENTED_COUNTS
    assert [p.stem for p in sample_files()] == sorted(DOCUMENTED_COUNTS)
    total = re.search(r"^\| \*\*total\*\* \| \*\*(\d+)\*\* \|$", _readme(), re.MULTILINE)
    assert total is not None and int(total.group(1)) == sum(_line_counts().values())


def test_load_ndjson_yields_every_line():
    """load_ndjson yields one resource per line, each with resourceType and id."""
    resources = list(load_ndjson(sample_files()))
    assert len(resources) == sum(_line_counts().values())
    assert all(r["resourceType"] and r["id"] for r in resources)


def test_load_ndjson_names_file_and_line(tmp_path):
    """A broken NDJSON line is reported with file name and line number."""
    bad = tmp_path / "Patient.ndjson"
    bad.write_text('{"resourceType": "Patient", "id": "a"}\n\n{not json\n')
    with pytest.raises(ValueError, match=r"Patient\.ndjson:3"):
        list(load_ndjson([bad]))


def test_hl7_examples_present():
    """The official HL7 R4 examples for the five core types are in tests/data/hl7."""
    expected = {
        "Appointment": 3,
        "CarePlan": 11,
        "CoverageEligibilityRequest": 2,
        "MedicationStatement": 7,
        "Patient": 22,
    }
    found = {d.name: len(list(d.glob("*.json"))) for d in HL7_DIR.iterdir() if d.is_dir()}
    assert found == expected
    for path in HL7_DIR.glob("*/*.json"):
        assert json.loads(path.read_text())["resourceType"] == path.parent.name


def test_default_venv_env_override(monkeypatch, tmp_path):
    """FHIR_BRIDGE_SEKMET_VENV wins; else the project's .fhirpeer folder; else the user cache."""
    monkeypatch.setenv("FHIR_BRIDGE_SEKMET_VENV", str(tmp_path / "v"))
    assert default_venv() == tmp_path / "v"
    monkeypatch.delenv("FHIR_BRIDGE_SEKMET_VENV")
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname='x'\n")
    monkeypatch.chdir(project / "sub")
    assert default_venv() == project.resolve() / ".fhirpeer" / "sekmet-venv"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_venv() == tmp_path / "home" / ".cache" / "fhir-bridge" / "sekmet-venv"


def test_settings_merge_extra_settings(tmp_path):
    """extra_settings merge into the generated settings; bearer auth sets the token."""
    server = Sekmet(
        auth="bearer",
        token="t0k",
        extra_settings={"simulator": {"enabled": True, "auto": ["Appointment"]}, "x": [1]},
    )
    settings = server.settings(8123, tmp_path)
    assert settings["base_url"] == "http://127.0.0.1:8123/fhir"
    assert settings["host"] == "127.0.0.1"
    assert settings["db_path"] == ":memory:"
    assert settings["validation"] == {"inbound": "strict"}
    assert settings["server_auth"] == {"types": ["bearer"], "tokens": ["t0k"]}
    assert settings["simulator"] == {"enabled": True, "auto": ["Appointment"]}
    assert settings["x"] == [1]
    assert _deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        Sekmet(extra_settings={"host": "0.0.0.0"}).settings(8123, tmp_path)


def test_base_url_before_start():
    """base_url is not available before start()."""
    with pytest.raises(RuntimeError, match="start"):
        _ = Sekmet().base_url


# ---------------------------------------------------------------- with SEKMET


@pytest.mark.integration
def test_ensure_installed_is_a_quick_no_op(sekmet_url):
    """With SEKMET installed, ensure_installed returns the executable at once."""
    started = time.monotonic()
    exe = ensure_installed(default_venv())
    assert time.monotonic() - started < 1.0
    assert exe.name == "sekmet"
    assert os.access(exe, os.X_OK)


@pytest.mark.integration
def test_session_server_answers_metadata(sekmet_url):
    """The session server is on 127.0.0.1 and serves an R4 CapabilityStatement."""
    assert sekmet_url.startswith("http://127.0.0.1:")
    assert sekmet_url.endswith("/fhir")
    cap = httpx.get(f"{sekmet_url}/metadata").json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"


@pytest.mark.integration
def test_seeded_server_holds_every_ndjson_line(sekmet_factory):
    """A seeded server holds exactly as many resources per type as the NDJSON files have lines."""
    base = seeded_server(sekmet_factory)
    expected = _line_counts()
    with httpx.Client(base_url=base) as client:
        assert {rtype: _total(client, rtype) for rtype in expected} == expected
        for rtype in ("Patient", "Appointment"):
            ids = _page_ids(client, rtype, count=17)
            assert len(ids) == len(set(ids)) == expected[rtype]
            assert set(ids) == _ids_in_file(rtype)


@pytest.mark.integration
def test_seed_is_idempotent(sekmet_factory):
    """Seeding twice keeps the counts and only adds a version to each resource."""
    server = sekmet_factory()
    resources = list(load_ndjson(sample_files()))
    seen: list[int] = []
    assert seed(server.base_url, resources, batch=100, progress=seen.append) == len(resources)
    assert seen[-1] == len(resources)
    assert seen == sorted(seen)
    assert len(seen) == -(-len(resources) // 100)
    assert seed(server.base_url, resources) == len(resources)
    expected = _line_counts()
    with httpx.Client(base_url=server.base_url) as client:
        assert {rtype: _total(client, rtype) for rtype in expected} == expected
        patient_id = next(iter(_ids_in_file("Patient")))
        assert client.get(f"/Patient/{patient_id}").json()["meta"]["versionId"] == "2"


@pytest.mark.integration
def test_seed_raises_with_operation_outcome(sekmet_factory):
    """A rejected transaction raises RuntimeError carrying the server's OperationOutcome text."""
    server = sekmet_factory()
    good = {"resourceType": "Patient", "id": "ok-1", "birthDate": "1970-01-01"}
    bad = {"resourceType": "Patient", "id": "bad-1", "birthDate": "1970-13-01"}
    with pytest.raises(RuntimeError, match=r"HTTP 400.*birthDate"):
        seed(server.base_url, [good, bad])
    # the transaction was rolled back as a whole
    assert httpx.get(f"{server.base_url}/Patient/ok-1").status_code == 404


@pytest.mark.integration
def test_hl7_examples_are_accepted(sekmet_url):
    """Every HL7 example in tests/data/hl7 is stored by SEKMET's strict validation."""
    files = sorted(HL7_DIR.glob("*/*.json"))
    resources = [json.loads(p.read_text()) for p in files]
    assert seed(sekmet_url, resources, batch=50) == len(files)


@pytest.mark.integration
def test_bearer_auth(sekmet_factory):
    """With auth='bearer' the server refuses requests without the token and seeds with it."""
    server = sekmet_factory(auth="bearer", token="s3cret")
    assert server.headers == {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{server.base_url}/Patient").status_code == 401
    patient = {"resourceType": "Patient", "id": "p1"}
    assert seed(server.base_url, [patient], token="s3cret") == 1
    resp = httpx.get(f"{server.base_url}/Patient/p1", headers=server.headers)
    assert resp.status_code == 200


@pytest.mark.integration
def test_stop_terminates_and_is_idempotent(tmp_path):
    """stop() ends the server process, keeps a given run_dir and may be called again."""
    server = Sekmet(run_dir=tmp_path / "run", port=free_port())
    with server:
        pid = server.pid
        base = server.base_url
        assert pid is not None
        assert server.running
        assert (tmp_path / "run" / "settings.yaml").is_file()
    assert not server.running
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/metadata", timeout=2)
    assert (tmp_path / "run" / "server.log").is_file()


@pytest.mark.integration
def test_port_in_use_is_refused(sekmet_factory):
    """Starting on a port another server already holds fails instead of reusing that server."""
    busy = sekmet_factory().port
    with pytest.raises(RuntimeError, match="already in use"):
        Sekmet(port=busy).start()


@pytest.mark.integration
def test_temporary_run_dir_is_removed():
    """A run folder the server created itself is deleted by stop()."""
    server = Sekmet()
    server.start()
    run_dir = server.run_dir
    assert run_dir is not None
    assert (run_dir / "server.log").is_file()
    server.stop()
    assert not run_dir.exists()


@pytest.mark.integration
def test_start_failure_shows_server_log():
    """A server that cannot start raises RuntimeError quoting the end of server.log."""
    server = Sekmet(extra_settings={"validation": {"inbound": "bogus"}})
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code.*inbound"):
            server.start(timeout=30)
        assert not server.running
    finally:
        server.stop()
