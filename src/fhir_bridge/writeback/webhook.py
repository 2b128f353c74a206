"""The family webhook: each recorded family message POSTed to the hospital's messaging system.

The bridge sends no SMS or e-mail itself. When `family.webhook.url` is set, completing a task
of the `family` queue queues, right after the entry that records the message as a FHIR
`Communication`, one `family-webhook` outbox entry (`drafts`). Delivering it
(`FamilyWebhook.deliver`, called by `Delivery`; the task's entries go out in order):

1. sends nothing for a message that was never recorded: when the Communication entry is dead,
   in conflict or discarded, this entry is parked dead saying so (retry that entry, then
   this one);
2. re-reads the contact and re-checks that the patient still authorizes sharing with them;
   withdrawn, gone or ambiguous: parked dead with the reason, nothing sent;
3. finds the Communication by its identifier, for its reference;
4. POSTs the JSON body with `Idempotency-Key` (`<task id>-<entry id>`: the same on every
   attempt) and `X-Fhir-Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
   "<t>." + body under the secret>`.

2xx: delivered, and a delivered entry is never sent again. 408, 425, 429, 5xx, timeouts and
connection errors: retried on the outbox backoff, never before the receiver's `Retry-After`
(capped by `writeback.max_backoff`). Anything else (3xx, other 4xx): parked dead with the
status. A crash between a POST and recording its answer sends the same key again, so
receivers must dedupe on `Idempotency-Key`. Logs and errors carry ids and statuses only:
never the message, the contact's name or address, or the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any

import httpx

from fhir_bridge.config import FamilyWebhookConfig
from fhir_bridge.errors import ConfigError, FatalFhirError, FhirBridgeError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.fhir.client import parse_retry_after, tls_context, user_agent
from fhir_bridge.logging import get_logger
from fhir_bridge.patients.contacts import Contact, record_contacts
from fhir_bridge.store.base import Store
from fhir_bridge.tasks.model import OutboxDraft, OutboxEntry, OutboxStatus, Task, TaskStatus

log = get_logger("writeback.webhook")

WEBHOOK_ACTION = "family-webhook"
EVENT = "family-message"
FAMILY_QUEUE = "family"
SIGNATURE_HEADER = "X-Fhir-Bridge-Signature"
_RETRY_STATUSES = frozenset({408, 425, 429})
_TASK_ENTRIES = 1000  # how far back a task's entries are read for its Communication entry


class WebhookRetry(FhirBridgeError):
    """The POST may pass later: 408/425/429/5xx, a timeout, no connection."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class WebhookRefused(FhirBridgeError):
    """Not to be sent as it stands: the receiver refused it, or sending is not allowed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- queueing ----------------------------------------------------------------------------------


def _records_message(action: str, payload: Mapping[str, Any]) -> bool:
    spec = payload.get("spec")
    return (
        action == "create"
        and isinstance(spec, dict)
        and spec.get("resourceType") == "Communication"
    )


def _labels(labels: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, _, v in (label.partition(":") for label in labels) if v}


def drafts(task: Task, queued: tuple[OutboxDraft, ...], coordinator: str) -> list[OutboxDraft]:
    """The webhook entry of a status change: one when a `family` task was completed and the
    change records its message as a Communication (`queued`), else none. Pure."""
    if task.queue != FAMILY_QUEUE or task.status is not TaskStatus.COMPLETED:
        return []
    if not any(_records_message(d.action, d.payload) for d in queued):
        return []
    labels = _labels(task.labels)
    recipient = labels.get("recipient")
    payload = {
        "task_id": task.id,
        "rule_id": task.rule_id,
        "kind": task.kind,
        "patient": task.patient,
        "focus": task.focus,
        "recipient": recipient,
        # A Patient.contact has no resource of its own: its rule labels it `contact:`.
        "contact": labels.get("contact") or recipient,
        "language": labels.get("language"),
        "message": task.description or "",
        "completed_by": coordinator,
        "completed_at": task.updated_at.isoformat(),
    }
    return [OutboxDraft(task.id, task.source, WEBHOOK_ACTION, payload)]


# -- signing -----------------------------------------------------------------------------------


def idempotency_key(entry: OutboxEntry) -> str:
    """Stable per task completion: the same on every attempt of the entry."""
    return f"{entry.task_id}-{entry.id}"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<unix seconds>,v1=<hex HMAC-SHA256("<t>." + body)>`."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: bytes, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver checks: a v1 signature of this body, made within `tolerance` seconds."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# -- delivering --------------------------------------------------------------------------------


def _communication_entry(store: Store, entry: OutboxEntry) -> OutboxEntry | None:
    """The entry recording this message: the task's last Communication create before it."""
    earlier = [
        e
        for e in store.list_outbox(task_id=entry.task_id, limit=_TASK_ENTRIES)
        if e.id < entry.id and _records_message(e.action, e.payload)
    ]
    return earlier[-1] if earlier else None


