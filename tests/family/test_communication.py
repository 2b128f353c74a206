"""Family tasks end to end against a real SEKMET: the sample's consented contacts make family
tasks on a sync, and completing one records the prepared message as a FHIR Communication
(recipient the RelatedPerson, sender the coordinator, about the focus), read back over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_bridge.tasks.model import MIRROR_ACTION, TaskStatus
from tests.expected import expected_family_tasks
from tests.integration.test_end_to_end import make_bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW

pytestmark = pytest.mark.integration

JUANA = "Patient/90f9d712-26ae-4373-8e79-80b85fbbaa46"


def _search(url: str, resource_type: str, **params: str) -> list[dict[str, Any]]:
    """The resources of a search (first page)."""
    resp = httpx.get(f"{url}/{resource_type}", params=params)
    assert resp.status_code == 200, resp.text
    return [e["resource"] for e in resp.json().get("entry", [])]


async def test_completing_a_family_task_writes_the_message_as_a_communication(
    sekmet_factory, tmp_path
):
    """Sync pulls RelatedPerson and Consent, the family queue holds the expected tasks, and a
    completed Spanish no-show task becomes one Communication carrying the message text."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        [report] = await bridge.sync_once()
        assert report.ok, [t.error for t in report.types]
        counts = bridge.store.resource_counts("sekmet")
        assert counts["RelatedPerson"] > 0 and counts["Consent"] > 0
        expected = {k: v for k, v in expected_family_tasks(NOW).items() if v}
        family = list(bridge.store.iter_tasks(queue="family"))
        got: dict[str, int] = {}
        for t in family:
            got[t.rule_id] = got.get(t.rule_id, 0) + 1
        assert got == expected

        [task] = [t for t in family if t.rule_id == "family-appointment-missed"]
        assert task.patient == JUANA
        assert task.description and task.description.startswith("Juana no pudo asistir")
        bridge.tasks.claim(task.id, "ann")
        bridge.tasks.change_status(task.id, TaskStatus.COMPLETED, "ann", note="called Diego")
        for _ in range(5):
            if not bridge.store.due_outbox(NOW):
                break
            await bridge.deliver_once()
        entries = bridge.store.list_outbox(task_id=task.id)
        assert {e.status.value for e in entries} == {"delivered"}
        assert [e.action for e in entries if e.action != MIRROR_ACTION] == ["create"]

        [entry] = [e for e in entries if e.action == "create"]
        key = f"{bridge.settings.writeback.identifier_system}|{task.id}-{entry.id}"
        [sent] = _search(url, "Communication", identifier=key)
        assert sent["about"] == [{"reference": f"Appointment/{task.focus_id}"}]
        assert sent["status"] == "completed"
        assert sent["payload"] == [{"contentString": task.description}]
        assert sent["recipient"] == [{"reference": "RelatedPerson/family-juana-son"}]
        assert sent["subject"] == {"reference": JUANA}
        assert sent["sender"]["identifier"] == {
            "system": "urn:fhir-bridge:coordinator",
            "value": "ann",
        }
        assert sent["category"][0]["coding"][0]["code"] == "family-update"
    finally:
        bridge.close()
