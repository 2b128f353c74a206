"""The audit trail for admins: who read which patient's history and who changed which task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from fhir_bridge.api.audit import audit_event
from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.store.base import AuditFilter

router = APIRouter(prefix="/audit", tags=["audit"])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("", summary="Audit records, newest first (admin)")
def list_audit(
    bridge: BridgeDep,
    agent: Annotated[str | None, Query(description="token subject or API key name")] = None,
    patient: Annotated[str | None, Query(description="Patient/<id> (or just the id)")] = None,
    task_id: str | None = None,
    since: Annotated[datetime | None, Query(description="recorded at or after (UTC)")] = None,
    until: Annotated[datetime | None, Query(description="recorded before (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=1, description="next_cursor of the page before")] = None,
) -> dict[str, Any]:
    """A page of AuditEvents matching every given filter, with the cursor of the next page."""
    if patient is not None and "/" not in patient:
        patient = f"Patient/{patient}"
    filters = AuditFilter(agent, patient, task_id, _utc(since), _utc(until))
    found, next_cursor = bridge.store.list_audit(filters, limit, cursor)
    return {"items": [audit_event(r) for r in found], "next_cursor": next_cursor}
