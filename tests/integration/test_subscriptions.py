"""A real rest-hook Subscription on SEKMET delivering to the bridge's API served by uvicorn:
an update on the server reaches the store without a sync run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from fhir_bridge.api import create_app
from fhir_bridge.cli import app as cli_app
from fhir_bridge.config import load_settings
from fhir_bridge.runtime import Bridge
from tests.utils import NOW, ROOT

pytestmark = pytest.mark.integration

SECRET = "integration-hook-secret"
SECRET_ENV = "TEST_BRIDGE_HOOK_SECRET"


@contextlib.asynccontextmanager
async def serve(bridge: Bridge) -> AsyncIterator[str]:
    """The bridge's API on a free 127.0.0.1 port (uvicorn in this event loop); yields its URL."""
    config = uvicorn.Config(
        create_app(bridge), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # surfaces the start-up error
                await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def write_config(tmp_path: Path, fhir_url: str, endpoint_base: str) -> Path:
    """A settings file with one subscribed source (secret from the environment)."""
    path = tmp_path / "bridge.yaml"
    settings = {
        "sources": [
            {
                "name": "sekmet",
                "base_url": fhir_url,
                "resource_types": ["Patient"],
                "poll_interval": 3600,
                "subscription": {"secret_env": SECRET_ENV, "endpoint_base": endpoint_base},
            }
        ],
        "storage": {"path": str(tmp_path / "bridge.db")},
        "mappings_dir": str(ROOT / "mappings"),
        "profiles_dir": str(ROOT / "profiles"),
        "auth": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


async def test_rest_hook_update_reaches_the_store_without_a_sync(
    sekmet_factory, tmp_path, monkeypatch
):
    """`sources subscribe` creates an active Subscription on SEKMET; updating a Patient there
    makes SEKMET PUT the notification to the bridge, which reads and stores the new version
    (bounded wait) while no sync run happens."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    fhir_url = sekmet_factory().base_url
    async with httpx.AsyncClient(base_url=fhir_url + "/") as http:
        made = await http.post(
            "Patient",
            json={"resourceType": "Patient", "name": [{"family": "Before"}], "gender": "female"},
        )
        assert made.status_code == 201
        patient = made.json()

        bridge: Bridge | None = None
        try:
            # The port is known only once uvicorn listens: write the config, then the bridge.
            placeholder = write_config(tmp_path, fhir_url, "http://127.0.0.1:1")
            bridge = Bridge(load_settings(placeholder), clock=lambda: NOW)
            async with serve(bridge) as base:
                config = write_config(tmp_path, fhir_url, base)
                result = await asyncio.to_thread(
                    CliRunner().invoke,
                    cli_app,
                    ["-c", str(config), "sources", "subscribe", "sekmet"],
                )
                assert result.exit_code == 0, result.output
                assert "created Subscription/" in result.output
                assert SECRET not in result.output
                subs = (await http.get("Subscription")).json()["entry"]
                [sub] = [e["resource"] for e in subs]
                assert sub["criteria"] == "Patient?"
                assert sub["channel"]["endpoint"] == f"{base}/subscriptions/sekmet"
                assert sub["status"] == "active", sub.get("error")

                again = await asyncio.to_thread(
                    CliRunner().invoke,
                    cli_app,
                    ["-c", str(config), "sources", "subscribe", "sekmet"],
                )
                assert again.exit_code == 0 and "exists" in again.output, again.output
                assert len((await http.get("Subscription")).json()["entry"]) == 1

                patient["name"] = [{"family": "After"}]
                updated = await http.put(f"Patient/{patient['id']}", json=patient)
                assert updated.status_code == 200
                version = updated.json()["meta"]["versionId"]

                deadline = time.monotonic() + 15
                stored = None
                while time.monotonic() < deadline:
                    stored = bridge.store.get_resource("sekmet", "Patient", patient["id"])
                    if stored is not None and stored.version_id == version:
                        break
                    await asyncio.sleep(0.1)
                assert stored is not None and stored.version_id == version
                assert stored.body["name"][0]["family"] == "After"
                assert bridge.source_state["sekmet"].runs == 0, "no sync run was involved"
                status = (await http.get(f"{base}/subscriptions")).json()
                assert status[0]["fetched"] >= 1 and status[0]["last_notification"]
        finally:
            if bridge is not None:
                bridge.close()
