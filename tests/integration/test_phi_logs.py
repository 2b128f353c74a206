"""No PHI in any rendered log line or metric, across sync, API, claim/complete and write-back."""

from __future__ import annotations

import httpx
import pytest

from fhir_bridge.api import create_app
from tests.integration.test_end_to_end import make_bridge, phi_values
from tests.logcapture import json_log_lines
from tests.sandbox_fixtures import seeded_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the packaged sample population, for this module."""
    return seeded_server(sekmet_factory)


async def _exercise(bridge) -> str:
    """Sync twice, read through the API, claim and complete a task, deliver; return /metrics."""
    await bridge.sync_once()
    app = create_app(bridge)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bridge"
    ) as api:
        for path in ("/queues", "/sources", "/quarantine", "/readyz", "/healthz"):
            assert (await api.get(path)).status_code == 200, path
        task = (await api.get("/queues/insurance/tasks")).json()["items"][0]
        assert (await api.get(f"/tasks/{task['id']}")).status_code == 200
        claimed = await api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "dana"})
        assert claimed.status_code == 200, claimed.text
        done = await api.post(
            f"/tasks/{task['id']}/status",
            json={"coordinator": "dana", "status": "completed", "note": "called back"},
        )
        assert done.status_code == 200, done.text
        await bridge.deliver_once()
        await bridge.deliver_once()
        await bridge.sync_once()  # incremental: a _lastUpdated search
        metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    return metrics.text


async def test_no_phi_in_any_rendered_log_line_or_metric(seeded_url, tmp_path):
    """Every line as rendered to JSON, and the /metrics text, hold none of the sample's PHI."""
    phi = phi_values()
    assert len(phi) > 100
    bridge = make_bridge(seeded_url, tmp_path)
    try:
        with json_log_lines("DEBUG") as logs:
            metrics_text = await _exercise(bridge)
    finally:
        bridge.close()
    lines = logs.lines
    events = {line["event"] for line in lines}
    assert {"fhir_request", "sync_page", "http_request", "outbox_delivery"} <= events, events
    assert sum(line["event"] == "fhir_request" for line in lines) > 10
    assert sorted(v for v in phi if v in logs.text) == []
    assert "fhir_bridge_sync_resources_pulled_total" in metrics_text
    assert sorted(v for v in phi if v in metrics_text) == []


async def test_every_bridge_line_names_its_request_or_job(seeded_url, tmp_path):
    """Each line the bridge logs during the scenario carries a request_id or a job_id."""
    bridge = make_bridge(seeded_url, tmp_path)
    try:
        with json_log_lines("INFO") as logs:
            await _exercise(bridge)
    finally:
        bridge.close()
    ours = [line for line in logs.lines if "logger" not in line]  # stdlib lines have a logger
    assert len(ours) > 10
    orphans = [line["event"] for line in ours if "request_id" not in line and "job_id" not in line]
    assert orphans == []
    pages = [line for line in ours if line["event"] == "sync_page"]
    assert pages and all({"source", "resource_type", "job_id"} <= set(line) for line in pages)
