"""Queue operations a coordinator performs: claim, change status, release.

Each operation is one `Store.update_task` call: the state machine runs inside the store's
transaction, and the FHIR Task mirror write is queued in the outbox in that same
transaction, so a change is never applied without its write-back, nor the reverse. A
coordinator's change to a status with `on_status` actions in its rule queues one more entry
per action, after the mirror, in the same transaction (the task's entries go out in order).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from fhir_bridge.errors import IllegalTransition, QueueError, TaskConflict
from fhir_bridge.store.base import DueCounts, Store
from fhir_bridge.tasks.model import (
    MIRROR_ACTION,
    OutboxDraft,
    Task,
    TaskChange,
    TaskEvent,
    TaskStatus,
    allowed_transitions,
    check_transition,
)

Clock = Callable[[], datetime]
# (rule id, status) -> the rule's `on_status` actions for that status, as plain dicts
# ({"update_focus": {...}}); the runtime looks them up in the rules in force.
ActionsFor = Callable[[str, TaskStatus], Sequence[dict[str, Any]]]
# Entries a coordinator's status change queues after its rule's actions (the family webhook,
# writeback/webhook.py): given the changed task, the entries queued so far and the actor.
# Called inside the store's transaction: it must neither read nor write the store.
FollowUps = Callable[[Task, tuple[OutboxDraft, ...], str], Sequence[OutboxDraft]]
BRIDGE = "bridge"  # the actor recorded for changes the bridge makes on its own


def _no_actions(rule_id: str, status: TaskStatus) -> Sequence[dict[str, Any]]:
    return ()


def action_drafts(
    task: Task, actions: Sequence[dict[str, Any]], coordinator: str, note: str | None
) -> tuple[OutboxDraft, ...]:
    """One outbox entry per `on_status` action: `update_focus` becomes `update-focus`, its
    body the payload's `spec`, with the coordinator and note the action may read."""
    drafts = []
    for action in actions:
        ((kind, spec),) = action.items()
        payload = {
            "spec": spec,
            "rule_id": task.rule_id,
            "status": task.status.value,
            "focus": task.focus,
            "coordinator": coordinator,
            "note": note,
        }
        drafts.append(OutboxDraft(task.id, task.source, kind.replace("_", "-"), payload))
    return tuple(drafts)


def snapshot(task: Task) -> dict[str, Any]:
    """The part of a task the mirror shows, as stored in an outbox payload (JSON-safe)."""
    return {
        "id": task.id,
        "status": task.status.value,
        "kind": task.kind,
        "title": task.title,
        "priority": task.priority.value,
        "focus": task.focus,
        "patient": task.patient,
        "assignee": task.assignee,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
        "due": task.due.isoformat() if task.due else None,
        "note": None,
    }


