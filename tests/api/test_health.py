"""Tests for fhir_bridge.api.routes.health and api.middleware: probes, request ids, log lines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.config import Settings, SourceConfig
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync import status
from fhir_bridge.sync.engine import TypeReport
from tests.logcapture import json_log_lines
from tests.utils import NOW, ROOT


def make_bridge(*names: str) -> Bridge:
    """A bridge with an empty in-memory store and one source per name."""
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=tuple(SourceConfig(name=n, base_url=f"http://127.0.0.1:9/{n}") for n in names),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    return Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """A bridge with two sources that have not synced yet."""
    b = make_bridge("ehr", "lab")
    yield b
    b.close()


def synced(bridge: Bridge, source: str, error: str | None = None) -> None:
    """Record a run of the source's Patient sync in the store, as a sync process would."""
    status.record(bridge.store, source, TypeReport("Patient", error=error), NOW)


@pytest.fixture
def api(bridge: Bridge) -> TestClient:
    """A test client for the bridge's app."""
    return TestClient(create_app(bridge))


def test_healthz_is_ok_without_looking_at_anything(api):
    """/healthz answers 200 {"status": "ok"} (liveness: no dependency is checked)."""
    response = api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_ready_before_the_first_sync(api, bridge):
    """A fresh bridge is ready: store answers, rules loaded, sources pending (not failing)."""
    response = api.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["mappings"] == {"ok": True, "rules": len(bridge.rules.rules)}
    sources = body["checks"]["sources"]["sources"]
    assert {name: s["status"] for name, s in sources.items()} == {
        "ehr": "pending",
        "lab": "pending",
    }


def test_readyz_stays_ready_while_one_source_works(api, bridge):
    """One failing source out of two is reported but does not make the bridge unready."""
    synced(bridge, "ehr", "GET Patient on source ehr: HTTP 503")
    synced(bridge, "lab")
    response = api.get("/readyz")
    assert response.status_code == 200
    sources = response.json()["checks"]["sources"]["sources"]
    assert sources["ehr"]["status"] == "failing"
    assert sources["ehr"]["last_error"].endswith("HTTP 503")
    assert sources["lab"]["status"] == "ok"


def test_readyz_is_503_when_every_source_fails(api, bridge):
    """Every source failing answers 503 with the sources check marked not ok."""
    for name in bridge.source_state:
        synced(bridge, name, "HTTP 503")
    response = api.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["sources"]["ok"] is False
    assert body["checks"]["store"]["ok"] is True


def test_readyz_is_503_when_the_store_is_unreachable(api, bridge):
    """A store that cannot answer makes /readyz 503 and names the error class only."""
    bridge.store.close()
    response = api.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["store"] == {"ok": False, "error": "StoreError"}


def test_readyz_is_503_without_mapping_rules(api, bridge, monkeypatch):
    """A rule set with no rules in force means nothing to do: 503, mappings check failing."""
    monkeypatch.setattr(bridge.rules, "rules", [])
    response = api.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["mappings"] == {
        "ok": False,
        "rules": 0,
        "error": "no mapping rules loaded",
    }


def test_request_id_is_echoed_or_generated(api):
    """A sane X-Request-ID comes back unchanged; a missing or unsafe one is replaced."""
    given = api.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    fresh = api.get("/healthz")
    other = api.get("/healthz")
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert fresh.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    unsafe = api.get("/healthz", headers={"X-Request-ID": "x" * 65})
    assert unsafe.headers["X-Request-ID"] != "x" * 65


def test_every_request_line_carries_its_request_id(api, bridge):
    """The canonical http_request line and lines logged inside the route share the request id."""
    for name in bridge.source_state:
        synced(bridge, name, "HTTP 503")
    with json_log_lines("INFO") as logs:
        api.get("/readyz", headers={"X-Request-ID": "req-42"})
    lines = logs.lines
    assert [line["event"] for line in lines] == ["not_ready", "http_request"]
    assert {line["request_id"] for line in lines} == {"req-42"}
    canonical = lines[-1]
    assert (canonical["method"], canonical["route"], canonical["status"]) == (
        "GET",
        "/readyz",
        503,
    )
    assert isinstance(canonical["elapsed_ms"], float)


def test_canonical_line_names_the_route_template_not_the_path(api):
    """/tasks/<id> logs as /tasks/{task_id}; a path no route takes logs as 'unmatched'."""
    with json_log_lines() as logs:
        api.get("/tasks/0123456789abcdef0123")
        api.get("/no/such/Patient/123")
    routes = [line["route"] for line in logs.lines if line["event"] == "http_request"]
    assert routes == ["/tasks/{task_id}", "unmatched"]
    assert "0123456789abcdef0123" not in logs.text
    assert "Patient/123" not in logs.text


def test_metrics_endpoint_counts_api_requests(api):
    """/metrics is Prometheus text and counts earlier requests by route template and status."""
    api.get("/healthz")
    api.get("/tasks/nope")
    text = api.get("/metrics").text
    assert 'fhir_bridge_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert (
        'fhir_bridge_http_requests_total{method="GET",route="/tasks/{task_id}",status="404"} 1.0'
        in text
    )
