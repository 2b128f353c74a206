"""Tasks: list with filters and cursors, read one (with its ETag), claim, release, assign,
comment, change status, bulk assign.

Every change to one task honours `If-Match: W/"<version>"` (or the body's `version`): a
stale version is refused with 412 before anything is checked or written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import (
    AssignIn,
    BulkAssignIn,
    BulkItemOut,
    BulkOut,
    ClaimIn,
    CommentIn,
    CommentOut,
    ErrorBody,
    EventOut,
    ReleaseIn,
    StatusIn,
    TaskDetail,
    TaskList,
    TaskOut,
    WritebackOut,
)
from fhir_bridge.errors import IllegalTransition, QueueError, TaskConflict, TaskNotFound
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.base import TaskCursor
from fhir_bridge.tasks.model import Task, TaskStatus

router = APIRouter(prefix="/tasks", tags=["tasks"])

_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such task"},
    409: {"model": ErrorBody, "description": "illegal transition or task held by someone else"},
    412: {"model": ErrorBody, "description": "If-Match names a version the task has left"},
    422: {"model": ErrorBody, "description": "malformed request"},
}
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')
_T = TypeVar("_T")
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description='the ETag you read, W/"<version>"'),
]


def etag(task: Task) -> str:
    """The weak ETag of a task: its version."""
    return f'W/"{task.version}"'


def _invalid(where: tuple[str, ...], problem: str) -> RequestValidationError:
    return RequestValidationError([{"loc": where, "msg": problem, "type": "value_error"}])


def _if_match_version(if_match: str | None) -> int | None:
    """The version an If-Match header names; None when absent or `*` (any version)."""
    if if_match is None or if_match.strip() == "*":
        return None
    found = _ETAG.match(if_match)
    if found is None:
        raise _invalid(("header", "If-Match"), 'expected an ETag such as W/"3", or *')
    return int(found.group(1))


def _stale(task: Task, expected: int) -> JSONResponse:
    body = ErrorBody(
        error="precondition_failed",
        message=(
            f"task {task.id} is at version {task.version}, not {expected}: it changed since "
            f"you read it; read it again (GET /tasks/{task.id})"
        ),
        details={"current_version": task.version, "etag": etag(task)},
    )
    return JSONResponse(
        status_code=412, content=body.model_dump(mode="json"), headers={"ETag": etag(task)}
    )


def _guarded(
    bridge: Bridge,
    task_id: str,
    if_match: str | None,
    body_version: int | None,
    act: Callable[[int | None], _T],
) -> _T | JSONResponse:
    """Run `act(expected version)` (If-Match wins over the body's version), answering 412 when
    If-Match is stale: checked first, and again when the change lost a race."""
    header = _if_match_version(if_match)
    if header is not None:
        current = bridge.store.get_task(task_id)
        if current is None:
            raise TaskNotFound(f"no task {task_id}")
        if current.version != header:
            return _stale(current, header)
    try:
        return act(header if header is not None else body_version)
    except TaskConflict:
        current = bridge.store.get_task(task_id)
        if header is not None and current is not None and current.version != header:
            return _stale(current, header)
        raise


def _task_out(task: Task | JSONResponse, response: Response) -> TaskOut | JSONResponse:
    if isinstance(task, JSONResponse):
        return task
    response.headers["ETag"] = etag(task)
    return TaskOut.of(task)


# -- listing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskQuery:
    """The filters and paging of a task listing, from the query string."""

    kind: str | None
    statuses: list[TaskStatus]
    assignee: str | None
    patient: str | None
    label: str | None
    due_after: datetime | None
    due_before: datetime | None
    limit: int
    offset: int
    cursor: TaskCursor | None


def _utc(value: datetime | None) -> datetime | None:
    # A due bound without a zone is read as UTC, the zone the API answers in.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def task_query(  # async: no I/O, so no worker-thread hop (see deps.get_bridge)
    kind: str | None = None,
    status: Annotated[
        list[TaskStatus] | None, Query(description="repeat to filter by several statuses")
    ] = None,
    assignee: str | None = None,
    patient: Annotated[str | None, Query(description="Patient/<id> (or just the id)")] = None,
    label: str | None = None,
    due_after: Annotated[
        datetime | None, Query(description="due at or after (UTC if no zone)")
    ] = None,
    due_before: Annotated[datetime | None, Query(description="due before (UTC if no zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> TaskQuery:
    """Parse the listing query (an unknown cursor is 422)."""
    after = None
    if cursor is not None:
        try:
            after = TaskCursor.decode(cursor)
        except ValueError:
            raise _invalid(("query", "cursor"), "not a cursor this API gave out") from None
    if patient is not None and "/" not in patient:
        patient = f"Patient/{patient}"
    return TaskQuery(
        kind=kind,
        statuses=status or [],
        assignee=assignee,
        patient=patient,
        label=label,
        due_after=_utc(due_after),
        due_before=_utc(due_before),
        limit=limit,
        offset=offset,
        cursor=after,
    )


TaskQueryDep = Annotated[TaskQuery, Depends(task_query)]


def task_page(bridge: Bridge, query: TaskQuery, queue: str | None) -> TaskList:
    """One page of tasks for `query` (within `queue` when given)."""
    page = bridge.store.list_tasks(
        queue=queue,
        statuses=query.statuses,
        kind=query.kind,
        assignee=query.assignee,
        patient=query.patient,
        label=query.label,
        due_after=query.due_after,
        due_before=query.due_before,
        limit=query.limit,
        offset=query.offset,
        after=query.cursor,
    )
    next_offset = query.offset + len(page.items)
    last = page.items[-1] if page.items and page.more else None
    return TaskList(
        items=[TaskOut.of(t) for t in page.items],
        total=page.total,
        limit=query.limit,
        offset=query.offset,
        next_offset=next_offset if query.cursor is None and page.more else None,
        next_cursor=TaskCursor.after(last).encode() if last is not None else None,
    )


@router.get("", response_model=TaskList, responses=_ERRORS, summary="List tasks with filters")
def list_tasks(bridge: BridgeDep, query: TaskQueryDep, queue: str | None = None) -> Response:
    """Tasks of every queue (or `queue`), highest priority first, then earliest due."""
    # Serialized here: FastAPI would validate the page again against `TaskList` (one more
    # worker-thread hop) before encoding it, for a model built from it a line above.
    page = task_page(bridge, query, queue)
    return Response(page.model_dump_json(), media_type="application/json")


@router.post("/bulk-assign", response_model=BulkOut, responses=_ERRORS)
def bulk_assign(bridge: BridgeDep, body: BulkAssignIn) -> BulkOut:
    """Assign several tasks to one coordinator; each task succeeds or fails on its own."""
    results = []
    for task_id, outcome in zip(
        body.ids, bridge.tasks.bulk_assign(body.ids, body.coordinator, body.assignee), strict=True
    ):
        if isinstance(outcome, Task):
            results.append(
                BulkItemOut(id=task_id, ok=True, status_code=200, task=TaskOut.of(outcome))
            )
            continue
        code, error = _bulk_error(outcome)
        results.append(
            BulkItemOut(id=task_id, ok=False, status_code=code, error=error, message=str(outcome))
        )
    ok = sum(r.ok for r in results)
    return BulkOut(results=results, succeeded=ok, failed=len(results) - ok)


def _bulk_error(exc: QueueError) -> tuple[int, str]:
    if isinstance(exc, TaskNotFound):
        return 404, "task_not_found"
    if isinstance(exc, IllegalTransition):
        return 409, "illegal_transition"
    if isinstance(exc, TaskConflict):
        return 409, "task_conflict"
    return 400, "queue_error"


# -- one task --------------------------------------------------------------------------------


@router.get("/{task_id}", response_model=TaskDetail, responses=_ERRORS)
def read_task(bridge: BridgeDep, task_id: str, response: Response) -> TaskDetail:
    """A task with its focus resource (as last synced), history, comments and write-back
    state; the ETag header carries its version for If-Match."""
    task = bridge.store.get_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    focus = bridge.store.get_resource(task.source, task.focus_type, task.focus_id)
    history = bridge.store.task_history(task_id)
    response.headers["ETag"] = etag(task)
    return TaskDetail(
        task=TaskOut.of(task),
        focus_resource=focus.body if focus else None,
        history=[EventOut.of(e) for e in history],
        comments=[CommentOut.of(e) for e in history if e.action == "comment"],
        writeback=[
            WritebackOut(
                id=e.id,
                action=e.action,
                status=e.status.value,
                attempts=e.attempts,
                last_error=e.last_error,
                created_at=e.created_at,
                delivered_at=e.delivered_at,
                detail=e.detail,
            )
            for e in bridge.store.list_outbox(task_id=task_id)
        ],
    )


@router.post("/{task_id}/claim", response_model=TaskOut, responses=_ERRORS)
def claim_task(
    bridge: BridgeDep, task_id: str, body: ClaimIn, response: Response, if_match: IfMatch = None
) -> TaskOut | JSONResponse:
    """Take an open task: it becomes in-progress and yours."""
    task = _guarded(
        bridge,
        task_id,
        if_match,
        body.version,
        lambda v: bridge.tasks.claim(task_id, body.coordinator, v),
    )
    if isinstance(task, Task):
        bridge.metrics.observe_task_claimed(task, task.updated_at)
    return _task_out(task, response)


@router.post("/{task_id}/release", response_model=TaskOut, responses=_ERRORS)
def release_task(
    bridge: BridgeDep, task_id: str, body: ReleaseIn, response: Response, if_match: IfMatch = None
) -> TaskOut | JSONResponse:
    """Give back a task you hold: it becomes open and unassigned."""
    task = _guarded(
        bridge,
        task_id,
        if_match,
        body.version,
        lambda v: bridge.tasks.release(task_id, body.coordinator, v),
    )
    return _task_out(task, response)


@router.post("/{task_id}/assign", response_model=TaskOut, responses=_ERRORS)
def assign_task(
    bridge: BridgeDep, task_id: str, body: AssignIn, response: Response, if_match: IfMatch = None
) -> TaskOut | JSONResponse:
    """Give an open or in-progress task to a coordinator (its status stays)."""
    task = _guarded(
        bridge,
        task_id,
        if_match,
        body.version,
        lambda v: bridge.tasks.assign(task_id, body.coordinator, body.assignee, v),
    )
    return _task_out(task, response)


@router.post("/{task_id}/comments", response_model=CommentOut, status_code=201, responses=_ERRORS)
def comment_task(
    bridge: BridgeDep, task_id: str, body: CommentIn, if_match: IfMatch = None
) -> CommentOut | JSONResponse:
    """Add a comment to the task's history (the task's version does not change)."""
    event = _guarded(
        bridge,
        task_id,
        if_match,
        body.version,
        lambda v: bridge.tasks.comment(task_id, body.coordinator, body.text, v),
    )
    return event if isinstance(event, JSONResponse) else CommentOut.of(event)


@router.post("/{task_id}/status", response_model=TaskOut, responses=_ERRORS)
def change_status(
    bridge: BridgeDep, task_id: str, body: StatusIn, response: Response, if_match: IfMatch = None
) -> TaskOut | JSONResponse:
    """Move a task to another status; the change is written back to the source EHR."""
    task = _guarded(
        bridge,
        task_id,
        if_match,
        body.version,
        lambda v: bridge.tasks.change_status(
            task_id, body.status, body.coordinator, note=body.note, expected_version=v
        ),
    )
    if isinstance(task, Task):
        bridge.metrics.observe_task_closed(task, task.updated_at)
    return _task_out(task, response)
