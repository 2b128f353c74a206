"""Deliver outbox entries to the FHIR servers: retry what may pass later, park what never will.

Entries of one task go out in order (the store hands out only the oldest pending entry of
each task); entries of different tasks go out concurrently, a few at a time. Entries are
claimed for one consumer (`Store.claim_outbox`; on Redis a Stream consumer group, so many
workers share the outbox) and acknowledged once their outcome is recorded; while an entry is
being delivered its claim is kept alive (`touch_outbox`), so only a consumer that died or
stalled past the visibility timeout loses it to another. A 412 on the
mirror Task means someone else (the EHR, a clinician) changed it since we last wrote: we
re-read it, lay our fields over theirs and try once more on the new version, never
overwriting blindly. `on_status` actions (`writeback/actions.py`) re-apply after a 412 only
while the EHR has not moved the fields they set; otherwise the entry is parked as a
conflict with the diff. Each action's write is followed by a Provenance.

Temporary failures retry with exponential backoff until `max_attempts`; permanent ones
(400/403/404/409/422 ..., or a spent budget) park the entry as dead with the server's
OperationOutcome text, for `fhir-bridge outbox retry|discard`.

A `family-webhook` entry (`writeback/webhook.py`) is not a FHIR write: it POSTs a recorded
family message to the hospital's messaging system, after that message's Communication entry;
it retries on the same backoff (never before the receiver's Retry-After) and parks what the
receiver refuses or what must not be sent (contact no longer authorized).

Before any request, every entry is checked against its source's `write_policy`
(`writeback/policy.py`): a write outside it is parked as dead with `{"policy": reason}`; in
`dry-run` mode nothing is sent, `writeback_dry_run` logs the types and field paths (no values)
and the entry is marked delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fhir_bridge.config import WritebackConfig, WritePolicyConfig
from fhir_bridge.errors import (
    FatalFhirError,
    FhirBridgeError,
    PreconditionFailed,
    ResourceNotFound,
    TemporaryFhirError,
)
from fhir_bridge.fhir import FhirClient, WriteResult
from fhir_bridge.logging import get_logger
from fhir_bridge.metrics import BridgeMetrics
from fhir_bridge.store.base import OutboxClaim, Store
from fhir_bridge.sync.ingest import Clock, utcnow
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxEntry, OutboxStatus, Task
from fhir_bridge.writeback import actions, policy
from fhir_bridge.writeback.actions import ActionFailed, WriteConflict, Written
from fhir_bridge.writeback.provenance import build_provenance, tag_query
from fhir_bridge.writeback.task_mirror import build_task, identifier_query
from fhir_bridge.writeback.webhook import (
    WEBHOOK_ACTION,
    FamilyWebhook,
    WebhookRefused,
    WebhookRetry,
)

log = get_logger("writeback")

_CONCURRENCY = 4
# The consumer name of deliveries that are not given one (`fhir-bridge run`, one-off scans):
# one per process, so a process's scans share their claims.
PROCESS_CONSUMER = f"process-{uuid.uuid4().hex[:12]}"


@dataclass
class DeliveryStats:
    """What one scan of the outbox did."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    conflicts: int = 0
    refused: int = 0  # outside the source's write policy (also counted in `dead`)
    dry_run: int = 0  # not sent: the source's write policy is dry-run (also in `delivered`)


def failure_detail(exc: Exception) -> dict[str, Any]:
    """What a dead entry keeps: HTTP status and an OperationOutcome with the server's text."""
    status = getattr(exc, "status", None)
    outcome = getattr(exc, "outcome", None)
    return {
        "status": status,
        "outcome": {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": outcome or str(exc),
                }
            ],
        },
    }


def _version(resource: dict[str, Any] | None) -> str | None:
    meta = (resource or {}).get("meta") or {}
    value = meta.get("versionId")
    return str(value) if value is not None else None


