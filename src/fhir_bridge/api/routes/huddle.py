"""The daily huddle list: active tasks that are blocked, in conflict, overdue or waiting on
another team, grouped by patient (`outcomes/huddle.py`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.outcomes.huddle import Huddle, huddle

router = APIRouter(tags=["outcomes"])


@router.get("/huddle", response_model=Huddle)
def read_huddle(
    bridge: BridgeDep,
    request: Request,
    queue: Annotated[
        str | None, Query(max_length=64, description="one queue; all if absent")
    ] = None,
    assignee: Annotated[str | None, Query(max_length=100, description="one coordinator")] = None,
) -> Huddle:
    """The huddle list now; a coordinator restricted to some queues sees only those."""
    found = huddle(bridge.store, bridge.clock(), queue, assignee)
    principal = getattr(request.state, "principal", None)
    if principal is not None and not principal.is_admin and principal.queues is not None:
        for group in found.patients:
            group.tasks = [t for t in group.tasks if t.queue in principal.queues]
        found.patients = [g for g in found.patients if g.tasks]
    return found
