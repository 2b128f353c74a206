"""Queues and the tasks in them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import QueueOut, TaskList, TaskOut
from fhir_bridge.tasks.model import TaskStatus

router = APIRouter(prefix="/queues", tags=["queues"])

_ACTIVE = ("open", "in-progress")


@router.get("", response_model=list[QueueOut], summary="List queues with task counts by status")
def list_queues(bridge: BridgeDep) -> list[QueueOut]:
    """Every queue a rule fills or a task sits in, with counts by status."""
    counts = bridge.store.queue_counts()
    names = sorted(set(counts) | bridge.rules.queues)
    return [
        QueueOut(
            queue=name,
            counts={s.value: counts.get(name, {}).get(s.value, 0) for s in TaskStatus},
            total=sum(counts.get(name, {}).values()),
            open=sum(counts.get(name, {}).get(s, 0) for s in _ACTIVE),
            tasks_url=f"/queues/{name}/tasks",
        )
        for name in names
    ]


@router.get("/{queue}/tasks", response_model=TaskList, summary="List the tasks of a queue")
def list_queue_tasks(
    bridge: BridgeDep,
    queue: str,
    status: Annotated[
        list[TaskStatus] | None, Query(description="repeat to filter by several statuses")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TaskList:
    """Tasks of one queue, highest priority first, then earliest due."""
    if queue not in bridge.rules.queues and queue not in bridge.store.queue_counts():
        raise HTTPException(404, f"no queue named {queue!r}; see GET /queues")
    page = bridge.store.list_tasks(queue=queue, statuses=status or (), limit=limit, offset=offset)
    next_offset = offset + len(page.items)
    return TaskList(
        items=[TaskOut.of(t) for t in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset if next_offset < page.total else None,
    )
