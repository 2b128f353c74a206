"""Each source's sync outcome, kept in the store so that every process sees it.

A sync may run in any worker process (`fhir-bridge worker`) while the API that answers the
sources page, `/readyz` and `fhir-bridge sources status` runs in another: an outcome kept in
the syncing process's memory would leave the API saying "not run yet" for ever. So the outcome
of each (source, resource type) run is a store fact (kind `sync-status`, key `source/type`),
written by whichever process ran it. A pair is leased to one worker at a time (and serialized
by a lock inside one process), so the read-then-write of its counters does not race.

What is kept is for operators and holds no PHI: times, counts, and the error line the sync
reported (a request and an HTTP status or exception class, never a resource's content).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_bridge.config import SourceConfig
from fhir_bridge.store.base import Store
from fhir_bridge.sync.engine import SourceReport, TypeReport

KIND = "sync-status"


@dataclass
class SourceState:
    """One source's last sync, over its resource types, for operators."""

    last_run: str | None = None  # the latest run of any type (ISO instant)
    last_ok: bool | None = None  # every type's latest run succeeded; None: never run
    last_error: str | None = None  # the first failing type's error
    runs: int = 0  # runs of the type run most often (a source run syncs every type)
    # The oldest of the types' last successful runs: every type is synced at least up to then
    # (None while some type never succeeded).
    last_success: str | None = None
    types: dict[str, dict[str, Any]] = field(default_factory=dict)


def record(store: Store, source: str, report: TypeReport, at: datetime) -> None:
    """Keep the outcome of one (source, type) run."""
    key = f"{source}/{report.resource_type}"
    before = store.get_fact(KIND, key) or {}
    ok = report.error is None
    result = report.result
    store.put_fact(
        KIND,
        key,
        {
            "at": at.isoformat(),
            "ok": ok,
            "error": report.error,
            "runs": int(before.get("runs", 0)) + 1,
            "failures_in_a_row": 0 if ok else int(before.get("failures_in_a_row", 0)) + 1,
            "last_success": at.isoformat() if ok else before.get("last_success"),
            "seconds": round(report.seconds, 3),
            "pages": report.pages,
            "received": result.received,
            "stored": result.stored,
            "quarantined": result.quarantined,
        },
    )


def record_source(store: Store, report: SourceReport, at: datetime) -> None:
    """Keep the outcome of every type of one source run."""
    for one in report.types:
        record(store, report.source, one, at)


def states(store: Store, sources: Iterable[SourceConfig]) -> dict[str, SourceState]:
    """Every configured source's state, from one read of the store's sync facts."""
    facts = store.list_facts(KIND)
    out: dict[str, SourceState] = {}
    for source in sources:
        state = SourceState()
        for rtype in source.resource_types:
            fact = facts.get(f"{source.name}/{rtype}")
            if fact is not None:
                state.types[rtype] = fact
        out[source.name] = state
        if not state.types:
            continue
        runs = list(state.types.values())
        state.last_run = max(str(f["at"]) for f in runs)
        state.last_ok = all(bool(f["ok"]) for f in runs)
        state.last_error = next((f["error"] for f in runs if not f["ok"]), None)
        state.runs = max(int(f["runs"]) for f in runs)
        successes = [f.get("last_success") for f in state.types.values()]
        complete = len(state.types) == len(source.resource_types) and all(successes)
        state.last_success = min(str(s) for s in successes) if complete else None
    return out
