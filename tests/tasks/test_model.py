"""Tests for fhir_bridge.tasks.model: the state machine, task identity and refresh."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from fhir_bridge.errors import IllegalTransition
from fhir_bridge.tasks.model import (
    Task,
    TaskStatus,
    allowed_transitions,
    check_transition,
    identity_key,
    task_id,
)
from tests.utils import NOW, make_draft

S = TaskStatus

ALLOWED = {
    (S.OPEN, S.IN_PROGRESS),
    (S.OPEN, S.COMPLETED),
    (S.OPEN, S.CANCELLED),
    (S.IN_PROGRESS, S.OPEN),
    (S.IN_PROGRESS, S.COMPLETED),
    (S.IN_PROGRESS, S.CANCELLED),
}
ALL_PAIRS = list(itertools.product(TaskStatus, TaskStatus))
FORBIDDEN = [pair for pair in ALL_PAIRS if pair not in ALLOWED]


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED), ids=str)
def test_allowed_transition_passes(current, target):
    """Each allowed pair passes check_transition and is listed by allowed_transitions."""
    check_transition(current, target)
    assert target.value in allowed_transitions(current)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN, ids=str)
def test_forbidden_transition_raises_with_allowed_list(current, target):
    """Each forbidden pair raises IllegalTransition listing what is allowed from `current`."""
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, target)
    expected = sorted(t.value for c, t in ALLOWED if c is current)
    assert info.value.current == current.value
    assert info.value.allowed == expected
    assert f"cannot become {target.value}" in str(info.value)


def test_transition_table_has_sixteen_pairs_six_allowed():
    """The table covers 4x4 pairs: six allowed, completed and cancelled are final."""
    assert len(ALL_PAIRS) == 16
    assert len(FORBIDDEN) == 10
    assert allowed_transitions(S.COMPLETED) == []
    assert allowed_transitions(S.CANCELLED) == []
    assert allowed_transitions(S.OPEN) == ["cancelled", "completed", "in-progress"]
    assert allowed_transitions(S.IN_PROGRESS) == ["cancelled", "completed", "open"]


def test_final_status_message_says_none():
    """Leaving a final status says no transition is allowed."""
    with pytest.raises(IllegalTransition, match=r"none \(final status\)"):
        check_transition(S.COMPLETED, S.OPEN)


def test_task_id_is_stable():
    """The same identity always gives the same 20-hex-digit id."""
    first = task_id("no-show-outreach", "main-ehr", "Appointment", "a1")
    assert first == task_id("no-show-outreach", "main-ehr", "Appointment", "a1")
    assert len(first) == 20
    int(first, 16)


@pytest.mark.parametrize(
    "other",
    [
        ("other-rule", "main-ehr", "Appointment", "a1"),
        ("no-show-outreach", "other-ehr", "Appointment", "a1"),
        ("no-show-outreach", "main-ehr", "CarePlan", "a1"),
        ("no-show-outreach", "main-ehr", "Appointment", "a2"),
    ],
    ids=["rule", "source", "type", "id"],
)
def test_task_id_differs_per_identity_part(other):
    """Changing any part of the identity changes the id."""
    assert task_id(*other) != task_id("no-show-outreach", "main-ehr", "Appointment", "a1")


def test_identity_key_is_readable():
    """The natural key reads rule|source|Type/id."""
    assert identity_key("r", "s", "Appointment", "a1") == "r|s|Appointment/a1"


def test_draft_id_ignores_version_and_content():
    """A new version or title of the same resource keeps the draft's id."""
    assert make_draft().id == make_draft(focus_version="2", title="changed").id
    assert make_draft().id == task_id("no-show-outreach", "main-ehr", "Appointment", "a1")


def test_task_from_draft_is_open_and_unassigned():
    """A new task is open, unassigned, version 1, with the draft's fields."""
    task = Task.from_draft(make_draft(), NOW)
    assert (task.status, task.assignee, task.version) == (S.OPEN, None, 1)
    assert (task.id, task.title, task.focus) == (
        make_draft().id,
        make_draft().title,
        "Appointment/a1",
    )
    assert task.created_at == task.updated_at == NOW


def test_refreshed_returns_none_when_nothing_changed():
    """A draft identical in what a coordinator sees gives no refresh."""
    assert (
        Task.from_draft(make_draft(), NOW).refreshed(make_draft(), NOW + timedelta(hours=1)) is None
    )


def test_refreshed_bumps_version_and_keeps_status():
    """A changed title refreshes the task: new title, version+1, same status and assignee."""
    later = NOW + timedelta(hours=1)
    task = Task.from_draft(make_draft(), NOW)
    new = task.refreshed(make_draft(title="Reach out: flu shot"), later)
    assert new is not None
    assert (new.title, new.version, new.updated_at) == ("Reach out: flu shot", 2, later)
    assert (new.status, new.created_at) == (task.status, NOW)
