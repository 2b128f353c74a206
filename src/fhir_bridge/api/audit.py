"""The audit trail: every read of a patient's consolidated history and every task change is
recorded (who, which patient, when, from where, with what outcome), shaped as a FHIR AuditEvent.

Routes only declare what is being done (`AuditIntent`, set by `access.guard`); this middleware
writes the records once the answer's status is known and before the answer leaves, so a
change whose record cannot be written answers 500 instead of going unrecorded. Records hold
references and ids only, never names, notes or bodies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_bridge.runtime import Bridge
from fhir_bridge.store.base import AuditRecord

AUDIT_STATE = "audit_intent"  # the request.state attribute `access.guard` sets
_EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
_SUBTYPE_SYSTEM = "urn:fhir-bridge:audit"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"


@dataclass
class AuditIntent:
    """What a request is about to do, recorded when it has answered."""

    subtype: str
    action: str
    agent: str
    roles: tuple[str, ...]
    address: str | None
    task_ids: list[str] = field(default_factory=list)
    patient: str | None = None
    source: str | None = None
    # (source, Patient/<id>) pairs when a change concerns several patients' records (links)
    patients: list[tuple[str, str]] = field(default_factory=list)
    written: bool = False  # set by `write`: the middleware then leaves it alone


def outcome(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor failure, 8 serious failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def records(intent: AuditIntent, status: int, now: datetime, bridge: Bridge) -> list[AuditRecord]:
    """One record per task touched (the task's patient looked up), else one for the patient."""
    base = {
        "recorded": now,
        "subtype": intent.subtype,
        "action": intent.action,
        "outcome": outcome(status),
        "agent": intent.agent,
        "roles": intent.roles,
        "address": intent.address,
        "status_code": status,
    }
    if intent.patients:
        return [
            AuditRecord(**base, patient=patient, source=source)  # type: ignore[arg-type]
            for source, patient in intent.patients
        ]
    if not intent.task_ids:
        return [AuditRecord(**base, patient=intent.patient, source=intent.source)]  # type: ignore[arg-type]
    out = []
    for task_id in intent.task_ids:
        task = bridge.store.get_task(task_id)
        out.append(
            AuditRecord(
                **base,  # type: ignore[arg-type]
                task_id=task_id,
                patient=task.patient if task else None,
                source=task.source if task else None,
            )
        )
    return out


def write(intent: AuditIntent, status: int, bridge: Bridge) -> None:
    """Write the intent's records now, once: a route already in a worker thread calls this
    just before it answers (the patient history does), which spares the middleware's own
    thread hop; the middleware writes every intent not written yet."""
    if intent.written:
        return
    for record in records(intent, status, bridge.clock(), bridge):
        bridge.store.add_audit(record)
    intent.written = True


class AuditMiddleware:
    """Writes the records of an `AuditIntent` a route left in the request state."""

    def __init__(self, app: ASGIApp, bridge: Bridge) -> None:
        self.app = app
        self.bridge = bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the call through, recording the intent (if any) as the answer starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                intent = scope.get("state", {}).get(AUDIT_STATE)
                if isinstance(intent, AuditIntent) and not intent.written:
                    await asyncio.to_thread(write, intent, message["status"], self.bridge)
            await send(message)

        await self.app(scope, receive, send_audited)


def audit_event(record: AuditRecord) -> dict[str, Any]:
    """The record as a FHIR R4 AuditEvent."""
    agent: dict[str, Any] = {
        "who": {"identifier": {"value": record.agent}},
        "requestor": True,
        "role": [{"text": role} for role in record.roles],
    }
    if record.address:
        agent["network"] = {"address": record.address, "type": "2"}  # 2: IP address
    entity: list[dict[str, Any]] = []
    if record.patient:
        what: dict[str, Any] = {"reference": record.patient}
        if record.source:
            what["extension"] = [{"url": "urn:fhir-bridge:source", "valueString": record.source}]
        entity.append({"what": what, "type": {"system": _ENTITY_TYPE, "code": "1"}})
    if record.task_id:
        entity.append(
            {
                "what": {"identifier": {"system": "urn:fhir-bridge:task", "value": record.task_id}},
                "type": {"system": _ENTITY_TYPE, "code": "2"},
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record.id),
        "type": _EVENT_TYPE,
        "subtype": [{"system": _SUBTYPE_SYSTEM, "code": record.subtype}],
        "action": record.action,
        "recorded": record.recorded.isoformat(),
        "outcome": record.outcome,
        "agent": [agent],
        "source": {"observer": {"display": "fhir_bridge"}},
        "entity": entity,
    }
    if record.status_code is not None:
        event["outcomeDesc"] = f"HTTP {record.status_code}"
    return event