def _check_recorded(recorded: OutboxEntry | None) -> OutboxEntry:
    if recorded is None:
        raise WebhookRefused("not sent: no Communication entry records this message")
    if recorded.status is OutboxStatus.PENDING:
        raise WebhookRetry(f"waiting for outbox entry {recorded.id} (the Communication)")
    if recorded.status is not OutboxStatus.DELIVERED:
        raise WebhookRefused(
            f"not sent: the message was never recorded (outbox entry {recorded.id}, its "
            f"Communication, is {recorded.status.value}); retry that entry, then this one"
        )
    return recorded


def _contact(store: Store, entry: OutboxEntry) -> Contact:
    """The contact as stored now, still authorized.

    :raises WebhookRefused: no such contact any more, or sharing is no longer authorized.
    """
    payload = entry.payload
    patient = str(payload.get("patient") or "")
    wanted = str(payload.get("contact") or "")
    if not patient.startswith("Patient/") or not wanted:
        raise WebhookRefused("not sent: the task names no patient or no recipient")
    found = record_contacts(store, entry.source, patient.removeprefix("Patient/"))
    chosen = [c for c in found if c.reference == wanted]
    if not chosen and wanted == patient:  # a Patient.contact named only by its Patient
        chosen = [c for c in found if c.kind == "patient-contact"]
        if len(chosen) > 1:
            raise WebhookRefused(
                f"not sent: {patient} has {len(chosen)} contacts and the task does not say which"
            )
    if not chosen:
        raise WebhookRefused(f"not sent: contact {wanted} of {patient} is no longer on file")
    contact = chosen[0]
    if not contact.authorized:
        raise WebhookRefused(
            f"not sent: sharing with {wanted} is no longer authorized ({contact.basis})"
        )
    return contact


async def _communication_reference(
    client: FhirClient | None, identifier: str, entry: OutboxEntry
) -> str | None:
    """`Communication/<id>` of the recorded message, None when the source cannot say."""
    if client is None:
        return None
    pages = client.search("Communication", [("identifier", identifier)])
    try:
        async for page in pages:
            for resource in page.resources:
                return f"Communication/{resource.get('id')}"
            break
    except FatalFhirError as exc:  # a temporary failure propagates: retried later
        log.warning(
            "family_webhook_lookup_failed", entry_id=entry.id, status=exc.status, error="fatal"
        )
    finally:
        close = getattr(pages, "aclose", None)  # the first page is enough: stop paging now
        if close is not None:
            await close()
    return None


def build_body(
    entry: OutboxEntry, contact: Contact, communication: dict[str, Any]
) -> dict[str, Any]:
    """The JSON the receiver gets (docs/family.md "Webhook")."""
    p = entry.payload
    return {
        "event": EVENT,
        "idempotency_key": idempotency_key(entry),
        "task": {"id": entry.task_id, "kind": p.get("kind"), "rule": p.get("rule_id")},
        "patient": {"source": entry.source, "reference": p.get("patient")},
        "about": p.get("focus"),
        "recipient": {
            "reference": contact.reference,
            "fhir_recipient": contact.recipient,
            "name": contact.name,
            "relationship": contact.relationship,
            "channel": contact.channel,
            "value": contact.telecom,
            "language": contact.language,
            "authorization": contact.basis,
        },
        "message": {"text": p.get("message") or "", "language": p.get("language")},
        "completed": {"by": p.get("completed_by"), "at": p.get("completed_at")},
        "communication": communication,
    }


