"""Deletion detection by id reconciliation: what we store but the server no longer has.

Incremental `_lastUpdated` searches never return a deleted resource, so a task about it would
stay open forever. `reconcile_type` lists every id of a type on the server (``_elements=id``),
compares with the stored ids and, for each one missing, *confirms* the deletion with a direct
read (404/410): a resource created or changed while we were listing is never taken for
deleted. Confirmed ones are removed from the store and their active tasks are cancelled with
the reason "deleted in the EHR" (otherwise the re-evaluation sweep would keep them alive).

A listing that fails leaves everything as it was; so does one that would remove more than
`max_fraction` of the stored resources (a misconfigured server or missing permissions look
exactly like "everything was deleted").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirRequestError, ResourceNotFound
from fhir_bridge.fhir import FhirClient
from fhir_bridge.logging import get_logger
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.model import TaskStatus

log = get_logger("deletions")

DELETED_REASON = "deleted in the EHR"


@dataclass
class ReconcileResult:
    """What one reconciliation of one (source, type) found and did (counts only: no PHI)."""

    resource_type: str
    on_server: int = 0
    stored: int = 0
    missing: int = 0  # stored, not listed
    deleted: int = 0  # confirmed gone and removed from the store
    tasks_closed: int = 0
    skipped: str | None = None  # why nothing was removed, if so
    error: str | None = None


async def _server_ids(client: FhirClient, resource_type: str, page_size: int) -> set[str]:
    ids: set[str] = set()
    params = {"_elements": "id", "_count": str(page_size)}
    async for page in client.search(resource_type, params):
        ids.update(r["id"] for r in page.resources if isinstance(r.get("id"), str))
    return ids


def _close_tasks(ingestor: Ingestor, source: str, resource_type: str, resource_id: str) -> int:
    closed = 0
    for rule in ingestor.rules.rules:
        if rule.resource_type != resource_type:
            continue
        task = ingestor.store.get_task(rule.task_id(source, {"id": resource_id}))
        if task is not None and task.is_active:
            ingestor.tasks.auto_close(task.id, TaskStatus.CANCELLED, DELETED_REASON)
            closed += 1
    return closed


async def reconcile_type(
    source: SourceConfig,
    resource_type: str,
    client: FhirClient,
    ingestor: Ingestor,
    *,
    max_fraction: float = 0.5,
) -> ReconcileResult:
    """Remove stored resources of `resource_type` that the source deleted; close their tasks."""
    result = ReconcileResult(resource_type)
    store = ingestor.store
    try:
        listed = await _server_ids(client, resource_type, source.page_size)
    except FhirRequestError as exc:
        result.error = str(exc)
        log.warning("reconcile_failed", source=source.name, resource_type=resource_type)
        return result
    stored = await asyncio.to_thread(
        lambda: [r.id for r in store.iter_resources(resource_type, source.name)]
    )
    result.on_server, result.stored = len(listed), len(stored)
    missing = [rid for rid in stored if rid not in listed]
    result.missing = len(missing)
    if missing and len(missing) > max_fraction * len(stored):
        result.skipped = (
            f"{len(missing)} of {len(stored)} stored {resource_type} are not on the server: "
            f"more than {max_fraction:.0%}; nothing removed (check the source)"
        )
        log.warning(
            "reconcile_skipped",
            source=source.name,
            resource_type=resource_type,
            missing=len(missing),
            stored=len(stored),
        )
        return result
    for rid in missing:
        try:
            await client.read(resource_type, rid)
            continue  # it exists: created or changed while we listed
        except ResourceNotFound:
            pass
        except FhirRequestError as exc:
            result.error = str(exc)
            break  # the next reconciliation tries again
        closed = await asyncio.to_thread(_close_tasks, ingestor, source.name, resource_type, rid)
        await asyncio.to_thread(store.delete_resource, source.name, resource_type, rid)
        result.deleted += 1
        result.tasks_closed += closed
    log.info(
        "reconciled",
        source=source.name,
        resource_type=resource_type,
        on_server=result.on_server,
        stored=result.stored,
        deleted=result.deleted,
        tasks_closed=result.tasks_closed,
    )
    return result


async def reconcile_source(
    source: SourceConfig, client: FhirClient, ingestor: Ingestor, *, max_fraction: float = 0.5
) -> list[ReconcileResult]:
    """Reconcile every configured type of `source`, one after the other."""
    return [
        await reconcile_type(source, rtype, client, ingestor, max_fraction=max_fraction)
        for rtype in source.resource_types
    ]
