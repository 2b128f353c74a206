"""What `make demo` shows, from the demo's own settings (config/demo.yaml) against a real
SEKMET seeded with the sample: every resource type the default rules need is pulled, so the
family queue holds tasks with readable messages; the shipped bridge.yaml pulls the same."""

from __future__ import annotations

import pytest

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES, StorageConfig, load_settings
from fhir_bridge.runtime import Bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW, ROOT


@pytest.mark.parametrize("name", ["demo.yaml", "bridge.yaml"])
def test_shipped_settings_pull_every_default_type(name: str):
    """A source of the shipped settings lists every type the default rules read (family
    contacts and consents included): a type left out silently empties a queue."""
    settings = load_settings(ROOT / "config" / name)
    for source in settings.sources:
        assert set(source.resource_types) >= set(DEFAULT_RESOURCE_TYPES), source.name


@pytest.mark.integration
async def test_demo_settings_make_family_tasks_with_messages(sekmet_factory, tmp_path):
    """The demo's settings, pointed at a seeded SEKMET: a family task whose description is the
    prepared plain-language message, for a patient with an authorized contact."""
    base = load_settings(ROOT / "config" / "demo.yaml")
    source = base.sources[0].model_copy(update={"base_url": seeded_server(sekmet_factory)})
    settings = base.model_copy(
        update={"sources": (source,), "storage": StorageConfig(path=tmp_path / "demo.db")}
    )
    bridge = Bridge(settings, clock=lambda: NOW)
    try:
        [report] = await bridge.sync_once()
        assert report.ok, [t.error for t in report.types]
        messages = [
            t.description or ""
            for t in bridge.store.iter_tasks(queue="family")
            if t.rule_id == "family-appointment-booked"
        ]
        assert any(
            m.startswith("Deb's check-up with Dr. Carlos Miller is booked for") for m in messages
        )
        assert all(m and "{" not in m and "urn:" not in m for m in messages)
        decided = sorted(
            t.description or ""
            for t in bridge.store.iter_tasks(queue="family")
            if t.rule_id == "family-authorization-decided"
        )
        assert decided == [
            "Deb's insurance has answered the request to approve the check-up. We will explain "
            "what it means for the next steps.",
            "El seguro de Juana respondió a la solicitud de aprobación de la consulta de "
            "seguimiento. Le explicaremos qué significa para los próximos pasos.",
        ]
    finally:
        bridge.close()
