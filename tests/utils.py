"""Small helpers shared by the test modules: project paths, a fixed clock, sample data, drafts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.tasks.model import Priority, TaskDraft

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def sample(resource_type: str) -> list[dict[str, Any]]:
    """Every resource of one packaged sample NDJSON file, in file order."""
    path = sample_data_dir() / f"{resource_type}.ndjson"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def make_draft(**overrides: Any) -> TaskDraft:
    """An urgent no-show draft for Appointment a1 of main-ehr due NOW + 2 days, with `overrides`."""
    fields: dict[str, Any] = {
        "rule_id": "no-show-outreach",
        "source": "main-ehr",
        "focus_type": "Appointment",
        "focus_id": "a1",
        "focus_version": "1",
        "patient": "Patient/p1",
        "queue": "scheduling",
        "kind": "no-show-outreach",
        "title": "Reach out: check-up",
        "priority": Priority.URGENT,
        "due": NOW + timedelta(days=2),
    }
    return TaskDraft(**(fields | overrides))
