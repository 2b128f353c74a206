"""Operator actions on the outbox, shared by `fhir-bridge outbox` and the API: list, show,
retry (dead or conflict entries back to pending, with a fresh retry budget) and discard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.store.base import Store
from fhir_bridge.tasks.model import OutboxEntry, OutboxStatus
from fhir_bridge.writeback.webhook import WEBHOOK_ACTION, idempotency_key


class OutboxEntryNotFound(FhirBridgeError):
    """No outbox entry with that id."""


class OutboxStateError(FhirBridgeError):
    """The entry is not in a state the operation applies to."""


def describe(entry: OutboxEntry, *, payload: bool = False) -> dict[str, Any]:
    """An entry as JSON; the payload (it may hold a coordinator's note) only when asked."""
    out: dict[str, Any] = {
        "id": entry.id,
        "task_id": entry.task_id,
        "source": entry.source,
        "action": entry.action,
        "status": entry.status.value,
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at.isoformat(),
        "created_at": entry.created_at.isoformat(),
        "delivered_at": entry.delivered_at.isoformat() if entry.delivered_at else None,
        "last_error": entry.last_error,
        "detail": entry.detail,
    }
    if entry.action == WEBHOOK_ACTION:  # what the receiver saw, to find it in its logs
        out["idempotency_key"] = idempotency_key(entry)
    if payload:
        out["payload"] = entry.payload
    return out


def get_entry(store: Store, entry_id: int) -> OutboxEntry:
    """The entry, or OutboxEntryNotFound."""
    entry = store.get_outbox(entry_id)
    if entry is None:
        raise OutboxEntryNotFound(f"no outbox entry {entry_id}")
    return entry


def retry(store: Store, entry_id: int, now: datetime) -> OutboxEntry:
    """Put a dead or conflict entry back to pending, due now.

    :raises OutboxEntryNotFound: no such entry.
    :raises OutboxStateError: the entry is not dead or in conflict.
    """
    entry = get_entry(store, entry_id)
    if not store.outbox_requeue(entry_id, now):
        raise OutboxStateError(
            f"outbox entry {entry_id} is {entry.status.value}: only dead or conflict entries "
            "can be retried"
        )
    return get_entry(store, entry_id)


def discard(store: Store, entry_id: int, reason: str) -> OutboxEntry:
    """Give up on an entry that was not delivered.

    :raises OutboxEntryNotFound: no such entry.
    :raises OutboxStateError: the entry is delivered or already discarded.
    """
    entry = get_entry(store, entry_id)
    if not store.outbox_discard(entry_id, reason):
        raise OutboxStateError(
            f"outbox entry {entry_id} is {entry.status.value}: delivered or discarded entries "
            "cannot be discarded"
        )
    return get_entry(store, entry_id)


def list_entries(
    store: Store, status: OutboxStatus | None = None, task_id: str | None = None, limit: int = 100
) -> list[OutboxEntry]:
    """Entries, oldest first, filtered by status and task."""
    return store.list_outbox(status=status, task_id=task_id, limit=limit)
