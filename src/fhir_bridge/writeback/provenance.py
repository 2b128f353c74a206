"""A FHIR `Provenance` for every write the bridge makes on a coordinator's behalf.

target = the resource version written, agent = the coordinator (a Practitioner known by
identifier) and the bridge (a Device), activity = CREATE or UPDATE, recorded = when. A tag
derived from the outbox entry lets a conditional create find an earlier Provenance, so a
retried delivery never records the same write twice.
"""

from __future__ import annotations

from typing import Any

from fhir_bridge.writeback.task_mirror import COORDINATOR_SYSTEM

WRITE_TAG_SYSTEM = "urn:fhir-bridge:write"
DEVICE_SYSTEM = "urn:fhir-bridge:device"
_ACTIVITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_AGENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def tag_query(key: str) -> str:
    """The `If-None-Exist` query that finds the Provenance of one write."""
    return f"_tag={WRITE_TAG_SYSTEM}|{key}"


def _agent(role: str, who: dict[str, Any]) -> dict[str, Any]:
    return {"type": {"coding": [{"system": _AGENT_TYPE_SYSTEM, "code": role}]}, "who": who}


def build_provenance(
    *,
    target: str,
    version: str | None,
    activity: str,
    coordinator: str | None,
    recorded: str,
    key: str,
) -> dict[str, Any]:
    """The Provenance of one write.

    :param target: the reference written (``Appointment/a1``).
    :param version: the version the write made, when the server said it.
    :param activity: ``CREATE`` or ``UPDATE`` (v3 DataOperation).
    :param coordinator: the coordinator's id (the author), or None for the bridge alone.
    :param recorded: when, as an ISO instant.
    :param key: identifies the write (task and outbox entry) for the conditional create.
    """
    reference = f"{target}/_history/{version}" if version else target
    agents = []
    if coordinator:
        who = {
            "type": "Practitioner",
            "identifier": {"system": COORDINATOR_SYSTEM, "value": coordinator},
        }
        agents.append(_agent("author", who))
    device = {
        "type": "Device",
        "identifier": {"system": DEVICE_SYSTEM, "value": "fhir-bridge"},
        "display": "fhir_bridge",
    }
    agents.append(_agent("performer" if coordinator is None else "assembler", device))
    return {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": WRITE_TAG_SYSTEM, "code": key}]},
        "target": [{"reference": reference}],
        "recorded": recorded,
        "activity": {"coding": [{"system": _ACTIVITY_SYSTEM, "code": activity}]},
        "agent": agents,
    }
