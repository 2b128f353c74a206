"""The outbox for operators (admin role, once the API has roles): dead letters, conflicts,
retry and discard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.tasks.model import OutboxStatus
from fhir_bridge.writeback import admin

router = APIRouter(prefix="/outbox", tags=["outbox"])


class DiscardIn(BaseModel):
    """Why the entry is given up (kept as its last error)."""

    reason: str = Field(min_length=1, max_length=500)


def _call(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        return admin.describe(fn(*args), payload=True)
    except admin.OutboxEntryNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except admin.OutboxStateError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("", summary="List outbox entries (admin)")
def list_outbox(
    bridge: BridgeDep,
    status: OutboxStatus | None = None,
    task_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Entries oldest first; `status=dead` lists the dead letters, `status=conflict` the
    changes the EHR overtook (with the diff in `detail`)."""
    return [admin.describe(e) for e in admin.list_entries(bridge.store, status, task_id, limit)]


@router.get("/{entry_id}", summary="One outbox entry with its payload (admin)")
def show_outbox(bridge: BridgeDep, entry_id: int) -> dict[str, Any]:
    """The entry, its payload and why it failed (OperationOutcome or diff)."""
    return _call(admin.get_entry, bridge.store, entry_id)


@router.post("/{entry_id}/retry", summary="Retry a dead or conflict entry (admin)")
def retry_outbox(bridge: BridgeDep, entry_id: int) -> dict[str, Any]:
    """Back to pending, due now, with a fresh retry budget; 409 for other states."""
    return _call(admin.retry, bridge.store, entry_id, bridge.clock())


@router.post("/{entry_id}/discard", summary="Discard an undelivered entry (admin)")
def discard_outbox(bridge: BridgeDep, entry_id: int, body: DiscardIn) -> dict[str, Any]:
    """Never deliver it; 409 when it is already delivered or discarded."""
    return _call(admin.discard, bridge.store, entry_id, body.reason)
