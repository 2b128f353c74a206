"""Queues and the tasks in them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.routes.tasks import TaskQueryDep, task_page
from fhir_bridge.api.schemas import ErrorBody, QueueOut, TaskList
from fhir_bridge.store.base import DueCounts
from fhir_bridge.tasks.model import TaskStatus

router = APIRouter(prefix="/queues", tags=["queues"])

_ACTIVE = ("open", "in-progress")


@router.get(
    "",
    response_model=list[QueueOut],
    summary="List queues with task counts by status, overdue and due today",
)
def list_queues(bridge: BridgeDep) -> list[QueueOut]:
    """Every queue a rule fills or a task sits in, with counts by status and by deadline
    (overdue now; due from now to the end of the UTC day)."""
    counts = bridge.store.queue_counts()
    due = bridge.tasks.due_counts()
    names = sorted(set(counts) | bridge.rules.queues)
    return [
        QueueOut(
            queue=name,
            counts={s.value: counts.get(name, {}).get(s.value, 0) for s in TaskStatus},
            total=sum(counts.get(name, {}).values()),
            open=sum(counts.get(name, {}).get(s, 0) for s in _ACTIVE),
            overdue=due.get(name, DueCounts()).overdue,
            due_today=due.get(name, DueCounts()).due_today,
            tasks_url=f"/queues/{name}/tasks",
        )
        for name in names
    ]


@router.get(
    "/{queue}/tasks",
    response_model=TaskList,
    summary="List the tasks of a queue",
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def list_queue_tasks(bridge: BridgeDep, queue: str, query: TaskQueryDep) -> TaskList:
    """Tasks of one queue, highest priority first, then earliest due; the same filters and
    cursor as GET /tasks."""
    if queue not in bridge.rules.queues and queue not in bridge.store.queue_counts():
        raise HTTPException(404, f"no queue named {queue!r}; see GET /queues")
    return task_page(bridge, query, queue)