class FamilyWebhook:
    """Delivers `family-webhook` entries to `config.url` (one short-lived client per POST:
    a family message is a few a day, and nothing is held open between scans)."""

    def __init__(
        self, config: FamilyWebhookConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if config.url is None:
            raise ValueError("FamilyWebhook needs family.webhook.url")
        self.config = config
        self.url = str(config.url)
        self._transport = transport

    def __repr__(self) -> str:
        return f"FamilyWebhook(host={self.config.url.host if self.config.url else None!r})"

    async def deliver(
        self,
        entry: OutboxEntry,
        *,
        store: Store,
        client: FhirClient | None,
        identifier_system: str,
        dry_run: bool,
        now: datetime,
    ) -> bool:
        """Send one entry; False when the source is in dry-run and nothing was sent.

        :raises WebhookRetry: try again later (`retry_after` seconds at the earliest).
        :raises WebhookRefused: park it: refused by the receiver, or not to be sent.
        """
        recorded = _check_recorded(await asyncio.to_thread(_communication_entry, store, entry))
        contact = await asyncio.to_thread(_contact, store, entry)
        if dry_run:
            log.info("family_webhook_dry_run", entry_id=entry.id, task_id=entry.task_id)
            return False
        key = f"{recorded.task_id}-{recorded.id}"  # the Communication's identifier value
        identifier = {"system": identifier_system, "value": key}
        reference = await _communication_reference(client, f"{identifier_system}|{key}", entry)
        body = build_body(entry, contact, {"identifier": identifier, "reference": reference})
        await self._post(entry, body, now)
        return True

    def _headers(self, entry: OutboxEntry, content: bytes, now: datetime) -> dict[str, str]:
        try:
            secret = self.config.resolve_secret()
            token = self.config.resolve_bearer_token()
        except ConfigError as exc:  # names the variable, never a value
            raise WebhookRefused(f"not sent: {exc}") from None
        headers = dict(self.config.headers) | {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": user_agent("family-webhook"),
            "Idempotency-Key": idempotency_key(entry),
            "X-Fhir-Bridge-Event": EVENT,
            SIGNATURE_HEADER: sign(secret, int(now.timestamp()), content),
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _post(self, entry: OutboxEntry, body: dict[str, Any], now: datetime) -> None:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = self._headers(entry, content, now)
        started = time.perf_counter()
        status: int | None = None
        try:
            async with httpx.AsyncClient(
                timeout=self.config.timeout,
                transport=self._transport,
                follow_redirects=False,
                verify=tls_context(),
            ) as http:
                response = await http.post(self.url, content=content, headers=headers)
            status = response.status_code
        except httpx.TimeoutException:
            raise WebhookRetry(
                f"the webhook receiver did not answer within {self.config.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise WebhookRetry(
                f"the webhook receiver is unreachable ({type(exc).__name__})"
            ) from None
        finally:
            log.info(
                "family_webhook_post",
                entry_id=entry.id,
                task_id=entry.task_id,
                status=status,
                elapsed_ms=round((time.perf_counter() - started) * 1000),
            )
        _outcome(response, now)


def _outcome(response: httpx.Response, now: datetime) -> None:
    """Nothing on 2xx; else the error that retries or parks the entry (no body quoted: a
    receiver may echo the message or the contact back)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    text = f"the webhook receiver answered {status} {phrase}"
    if status in _RETRY_STATUSES or status >= 500:
        wait = parse_retry_after(response.headers.get("Retry-After"), now)
        raise WebhookRetry(text, status=status, retry_after=wait)
    raise WebhookRefused(text, status=status)
