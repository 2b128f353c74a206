"""Operator views: sources and quarantine (probes and metrics are in `health`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import QuarantineList, QuarantineOut

router = APIRouter(tags=["operations"])


@router.get("/sources", summary="Configured sources and their last sync")
def sources(bridge: BridgeDep) -> list[dict[str, Any]]:
    """Each source's URL, resource types, cursors, last sync outcome (overall and per type,
    as recorded in the store by whichever process synced) and circuit breaker."""
    out = []
    states = bridge.source_state  # one store read, whichever process ran the syncs
    for src in bridge.settings.sources:
        state = states[src.name]
        out.append(
            {
                "name": src.name,
                "base_url": src.url,
                "resource_types": list(src.resource_types),
                "cursors": {t: bridge.store.get_cursor(src.name, t) for t in src.resource_types},
                "resources": bridge.store.resource_counts(src.name),
                "last_run": state.last_run,
                "last_ok": state.last_ok,
                "last_error": state.last_error,
                "last_success": state.last_success,
                "runs": state.runs,
                "types": state.types,
                "circuit": bridge.guards[src.name].breaker.snapshot(),
            }
        )
    return out


@router.get("/quarantine", response_model=QuarantineList, summary="Resources refused by validation")
def quarantine(
    bridge: BridgeDep,
    source: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> QuarantineList:
    """Quarantined resources with their reasons, newest first."""
    entries, total = bridge.store.list_quarantine(source, limit, offset)
    return QuarantineList(
        items=[
            QuarantineOut(
                source=e.source,
                resource_type=e.resource_type,
                resource_id=e.resource_id,
                version_id=e.version_id,
                at=e.at,
                issues=e.issues,
            )
            for e in entries
        ],
        total=total,
    )
