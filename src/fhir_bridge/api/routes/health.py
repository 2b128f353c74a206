"""Probes for orchestrators and people: /healthz (alive), /readyz (able to serve), /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.logging import get_logger
from fhir_bridge.metrics import CONTENT_TYPE
from fhir_bridge.runtime import Bridge

router = APIRouter(tags=["operations"])
log = get_logger("health")


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    """Always ok while the process serves requests (a liveness probe: no dependencies)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The bridge can do its work",
    responses={503: {"description": "not ready; the body says which check failed"}},
)
def readyz(bridge: BridgeDep) -> JSONResponse:
    """Store reachable, mappings loaded, not every source failing; 503 with details if not."""
    checks = {
        "store": _store_check(bridge),
        "mappings": _mappings_check(bridge),
        "sources": _sources_check(bridge),
    }
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    if not ready:
        log.warning("not_ready", failing=[name for name, c in checks.items() if not c["ok"]])
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(bridge: BridgeDep) -> Response:
    """The bridge's metrics in the Prometheus text format (store figures read now)."""
    return Response(bridge.metrics.render(), media_type=CONTENT_TYPE)


def _store_check(bridge: Bridge) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        bridge.store.queue_counts()
    except FhirBridgeError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}


def _mappings_check(bridge: Bridge) -> dict[str, Any]:
    rules = len(bridge.rules.rules)
    if rules == 0:
        return {"ok": False, "rules": 0, "error": "no mapping rules loaded"}
    return {"ok": True, "rules": rules}


def _sources_check(bridge: Bridge) -> dict[str, Any]:
    """Ready while at least one source works, or none has been tried yet."""
    detail: dict[str, Any] = {}
    try:
        states = bridge.source_state  # recorded in the store by whichever process synced
    except FhirBridgeError as exc:
        return {"ok": False, "error": type(exc).__name__}
    for name, state in states.items():
        status = "pending" if state.last_ok is None else ("ok" if state.last_ok else "failing")
        detail[name] = {
            "status": status,
            "last_run": state.last_run,
            "last_success": state.last_success,
            "runs": state.runs,
            "last_error": state.last_error,
        }
    statuses = [d["status"] for d in detail.values()]
    all_failing = bool(statuses) and all(s == "failing" for s in statuses)
    return {"ok": not all_failing, "sources": detail}
