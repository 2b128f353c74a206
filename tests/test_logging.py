"""Tests for fhir_bridge.logging: PHI redaction and JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from fhir_bridge.logging import REDACTED, configure_logging, get_logger, redact_phi

PHI = {
    "name": "Jane Roe",
    "birthDate": "1970-02-03",
    "address": "12 Secret Lane",
    "telecom": "+1 555 0100",
    "identifier": "SSN 999-12-3456",
    "text": "<div>Jane Roe, diabetic</div>",
    "note": "patient prefers evenings",
    "query": "family=Roe&birthdate=1970-02-03",
    "params": {"name": "Roe"},
    "body": {"resourceType": "Patient"},
    "email": "jane@example.org",
}


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Put structlog back to its defaults after a test that configures it."""
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("key", sorted(PHI))
def test_phi_keys_are_redacted(key):
    """A value under a PHI-bearing key is replaced with the redaction marker."""
    event = redact_phi(None, "info", {"event": "x", key: PHI[key]})
    assert event == {"event": "x", key: REDACTED}


def test_phi_key_match_ignores_case():
    """BirthDate, NAME and Note are redacted whatever their case."""
    event = redact_phi(None, "info", {"BirthDate": "1970", "NAME": "Roe", "Note": "n"})
    assert set(event.values()) == {REDACTED}


def test_url_keys_lose_their_query_string():
    """Keys ending in url keep the URL without its query string."""
    event = redact_phi(
        None,
        "info",
        {
            "url": "https://ehr.example/fhir/Patient?family=Roe&birthdate=1970-02-03",
            "next_url": "https://ehr.example/fhir?_getpages=abc&name=Roe",
            "base_URL": "https://ehr.example/fhir",
        },
    )
    assert event == {
        "url": "https://ehr.example/fhir/Patient",
        "next_url": "https://ehr.example/fhir",
        "base_URL": "https://ehr.example/fhir",
    }


def test_other_keys_are_kept():
    """Operational fields (type, id, counts, status) pass through unchanged."""
    fields = {"event": "page_stored", "resource_type": "Patient", "resource_id": "p1", "n": 3}
    assert redact_phi(None, "info", dict(fields)) == fields


def test_json_lines_without_phi(capsys, restore_structlog):
    """configure_logging(json=True) prints one JSON object per line with no PHI values."""
    configure_logging("INFO", json=True)
    log = get_logger("test")
    log.info("patient_seen", resource_type="Patient", resource_id="p1", **PHI)
    log.debug("hidden_below_level", name="Jane Roe")
    log.warning("fetch_failed", url="https://ehr.example/fhir/Patient?name=Roe", status=503)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["event"] for line in lines] == ["patient_seen", "fetch_failed"]
    first, second = lines
    assert (first["level"], first["component"], first["resource_id"]) == ("info", "test", "p1")
    assert first["name"] == REDACTED
    assert "timestamp" in first
    assert second["url"] == "https://ehr.example/fhir/Patient"
    for value in ["Jane Roe", "1970-02-03", "12 Secret Lane", "999-12-3456", "Roe", "evenings"]:
        assert value not in err


def test_json_exceptions_are_structured(capsys, restore_structlog):
    """An exception logged in JSON mode becomes a structured traceback, still redacted."""
    configure_logging("INFO", json=True)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("test").exception("failed", note="Jane Roe")
    (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert line["note"] == REDACTED
