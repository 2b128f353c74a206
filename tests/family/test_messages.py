"""Message catalogues (mappings/messages/): language fallback, optional parts, dates and
plain words, and a broken catalogue refusing the mapping folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fhir_bridge.mapping.engine import compile_folder
from fhir_bridge.mapping.messages import Messages
from tests.utils import ROOT

MESSAGES = Messages.load(ROOT / "mappings" / "messages")


def test_languages_fall_back_to_primary_subtag_then_english():
    """es-MX uses es; a language without a catalogue (and none) gets English."""
    values = {"patient": "Ana", "medicine": "Naproxen sodium 220 MG Oral Tablet"}
    assert (
        MESSAGES.render("medication-stopped", "es-MX", values)
        == "Ana dejó de tomar Naproxen sodium."
    )
    english = "Ana has stopped taking Naproxen sodium."
    assert MESSAGES.render("medication-stopped", "fr", values) == english
    assert MESSAGES.render("medication-stopped", None, values) == english


def test_optional_parts_dates_and_words():
    """A [part] whose placeholder is empty goes; dateTimes and dates become words; plain
    words are translated."""
    values = {"patient": "Ana", "visit": "check-up", "when": "2027-05-03T10:00:00+02:00"}
    assert (
        MESSAGES.render("appointment-booked", "en", values | {"clinician": "Dr. Chen"})
        == "Ana's check-up with Dr. Chen is booked for Monday 3 May at 10:00."
    )
    assert (
        MESSAGES.render("appointment-booked", "es", values | {"when": "2027-05-03"})
        == "La revisión de Ana está reservada para el lunes 3 de mayo."
    )


def test_unknown_keys_and_bad_arguments_are_errors():
    """A key no catalogue has, or name/value arguments that do not pair up, raise."""
    with pytest.raises(ValueError, match="no message 'nope'"):
        MESSAGES.render("nope", "en", {})
    with pytest.raises(ValueError, match="name/value pairs"):
        MESSAGES.functions()["message"]["fn"]([], ["medication-stopped"], ["en"], ["patient"])


def test_a_broken_catalogue_refuses_the_folder(tmp_path: Path):
    """A catalogue missing its month names is a problem naming the file; no rules load."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    (folder / "messages" / "de.yaml").write_text("language: de\nmessages: {x: y}\n")
    rules, problems = compile_folder(folder)
    assert rules is None
    assert [p.file for p in problems] == [str(folder / "messages" / "de.yaml")]
    assert "not a message catalogue" in problems[0].message
