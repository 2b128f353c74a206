"""Readable text of FHIR data types, shared by the patient views."""

from __future__ import annotations

from typing import Any


def concept_text(concept: Any) -> str | None:
    """The readable text of a CodeableConcept: its text, else the first coding display/code."""
    if not isinstance(concept, dict):
        return None
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return None
