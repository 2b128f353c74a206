"""Small helpers shared by the test modules: project paths, a fixed clock, sample data, drafts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

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


def settings_file(folder: Path, extra: str = "") -> Path:
    """folder/bridge.yaml: a SQLite store at folder/b.db, the default mappings and profiles,
    then `extra` YAML lines."""
    path = folder / "bridge.yaml"
    path.write_text(
        f"storage: {{path: {folder / 'b.db'}}}\n"
        f"mappings_dir: {ROOT / 'mappings'}\nprofiles_dir: {ROOT / 'profiles'}\n{extra}"
    )
    return path


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` every 50 ms; fail the test with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds} s waiting for {what}", pytrace=False)
