"""Rest-hook notification endpoints: ``/subscriptions/{source}`` (and ``/{Type}/{id}``).

Every request must carry the source's shared secret in ``X-Bridge-Secret`` (401 otherwise).
The answer is immediate; the fetch of the named resources runs in the background.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.errors import ConfigError
from fhir_bridge.logging import get_logger
from fhir_bridge.runtime import Bridge
from fhir_bridge.sync.subscriptions import (
    InvalidNotification,
    SubscriptionHub,
    Target,
    parse_notification,
)

router = APIRouter(tags=["subscriptions"])
log = get_logger("api.subscriptions")
MAX_BODY = 10 * 1024 * 1024
_OK = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational", "diagnostics": "accepted"}],
}

SecretHeader = Annotated[str | None, Header(alias="X-Bridge-Secret")]


def hub_for(request: Request, bridge: Bridge) -> SubscriptionHub:
    """The app's notification hub (made on first use, shared by all requests)."""
    hub: SubscriptionHub | None = getattr(request.app.state, "subscription_hub", None)
    if hub is None:
        hub = SubscriptionHub(
            sources={s.name: s for s in bridge.settings.sources},
            ingestor=bridge.ingestor,
            client_for=bridge.client,
            clock=bridge.clock,
            sync=lambda name: bridge.sync_once(only=name),
        )
        request.app.state.subscription_hub = hub
    return hub


async def _receive(
    request: Request, bridge: Bridge, source: str, secret: str | None, target: Target | None
) -> Response:
    hub = hub_for(request, bridge)
    src = hub.source(source)
    if src is None:
        raise HTTPException(404, f"source {source!r} does not accept notifications")
    try:
        ok = hub.authorised(src, secret)
    except ConfigError as exc:
        log.error("subscription_secret_missing", source=source)
        raise HTTPException(503, str(exc)) from None
    if not ok:
        log.warning("subscription_unauthorised", source=source)
        raise HTTPException(401, f"missing or wrong X-Bridge-Secret for source {source}")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(413, "notification too large")
    body: Any = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
    try:
        note = parse_notification(body, src.resource_types, target)
    except InvalidNotification as exc:
        raise HTTPException(400, str(exc)) from None
    hub.accept(src, note)
    return Response(json.dumps(_OK), status_code=200, media_type="application/fhir+json")


_NOTIFY = "Receive a rest-hook notification (empty ping, resource or notification Bundle)"
_NOTIFY_RESOURCE = "Receive an R4 rest-hook notification with payload (PUT {endpoint}/{Type}/{id})"


@router.post("/subscriptions/{source}", summary=_NOTIFY, operation_id="notify_post")
@router.put("/subscriptions/{source}", summary=_NOTIFY, operation_id="notify_put")
async def notify(
    source: str, request: Request, bridge: BridgeDep, secret: SecretHeader = None
) -> Response:
    """Empty POST: sync the source; a resource or backport Bundle: fetch what it names."""
    return await _receive(request, bridge, source, secret, None)


@router.post(
    "/subscriptions/{source}/{resource_type}/{resource_id}",
    summary=_NOTIFY_RESOURCE,
    operation_id="notify_resource_post",
)
@router.put(
    "/subscriptions/{source}/{resource_type}/{resource_id}",
    summary=_NOTIFY_RESOURCE,
    operation_id="notify_resource_put",
)
async def notify_resource(
    source: str,
    resource_type: str,
    resource_id: str,
    request: Request,
    bridge: BridgeDep,
    secret: SecretHeader = None,
) -> Response:
    """Fetch the named resource from the source (the payload is not trusted as data)."""
    return await _receive(request, bridge, source, secret, (resource_type, resource_id))


@router.get("/subscriptions", summary="Notification status per source")
def subscription_status(request: Request, bridge: BridgeDep) -> list[dict[str, Any]]:
    """Last notification, heartbeat and handshake times and counts of each subscribed source.

    Polling keeps running on each source's poll_interval: it is the safety net when
    notifications stop.
    """
    hub = hub_for(request, bridge)
    return [
        {"source": s.name, "poll_interval": s.poll_interval, **hub.status(s.name)}
        for s in bridge.settings.sources
        if s.subscription is not None
    ]