class TaskService:
    """Coordinator actions on tasks, with history and write-back.

    :param writeback_sources: names of the sources that accept write-back; changes to tasks
        of other sources are kept locally only.
    :param actions_for: the `on_status` actions of a rule for a status (none by default).
    :param follow_ups: more entries to queue after those actions (none by default).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        writeback_sources: Collection[str],
        actions_for: ActionsFor = _no_actions,
        follow_ups: FollowUps | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.writeback_sources = frozenset(writeback_sources)
        self.actions_for = actions_for
        self.follow_ups = follow_ups

    def _change(
        self,
        task: Task,
        *,
        actor: str,
        action: str,
        note: str | None,
        expected_version: int | None,
        **changes: Any,
    ) -> TaskChange:
        if expected_version is not None and task.version != expected_version:
            raise TaskConflict(
                f"task {task.id} is at version {task.version}, not {expected_version}: "
                "it changed since you read it"
            )
        now = self.clock()
        new = replace(task, **changes, updated_at=now, version=task.version + 1)
        event = TaskEvent(
            task.id,
            now,
            actor,
            action,
            task.status.value,
            new.status.value,
            {"note": note} if note else {},
        )
        outbox: tuple[OutboxDraft, ...] = ()
        if task.source in self.writeback_sources:
            payload = snapshot(new) | {"note": note}
            outbox = (OutboxDraft(task.id, task.source, MIRROR_ACTION, payload),)
            # Only a coordinator's change runs the rule's actions: when the bridge closes a
            # task, the EHR has already moved and there is nothing of ours to write.
            if actor != BRIDGE and new.status is not task.status:
                actions = self.actions_for(task.rule_id, new.status)
                outbox += action_drafts(new, actions, actor, note)
                if self.follow_ups is not None:
                    outbox += tuple(self.follow_ups(new, outbox, actor))
        return TaskChange(new, event, outbox)

    def claim(self, task_id: str, coordinator: str, expected_version: int | None = None) -> Task:
        """Take an open task: it becomes in-progress and assigned to `coordinator`.

        :raises TaskConflict: another coordinator holds it.
        :raises IllegalTransition: the task is completed or cancelled.
        """

        def change(task: Task) -> TaskChange:
            if task.status is TaskStatus.IN_PROGRESS:
                if task.assignee == coordinator:
                    raise TaskConflict(f"task {task.id} is already claimed by you")
                raise TaskConflict(f"task {task.id} is already claimed by another coordinator")
            check_transition(task.status, TaskStatus.IN_PROGRESS)
            return self._change(
                task,
                actor=coordinator,
                action="claim",
                note=None,
                expected_version=expected_version,
                status=TaskStatus.IN_PROGRESS,
                assignee=coordinator,
            )

        return self.store.update_task(task_id, change)

    def auto_close(self, task_id: str, status: TaskStatus, reason: str) -> Task:
        """Close an active task because its resource changed (the bridge acts, with a reason)."""

        def change(task: Task) -> TaskChange:
            check_transition(task.status, status)
            return self._change(
                task,
                actor=BRIDGE,
                action="auto-closed",
                note=reason,
                expected_version=None,
                status=status,
            )

        return self.store.update_task(task_id, change)

    def reopen(self, task_id: str, reason: str) -> Task:
        """Reopen a closed task because its resource changed again (a system move, not a
        coordinator's: the state machine's final states bind coordinators only)."""

        def change(task: Task) -> TaskChange:
            return self._change(
                task,
                actor=BRIDGE,
                action="reopened",
                note=reason,
                expected_version=None,
                status=TaskStatus.OPEN,
                assignee=None,
            )

        return self.store.update_task(task_id, change)

    def change_status(
        self,
        task_id: str,
        status: TaskStatus,
        coordinator: str,
        *,
        note: str | None = None,
        expected_version: int | None = None,
    ) -> Task:
        """Move a task to `status` (moving back to open releases it).

        :raises IllegalTransition: the state machine forbids it (the error lists what is allowed).
        """

        def change(task: Task) -> TaskChange:
            check_transition(task.status, status)
            assignee = None if status is TaskStatus.OPEN else (task.assignee or coordinator)
            return self._change(
                task,
                actor=coordinator,
                action="status",
                note=note,
                expected_version=expected_version,
                status=status,
                assignee=assignee,
            )

        return self.store.update_task(task_id, change)

    def release(self, task_id: str, coordinator: str, expected_version: int | None = None) -> Task:
        """Give back a task you hold: it becomes open and unassigned.

        :raises TaskConflict: someone else holds it.
        :raises IllegalTransition: it is not in progress (the error lists what is allowed).
        """

        def change(task: Task) -> TaskChange:
            if task.status is TaskStatus.IN_PROGRESS and task.assignee != coordinator:
                raise TaskConflict(f"task {task.id} is held by another coordinator")
            if task.status is TaskStatus.OPEN:
                raise IllegalTransition(
                    f"task {task.id} is open: there is nothing to release",
                    current=task.status.value,
                    allowed=allowed_transitions(task.status),
                )
            check_transition(task.status, TaskStatus.OPEN)
            return self._change(
                task,
                actor=coordinator,
                action="release",
                note=None,
                expected_version=expected_version,
                status=TaskStatus.OPEN,
                assignee=None,
            )

        return self.store.update_task(task_id, change)

    def assign(
        self,
        task_id: str,
        coordinator: str,
        assignee: str,
        expected_version: int | None = None,
    ) -> Task:
        """Give an active task to `assignee` (its status stays); the history keeps who had it.

        :raises TaskConflict: the task is completed or cancelled.
        """

        def change(task: Task) -> TaskChange:
            if not task.is_active:
                raise TaskConflict(
                    f"task {task.id} is {task.status.value}: only open or in-progress tasks "
                    "can be assigned"
                )
            result = self._change(
                task,
                actor=coordinator,
                action="assign",
                note=None,
                expected_version=expected_version,
                assignee=assignee,
            )
            detail = {"from_assignee": task.assignee, "to_assignee": assignee}
            return replace(result, event=replace(result.event, detail=detail))

        return self.store.update_task(task_id, change)

    def comment(
        self, task_id: str, coordinator: str, text: str, expected_version: int | None = None
    ) -> TaskEvent:
        """Add a comment to a task's history (action "comment"). The task itself, its version
        and the EHR are untouched: a comment is a note between coordinators.

        Comments may name the patient: they are kept in the store only, never logged.
        """
        event: list[TaskEvent] = []

        def change(task: Task) -> TaskChange:
            if expected_version is not None and task.version != expected_version:
                raise TaskConflict(
                    f"task {task.id} is at version {task.version}, not {expected_version}: "
                    "it changed since you read it"
                )
            status = task.status.value
            note = TaskEvent(
                task.id, self.clock(), coordinator, "comment", status, status, {"text": text}
            )
            event[:] = [note]  # the store may run `change` again on a conflict: keep the last
            return TaskChange(task, note)

        self.store.update_task(task_id, change)
        return event[-1]

    def bulk_assign(
        self, task_ids: Sequence[str], coordinator: str, assignee: str
    ) -> list[Task | QueueError]:
        """Assign each task in turn; one failing task (unknown, closed) does not stop the rest.

        :returns: per id, in order, the assigned task or the error that refused it.
        """
        results: list[Task | QueueError] = []
        for task_id in task_ids:
            try:
                results.append(self.assign(task_id, coordinator, assignee))
            except QueueError as exc:
                results.append(exc)
        return results

    def due_counts(self) -> dict[str, DueCounts]:
        """Per queue, active tasks overdue now and still due before the end of the UTC day."""
        now = self.clock().astimezone(UTC)
        day_end = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=UTC)
        return self.store.due_counts(now, day_end)
