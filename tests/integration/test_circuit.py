"""A source that keeps failing opens its circuit breaker; the other source keeps syncing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from fhir_bridge.api import create_app
from fhir_bridge.config import (
    CircuitBreakerConfig,
    Settings,
    SourceConfig,
    StorageConfig,
    WritebackConfig,
)
from fhir_bridge.runtime import Bridge
from tests.faultproxy import FaultProxy
from tests.integration.test_end_to_end import NOW, ROOT
from tests.sandbox_fixtures import seeded_server

pytestmark = pytest.mark.integration

TYPES = ("Patient", "Appointment", "Coverage")


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the sample population, shared by this module's tests."""
    return seeded_server(sekmet_factory)


def two_source_bridge(good_url: str, flaky_url: str, tmp_path: Path) -> Bridge:
    """Sources "good" (direct) and "flaky" (through the proxy, breaker at 2 failures)."""
    common: dict[str, object] = {
        "resource_types": TYPES,
        "page_size": 200,
        "retry_attempts": 2,
        "retry_max_wait": 0.05,
        "writeback": False,
    }
    settings = Settings(
        sources=(
            SourceConfig(name="good", base_url=good_url, **common),
            SourceConfig(
                name="flaky",
                base_url=flaky_url,
                circuit_breaker=CircuitBreakerConfig(failure_threshold=2, reset_timeout=3.0),
                **common,
            ),
        ),
        storage=StorageConfig(path=tmp_path / "bridge.db"),
        writeback=WritebackConfig(interval=0.1),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    return Bridge(settings, clock=lambda: NOW)


async def get_json(bridge: Bridge, path: str) -> httpx.Response:
    """GET `path` from the bridge's API (in-process ASGI)."""
    transport = httpx.ASGITransport(app=create_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        return await http.get(path)


async def test_failing_source_opens_its_breaker_and_recovers(seeded_url, tmp_path, monkeypatch):
    """503s from one source open its breaker after 2 attempts: its later types fail fast without
    a request, naming the source; the other source syncs fully; /sources and /metrics show the
    open breaker; once the source is healthy and the cool-down is over, a sync closes it."""
    monkeypatch.setenv("FHIR_BRIDGE_AUTH__ENABLED", "false")  # API auth is not under test
    async with FaultProxy(seeded_url) as proxy:
        proxy.plan(lambda method, target: method == "GET", ["503"] * 50)
        bridge = two_source_bridge(seeded_url, proxy.base_url, tmp_path)
        try:
            reports = {r.source: r for r in await bridge.sync_once()}
            assert reports["good"].ok, [t.error for t in reports["good"].types]
            assert bridge.store.resource_counts("good")["Patient"] > 0
            flaky = reports["flaky"]
            assert not flaky.ok
            errors = [t.error or "" for t in flaky.types]
            assert "HTTP 503" in errors[0]
            refused = [e for e in errors if "circuit breaker of source flaky is open" in e]
            assert len(refused) == len(TYPES) - 1
            assert len(proxy.requests) == 2, "only the attempts before the breaker opened"
            assert not any(bridge.store.resource_counts("flaky").values())

            listing = {s["name"]: s for s in (await get_json(bridge, "/sources")).json()}
            assert listing["flaky"]["circuit"]["state"] == "open"
            assert listing["flaky"]["circuit"]["last_failure"] == "HTTP 503"
            assert listing["flaky"]["last_ok"] is False
            assert listing["good"]["circuit"]["state"] == "closed"
            metrics = (await get_json(bridge, "/metrics")).text
            assert 'fhir_bridge_circuit_state{source="flaky"} 1.0' in metrics
            assert 'fhir_bridge_circuit_state{source="good"} 0.0' in metrics

            proxy.clear()
            await asyncio.sleep(3.1)  # past the cool-down: the next request is the probe
            [again] = await bridge.sync_once(only="flaky")
            assert again.ok, [t.error for t in again.types]
            assert bridge.guards["flaky"].breaker.snapshot()["state"] == "closed"
            assert bridge.store.resource_counts("flaky") == bridge.store.resource_counts("good")
            metrics = (await get_json(bridge, "/metrics")).text
            assert 'fhir_bridge_circuit_state{source="flaky"} 0.0' in metrics
        finally:
            bridge.close()
