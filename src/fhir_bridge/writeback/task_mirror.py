"""The FHIR `Task` that mirrors a coordinator task in its source EHR.

The EHR sees the work, not only its result: focus = the resource the task is about,
for = the patient, owner = the coordinator, status mapped to FHIR Task.status. The
identifier is derived from the task identity so a conditional create finds an earlier
mirror instead of making a second one.
"""

from __future__ import annotations

from typing import Any

from fhir_bridge.tasks.model import TaskStatus

KIND_SYSTEM = "urn:fhir-bridge:task-kind"
COORDINATOR_SYSTEM = "urn:fhir-bridge:coordinator"

# Our states -> FHIR R4 Task.status (required binding http://hl7.org/fhir/task-status).
FHIR_STATUS = {
    TaskStatus.OPEN: "requested",
    TaskStatus.IN_PROGRESS: "in-progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.CANCELLED: "cancelled",
}


def identifier_query(system: str, task_id: str) -> str:
    """The `If-None-Exist` / search query that finds a task's mirror."""
    return f"identifier={system}|{task_id}"


def build_task(
    snap: dict[str, Any], system: str, existing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The FHIR Task for a snapshot, merged over an `existing` mirror (keeping its other fields).

    :param snap: a `snapshot()` dict.
    :param system: the identifier system of this bridge installation.
    :param existing: the Task as the server has it now, when updating.
    """
    resource: dict[str, Any] = dict(existing or {})
    resource.pop("meta", None)
    status = TaskStatus(snap["status"])
    resource.update(
        {
            "resourceType": "Task",
            "identifier": [{"system": system, "value": snap["id"]}],
            "status": FHIR_STATUS[status],
            "businessStatus": {"text": snap["status"]},
            "intent": "order",
            "priority": snap["priority"],
            "code": {
                "coding": [{"system": KIND_SYSTEM, "code": snap["kind"]}],
                "text": snap["title"],
            },
            "focus": {"reference": snap["focus"]},
            "authoredOn": snap["created_at"],
            "lastModified": snap["updated_at"],
        }
    )
    if snap.get("patient"):
        resource["for"] = {"reference": snap["patient"]}
    if snap.get("assignee"):
        resource["owner"] = {
            "identifier": {"system": COORDINATOR_SYSTEM, "value": snap["assignee"]},
            "display": snap["assignee"],
        }
    else:
        resource.pop("owner", None)
    if snap.get("due"):
        resource["restriction"] = {"period": {"end": snap["due"]}}
    if snap.get("note"):
        resource["note"] = [*resource.get("note", []), {"text": snap["note"]}]
    return resource
