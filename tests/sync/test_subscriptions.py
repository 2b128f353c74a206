"""Tests for rest-hook notifications: parsing, the webhook routes (secret, 401, background
fetch through the source's client) and creating Subscriptions on a server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from fhir_bridge.api import create_app
from fhir_bridge.config import (
    Settings,
    SourceConfig,
    StorageConfig,
    SubscriptionConfig,
)
from fhir_bridge.errors import ConfigError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.runtime import Bridge
from fhir_bridge.sync.subscriptions import (
    InvalidNotification,
    Notification,
    SubscriptionHub,
    endpoint_for,
    parse_notification,
    subscribe,
)
from tests.utils import NOW, ROOT

BASE = "https://ehr.example.org/fhir"
SECRET = "s3cret-for-tests"
TYPES = ("Patient", "Appointment")


def patient(pid: str = "p1", version: str = "2") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": version, "lastUpdated": "2026-01-01T00:00:00Z"},
        "name": [{"family": "Test"}],
    }


def r4b_bundle(kind: str, focus: list[str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "type": kind,
        "subscription": {"reference": "Subscription/1"},
    }
    if focus is not None:
        status["notificationEvent"] = [
            {"eventNumber": str(i + 1), "focus": {"reference": ref}} for i, ref in enumerate(focus)
        ]
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}]}


def r4_backport_bundle(kind: str, focus: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}]
    if focus:
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": "1"},
                    {"name": "focus", "valueReference": {"reference": focus}},
                ],
            }
        )
    first = {"resourceType": "Parameters", "parameter": params}
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": first}]}


# -- parsing ------------------------------------------------------------------------------------


def test_put_path_names_the_resource():
    """PUT {endpoint}/Patient/p1 asks for Patient/p1 whatever the body."""
    note = parse_notification(patient(), TYPES, ("Patient", "p1"))
    assert note == Notification("event", (("Patient", "p1"),))


def test_empty_body_is_a_ping():
    """An empty POST (R4 without payload) names nothing: a ping."""
    assert parse_notification(None, TYPES) == Notification("ping")


def test_posted_resource_is_an_event():
    """A resource POSTed to the endpoint (post-endpoint style) names itself."""
    assert parse_notification(patient("x"), TYPES).targets == (("Patient", "x"),)


def test_r4b_handshake_heartbeat_and_event():
    """R4B SubscriptionStatus bundles: handshake, heartbeat, event focus refs (absolute,
    versioned) become targets; types we do not sync are ignored."""
    assert parse_notification(r4b_bundle("handshake"), TYPES).kind == "handshake"
    assert parse_notification(r4b_bundle("heartbeat"), TYPES).kind == "heartbeat"
    note = parse_notification(
        r4b_bundle(
            "event-notification",
            [f"{BASE}/Patient/p1/_history/3", "Appointment/a1", "Observation/o1"],
        ),
        TYPES,
    )
    assert note == Notification("event", (("Appointment", "a1"), ("Patient", "p1")))


def test_r4_backport_parameters_event_and_empty_content():
    """R4 backport Parameters: a focus ref is fetched; an event without focus is a ping."""
    note = parse_notification(r4_backport_bundle("event-notification", "Patient/p9"), TYPES)
    assert note.targets == (("Patient", "p9"),)
    assert parse_notification(r4_backport_bundle("event-notification"), TYPES).kind == "ping"
    assert parse_notification(r4_backport_bundle("handshake"), TYPES).kind == "handshake"


@pytest.mark.parametrize("body", [[1, 2], {"no": "type"}, {"resourceType": "Patient"}])
def test_nonsense_bodies_are_refused(body):
    """A JSON array, an object without resourceType, a resource without id: invalid."""
    with pytest.raises(InvalidNotification):
        parse_notification(body, TYPES)


def test_path_with_bad_id_is_refused():
    """A path id outside the FHIR id syntax is refused, not fetched."""
    with pytest.raises(InvalidNotification):
        parse_notification(None, TYPES, ("Patient", "a b"))


# -- the webhook --------------------------------------------------------------------------------


@pytest.fixture
def bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bridge]:
    """A bridge with one subscribed source at BASE (secret from the environment)."""
    monkeypatch.setenv("TEST_BRIDGE_SUB_SECRET", SECRET)
    monkeypatch.setenv("FHIR_BRIDGE_AUTH__ENABLED", "false")  # the webhook has its own secret
    settings = Settings(
        sources=(
            SourceConfig(
                name="ehr",
                base_url=BASE,
                resource_types=TYPES,
                retry_attempts=1,
                subscription=SubscriptionConfig(secret_env="TEST_BRIDGE_SUB_SECRET"),
            ),
            SourceConfig(name="plain", base_url="https://other.example.org/fhir"),
        ),
        storage=StorageConfig(path=tmp_path / "bridge.db"),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    b = Bridge(settings, clock=lambda: NOW)
    yield b
    b.close()


@pytest.fixture
async def api(bridge: Bridge) -> AsyncIterator[httpx.AsyncClient]:
    """An async client for the bridge's app (in-process ASGI)."""
    transport = httpx.ASGITransport(app=create_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        yield http


@pytest.fixture
def fhir() -> Iterator[respx.MockRouter]:
    """respx router for the source's FHIR server."""
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def hub(api: httpx.AsyncClient) -> SubscriptionHub:
    """The hub behind the app (made by the first notification)."""
    app = api._transport.app  # type: ignore[attr-defined]
    found: SubscriptionHub = app.state.subscription_hub
    return found


@pytest.mark.parametrize("headers", [{}, {"X-Bridge-Secret": "wrong"}])
async def test_missing_or_wrong_secret_is_401(api, fhir, headers):
    """No secret or a wrong one: 401 and nothing fetched."""
    route = fhir.get("/Patient/p1").mock(return_value=httpx.Response(200, json=patient()))
    answer = await api.put("/subscriptions/ehr/Patient/p1", json=patient(), headers=headers)
    assert answer.status_code == 401
    assert route.call_count == 0


async def test_source_without_subscription_settings_is_404(api):
    """Only sources with a `subscription` block accept notifications."""
    answer = await api.post("/subscriptions/plain", headers={"X-Bridge-Secret": SECRET})
    assert answer.status_code == 404
    assert (await api.post("/subscriptions/nope")).status_code == 404


async def test_put_notification_fetches_and_ingests_the_resource(api, fhir, bridge):
    """PUT {endpoint}/Patient/p1 answers at once; the resource is then read from the source
    (not taken from the payload) and stored."""
    route = fhir.get("/Patient/p1").mock(return_value=httpx.Response(200, json=patient()))
    payload = patient(version="1") | {"name": [{"family": "Spoofed"}]}
    answer = await api.put(
        "/subscriptions/ehr/Patient/p1", json=payload, headers={"X-Bridge-Secret": SECRET}
    )
    assert answer.status_code == 200
    await asyncio.wait_for(hub(api).drain(), timeout=5)
    assert route.call_count == 1
    stored = bridge.store.get_resource("ehr", "Patient", "p1")
    assert stored is not None and stored.version_id == "2"
    assert stored.body["name"][0]["family"] == "Test"
    status = (await api.get("/subscriptions")).json()
    assert [s["source"] for s in status] == ["ehr"]
    assert status[0]["fetched"] == 1 and status[0]["notifications"] == 1
    assert status[0]["last_notification"] == NOW.isoformat()


async def test_gone_and_failing_reads_are_counted_not_raised(api, fhir, bridge):
    """A resource deleted since (410) and a server error are recorded; the app keeps going."""
    fhir.get("/Patient/gone").mock(return_value=httpx.Response(410))
    fhir.get("/Patient/boom").mock(return_value=httpx.Response(500))
    headers = {"X-Bridge-Secret": SECRET}
    for pid in ("gone", "boom"):
        assert (await api.put(f"/subscriptions/ehr/Patient/{pid}", headers=headers)).is_success
    await asyncio.wait_for(hub(api).drain(), timeout=5)
    state = hub(api).status("ehr")
    assert state["gone"] == 1 and state["fetch_errors"] == 1
    assert "HTTP 500" in state["last_error"]
    assert bridge.store.get_resource("ehr", "Patient", "boom") is None


async def test_heartbeat_is_recorded_and_empty_post_requests_a_sync(api, fhir):
    """A backport heartbeat updates last_heartbeat; an empty POST starts an incremental sync
    of the source (in the background)."""
    headers = {"X-Bridge-Secret": SECRET}
    answer = await api.post("/subscriptions/ehr", json=r4b_bundle("heartbeat"), headers=headers)
    assert answer.status_code == 200
    synced: list[str] = []

    async def fake_sync(name: str) -> None:
        synced.append(name)

    hub(api).sync = fake_sync
    assert (await api.post("/subscriptions/ehr", headers=headers)).status_code == 200
    await asyncio.wait_for(hub(api).drain(), timeout=5)
    assert synced == ["ehr"]
    state = hub(api).status("ehr")
    assert state["last_heartbeat"] == NOW.isoformat()
    assert state["notifications"] == 2 and state["syncs_requested"] == 1


async def test_bad_json_is_400(api):
    """A body that is not JSON is refused with 400."""
    answer = await api.post(
        "/subscriptions/ehr", content=b"{nope", headers={"X-Bridge-Secret": SECRET}
    )
    assert answer.status_code == 400


async def test_unset_secret_env_is_503(api, monkeypatch):
    """When the secret's environment variable is missing the endpoint refuses (503)."""
    monkeypatch.delenv("TEST_BRIDGE_SUB_SECRET")
    answer = await api.post("/subscriptions/ehr", headers={"X-Bridge-Secret": SECRET})
    assert answer.status_code == 503
    assert SECRET not in answer.text


# -- creating Subscriptions ---------------------------------------------------------------------


async def test_subscribe_creates_one_per_type_and_keeps_existing(fhir, monkeypatch):
    """One rest-hook Subscription per type with payload and the secret header; a type that
    already has one of ours (same endpoint and criteria) is not created again."""
    monkeypatch.setenv("TEST_BRIDGE_SUB_SECRET", SECRET)
    source = SourceConfig(
        name="ehr",
        base_url=BASE,
        resource_types=TYPES,
        subscription=SubscriptionConfig(secret_env="TEST_BRIDGE_SUB_SECRET"),
    )
    endpoint = endpoint_for("https://bridge.example.org/", "ehr")
    assert endpoint == "https://bridge.example.org/subscriptions/ehr"
    existing = {
        "resourceType": "Subscription",
        "id": "old",
        "status": "active",
        "criteria": "Patient?",
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    }
    fhir.get("/Subscription").mock(
        return_value=httpx.Response(
            200, json={"resourceType": "Bundle", "entry": [{"resource": existing}]}
        )
    )
    created = fhir.post("/Subscription").mock(
        return_value=httpx.Response(
            201, json={"resourceType": "Subscription", "id": "new", "status": "requested"}
        )
    )
    async with FhirClient(BASE) as client:
        results = await subscribe(source, client, endpoint)
    assert [(r.resource_type, r.created, r.subscription_id) for r in results] == [
        ("Patient", False, "old"),
        ("Appointment", True, "new"),
    ]
    sent = json.loads(created.calls.last.request.content)
    assert sent["criteria"] == "Appointment?"
    assert sent["channel"] == {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "header": [f"X-Bridge-Secret: {SECRET}"],
    }


async def test_subscribe_needs_subscription_settings():
    """A source without a `subscription` block cannot be subscribed."""
    source = SourceConfig(name="ehr", base_url=BASE)
    async with FhirClient(BASE) as client:
        with pytest.raises(ConfigError, match="subscription"):
            await subscribe(source, client, "https://bridge.example.org/subscriptions/ehr")