class Delivery:
    """Sends pending outbox entries to their sources."""

    def __init__(
        self,
        store: Store,
        clients: Mapping[str, FhirClient],
        settings: WritebackConfig,
        clock: Clock = utcnow,
        metrics: BridgeMetrics | None = None,
        policies: Mapping[str, WritePolicyConfig] | None = None,
        *,
        consumer: str | None = None,
        batch: int = 100,
        webhook: FamilyWebhook | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.policies = dict(policies or {})
        self.consumer = consumer or PROCESS_CONSUMER
        self.batch = batch
        self.webhook = webhook  # None: family webhook entries are parked (not configured)
        self.last_claimed = 0  # how many entries the last scan claimed

    async def deliver_due(self) -> DeliveryStats:
        """Claim up to `batch` entries that are due now, deliver them, acknowledge each once
        its outcome is recorded; return what happened."""
        self.last_claimed = 0
        claims = await asyncio.to_thread(
            self.store.claim_outbox, self.consumer, self.clock(), self.batch
        )
        self.last_claimed = len(claims)
        stats = DeliveryStats()
        gate = asyncio.Semaphore(_CONCURRENCY)
        held = {c.entry.id: c for c in claims if c.receipt is not None}

        async def one(claim: OutboxClaim) -> None:
            async with gate:
                await self._deliver(claim.entry, stats)
            # Not reached when recording the outcome failed: the claim is then reclaimed.
            await asyncio.to_thread(self.store.ack_outbox, claim)
            held.pop(claim.entry.id, None)

        keeper = asyncio.create_task(self._keep(held)) if held else None
        try:
            await asyncio.gather(*(one(c) for c in claims))
        finally:
            if keeper is not None:
                keeper.cancel()
        return stats

    async def _keep(self, held: dict[int, OutboxClaim]) -> None:
        """Touch the claims still held every third of the visibility timeout."""
        timeout = self.store.outbox_visibility_timeout
        if not timeout:
            return
        while held:
            await asyncio.sleep(timeout / 3)
            with contextlib.suppress(FhirBridgeError):  # a missed touch only risks a re-send
                await asyncio.to_thread(self.store.touch_outbox, self.consumer, list(held.values()))

    async def run(self, stop: asyncio.Event) -> None:
        """Scan the outbox every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                await self.deliver_due()
            except FhirBridgeError as exc:
                log.error("outbox_scan_failed", error=type(exc).__name__, message=str(exc))
            if self.last_claimed >= self.batch:
                continue  # more may be waiting: scan again at once
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.interval)
            except TimeoutError:
                pass
        await self.close()

    async def close(self) -> None:
        """Leave the consumer group when nothing is held (a no-op on single-process engines)."""
        with contextlib.suppress(FhirBridgeError):
            await asyncio.to_thread(self.store.outbox_consumer_done, self.consumer)

    async def _deliver(self, entry: OutboxEntry, stats: DeliveryStats) -> None:
        started = time.perf_counter()
        outcome = "delivered"
        try:
            sent = await self._send(entry)
            await asyncio.to_thread(self.store.outbox_delivered, entry.id, self.clock())
            stats.delivered += 1
            if not sent:
                outcome = "dry-run"
                stats.dry_run += 1
        except policy.PolicyRefused as exc:
            outcome = "refused"
            await asyncio.to_thread(
                self.store.outbox_park, entry.id, OutboxStatus.DEAD, str(exc), exc.detail
            )
            stats.dead += 1
            stats.refused += 1
        except (TemporaryFhirError, WebhookRetry) as exc:
            if entry.attempts + 1 >= self._max_attempts(entry):
                outcome = "dead"
                await asyncio.to_thread(
                    self.store.outbox_park,
                    entry.id,
                    OutboxStatus.DEAD,
                    f"retry budget spent: {exc}",
                    failure_detail(exc),
                )
                stats.dead += 1
            else:
                outcome = "retry"
                wait = min(self.settings.max_backoff, 2.0 ** (entry.attempts + 1))
                if isinstance(exc, WebhookRetry) and exc.retry_after:  # not before it asks
                    wait = min(self.settings.max_backoff, max(wait, exc.retry_after))
                next_at = self.clock() + timedelta(seconds=wait)
                await asyncio.to_thread(self.store.outbox_retry, entry.id, str(exc), next_at)
                stats.retried += 1
        except WriteConflict as exc:
            outcome = "conflict"
            await asyncio.to_thread(
                self.store.outbox_park, entry.id, OutboxStatus.CONFLICT, str(exc), exc.detail
            )
            stats.conflicts += 1
        except (FatalFhirError, _Undeliverable, ActionFailed, WebhookRefused) as exc:
            outcome = "dead"
            await asyncio.to_thread(
                self.store.outbox_park, entry.id, OutboxStatus.DEAD, str(exc), failure_detail(exc)
            )
            stats.dead += 1
        if self.metrics is not None:
            latency = (self.clock() - entry.created_at).total_seconds()
            self.metrics.observe_outbox_delivery(
                entry.source,
                entry.action,
                outcome,
                latency_seconds=latency if outcome == "delivered" else None,
            )
        log.info(
            "outbox_delivery",
            entry_id=entry.id,
            task_id=entry.task_id,
            source=entry.source,
            action=entry.action,
            attempt=entry.attempts + 1,
            outcome=outcome,
            elapsed_ms=round((time.perf_counter() - started) * 1000),
        )

    async def _send(self, entry: OutboxEntry) -> bool:
        """Deliver one entry; False when the source's policy is dry-run and nothing was sent.

        :raises policy.PolicyRefused: the entry is outside the source's write policy.
        """
        if entry.action == WEBHOOK_ACTION:
            return await self._send_webhook(entry)
        if entry.action != MIRROR_ACTION and entry.action not in _ACTIONS:
            raise _Undeliverable(f"unknown outbox action {entry.action!r}")
        client = self.clients.get(entry.source)
        if client is None:
            raise _Undeliverable(f"source {entry.source!r} is not configured for write-back")
        task = await asyncio.to_thread(self.store.get_task, entry.task_id)
        if task is None:
            raise _Undeliverable(f"task {entry.task_id} no longer exists")
        rules = self.policies.get(entry.source) or _DEFAULT_POLICY
        writes = policy.plan(entry, task, self.settings.identifier_system)
        policy.check(rules, entry.source, writes)
        if rules.mode == "dry-run":
            log.info(
                "writeback_dry_run",
                entry_id=entry.id,
                task_id=entry.task_id,
                source=entry.source,
                action=entry.action,
                writes=policy.summary(writes),
            )
            return False
        if entry.action != MIRROR_ACTION:
            await self._action(client, task, entry)
            return True
        result = await self._mirror(client, task, entry.payload)
        _after_create_hook(result.created)
        if result.resource_id:
            await asyncio.to_thread(
                self.store.set_task_mirror, task.id, result.resource_id, result.version_id
            )
        return True

    def _max_attempts(self, entry: OutboxEntry) -> int:
        if entry.action == WEBHOOK_ACTION and self.webhook is not None:
            return self.webhook.config.max_attempts or self.settings.max_attempts
        return self.settings.max_attempts

    async def _send_webhook(self, entry: OutboxEntry) -> bool:
        """POST a family message to the hospital's messaging system (not a FHIR write: the
        write policy's types do not apply; its dry-run mode does, nothing is sent)."""
        if self.webhook is None:
            raise _Undeliverable("the family webhook is not configured (family.webhook.url)")
        rules = self.policies.get(entry.source) or _DEFAULT_POLICY
        return await self.webhook.deliver(
            entry,
            store=self.store,
            client=self.clients.get(entry.source),
            identifier_system=self.settings.identifier_system,
            dry_run=rules.mode == "dry-run",
            now=self.clock(),
        )

    async def _action(self, client: FhirClient, task: Task, entry: OutboxEntry) -> None:
        """Run one `on_status` action, then record its write in a Provenance."""
        payload = entry.payload
        spec: dict[str, Any] = payload.get("spec") or {}
        env = {"note": payload.get("note") or [], "coordinator": payload.get("coordinator") or []}
        env["task"] = actions.task_scope(task)  # e.g. a family message's text (%task.description)
        key = f"{task.id}-{entry.id}"
        try:
            written = await self._run_action(client, task, entry, spec, env, key)
        except (KeyError, TypeError) as exc:  # a payload not shaped like a mapping action
            raise ActionFailed(f"outbox entry {entry.id}: malformed {entry.action} action") from exc
        if written is None:
            return  # the EHR already holds what the action would write: nothing to record
        provenance = build_provenance(
            target=written.reference,
            version=written.version,
            activity=written.activity,
            coordinator=payload.get("coordinator"),
            recorded=self.clock().isoformat(),
            key=key,
        )
        await client.create(provenance, if_none_exist=tag_query(key))

    async def _run_action(
        self,
        client: FhirClient,
        task: Task,
        entry: OutboxEntry,
        spec: dict[str, Any],
        env: dict[str, Any],
        key: str,
    ) -> Written | None:
        written: Written | None
        if entry.action == "update-focus":
            written = await actions.update_focus(client, task, spec, env)
        elif entry.action == "create":
            written = await actions.create_resource(
                client, task, spec, env, system=self.settings.identifier_system, key=key
            )
        else:
            written = await actions.task_output(client, task, spec, env)
            if task.mirror_id and written.version:
                await asyncio.to_thread(
                    self.store.set_task_mirror, task.id, task.mirror_id, written.version
                )
        return written

    async def _mirror(self, client: FhirClient, task: Task, snap: dict[str, Any]) -> WriteResult:
        system = self.settings.identifier_system
        if task.mirror_id:
            body = build_task(snap, system) | {"id": task.mirror_id}
            try:
                return await client.update(body, if_match=task.mirror_version)
            except PreconditionFailed:
                theirs = await client.read("Task", task.mirror_id)
                return await self._update_over(client, theirs, snap)
            except ResourceNotFound:
                pass  # the mirror was deleted on the server: make it again below
        created = await client.create(
            build_task(snap, system), if_none_exist=identifier_query(system, task.id)
        )
        if created.created:
            return created
        # It already existed (an earlier attempt got through before we could record it).
        current: dict[str, Any] | None = created.resource
        if current is None or current.get("resourceType") != "Task":
            if not created.resource_id:
                raise _Undeliverable("server matched an existing Task but did not say which")
            current = await client.read("Task", created.resource_id)
        return await self._update_over(client, current, snap)

    async def _update_over(
        self, client: FhirClient, current: dict[str, Any], snap: dict[str, Any]
    ) -> WriteResult:
        body = build_task(snap, self.settings.identifier_system, existing=current)
        body["id"] = current["id"]
        return await client.update(body, if_match=_version(current))


_ACTIONS = frozenset(actions.ACTION_NAMES.values())
_DEFAULT_POLICY = WritePolicyConfig()

# Test seam for tests/integration/test_writeback_crash.py: when this variable names a file,
# the process writes the file and stops dead (SIGKILL to itself) right after the server
# created a mirror Task and before the bridge recorded it. Never set in production.
CRASH_AFTER_CREATE_ENV = "FHIR_BRIDGE_TEST_KILL_AFTER_CREATE"


def _after_create_hook(created: bool) -> None:
    marker = os.environ.get(CRASH_AFTER_CREATE_ENV)
    if created and marker:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write("created\n")
        os.kill(os.getpid(), signal.SIGKILL)


class _Undeliverable(FhirBridgeError):
    """An entry that can never be delivered as it stands (bad action, unknown source)."""
