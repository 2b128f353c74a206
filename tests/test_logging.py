"""Tests for fhir_bridge.logging: PHI redaction and JSON output."""

from __future__ import annotations

import json
import logging
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


# -- redaction beyond top-level keys ---------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["family_name", "given", "dateOfBirth", "birth-date", "phoneNumber", "SSN", "mrn", "Email"],
)
def test_phi_key_spellings_are_redacted(key):
    """snake_case, camelCase and kebab-case spellings of PHI keys are all redacted."""
    assert redact_phi(None, "info", {key: "Roe"}) == {key: REDACTED}


def test_nested_dicts_and_lists_are_redacted():
    """PHI keys are found inside nested dicts and lists; other nested values are kept."""
    event = redact_phi(
        None,
        "info",
        {
            "ctx": {
                "resource_type": "Patient",
                "who": {"family": "Roe", "given": ["Jane"]},
                "items": [{"birthDate": "1970-02-03", "status": "active"}],
            }
        },
    )
    assert event == {
        "ctx": {
            "resource_type": "Patient",
            "who": {"family": REDACTED, "given": REDACTED},
            "items": [{"birthDate": REDACTED, "status": "active"}],
        }
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "GET https://ehr.example/fhir/Patient?family=Roe&birthdate=1970-02-03 failed",
            "GET https://ehr.example/fhir/Patient failed",
        ),
        ("search Patient?name=Roe gave 3", "search Patient gave 3"),
        (
            "family=Roe&given=Jane&_count=10",
            f"family={REDACTED}&given={REDACTED}&_count=10",
        ),
        ("identifier:exact=999-12-3456", f"identifier:exact={REDACTED}"),
        ("GET Patient on source ehr: HTTP 503", "GET Patient on source ehr: HTTP 503"),
        ("cursor ge2026-01-01T00:00:00Z", "cursor ge2026-01-01T00:00:00Z"),
    ],
)
def test_query_strings_and_search_values_leave_every_string(value, expected):
    """Any string value loses URL query strings and person-bearing search values, nested too."""
    event = redact_phi(None, "info", {"message": value, "nested": [{"error": value}]})
    assert event == {"message": expected, "nested": [{"error": expected}]}


def test_structlog_fields_are_left_alone():
    """event, level, timestamp and component pass through (event is only scrubbed of queries)."""
    fields = {"event": "page_synced", "level": "info", "timestamp": "t", "component": "sync"}
    assert redact_phi(None, "info", dict(fields)) == fields


def test_standard_library_lines_are_redacted_too(restore_structlog):
    """A stdlib logger (httpx, uvicorn) goes through the same JSON renderer and redaction."""
    from tests.logcapture import json_log_lines

    with json_log_lines("INFO") as logs:
        logging.getLogger("some.library").warning(
            "HTTP Request: GET http://ehr/fhir/Patient?family=Roe&birthdate=1970-02-03"
        )
    (line,) = logs.lines
    assert line["event"] == "HTTP Request: GET http://ehr/fhir/Patient"
    assert (line["level"], line["logger"]) == ("warning", "some.library")
    assert "Roe" not in logs.text


def test_exception_text_is_scrubbed_but_frames_keep_their_names(restore_structlog):
    """A traceback's message loses its query string; frame function names stay readable."""
    from tests.logcapture import json_log_lines

    with json_log_lines("INFO") as logs:
        try:
            raise ValueError("bad answer for Patient?family=Roe")
        except ValueError:
            get_logger("test").exception("failed")
    (line,) = logs.lines
    exc = line["exception"][0]
    assert exc["exc_value"] == "bad answer for Patient"
    assert exc["frames"][0]["name"] == "test_exception_text_is_scrubbed_but_frames_keep_their_names"
    assert "Roe" not in logs.text
