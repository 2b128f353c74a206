"""Rest-hook Subscriptions: turn a source's notifications into targeted reads, and create them.

What arrives (all authenticated by the source's shared secret in ``X-Bridge-Secret``):

- R4 with payload: ``PUT {endpoint}/{Type}/{id}`` (or ``POST {endpoint}`` with the resource);
- R4 without payload: an empty ``POST {endpoint}``: something changed, we are not told what;
- R4B/R5 backport: a ``history`` Bundle whose first entry (``SubscriptionStatus`` or R4
  ``Parameters``) says ``handshake``, ``heartbeat`` or ``event-notification`` with focus refs.

A payload is never trusted as data: each named resource is read from the source through its
own client (auth, rate limit, breaker) and ingested like a sync page. A notification that names
nothing (empty POST, ``empty`` content) asks for an incremental sync of the source.

Polling is the safety net: the bridge's poll loop keeps running on ``poll_interval`` whatever
the notifications do, so a lost or stopped notification delays a change by at most one interval.
The time of the last notification per source is kept (see :meth:`SubscriptionHub.status`) so an
operator sees when a server stopped notifying.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import ConfigError, FhirRequestError, ResourceNotFound
from fhir_bridge.fhir import FhirClient
from fhir_bridge.logging import get_logger
from fhir_bridge.sync.ingest import Ingestor

log = get_logger("subscriptions")

SECRET_HEADER = "X-Bridge-Secret"  # noqa: S105 - a header name, not a secret
SUBSCRIPTION_REASON = "fhir-bridge: targeted fetch of changed resources"
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_MAX_TARGETS = 1000  # a notification naming more than this is treated as "sync everything"

Kind = Literal["event", "heartbeat", "handshake", "ping"]
Target = tuple[str, str]


class InvalidNotification(ValueError):
    """The body is neither empty, a resource, nor a notification Bundle."""


@dataclass(frozen=True)
class Notification:
    """What a notification asks of us: fetch `targets`, or (none named) sync the source."""

    kind: Kind
    targets: tuple[Target, ...] = ()


@dataclass
class SubscriptionStatus:
    """Per source, for operators (no PHI: counts, times and error classes only)."""

    last_notification: str | None = None
    last_heartbeat: str | None = None
    last_handshake: str | None = None
    notifications: int = 0
    fetched: int = 0
    gone: int = 0
    fetch_errors: int = 0
    syncs_requested: int = 0
    last_error: str | None = None


def _target(reference: Any, allowed: Iterable[str]) -> Target | None:
    """``Type/id`` (also absolute or with ``_history``) -> (Type, id), if it is one we sync."""
    if not isinstance(reference, str):
        return None
    parts = [p for p in reference.split("?", 1)[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if not _TYPE_RE.fullmatch(rtype) or not _ID_RE.fullmatch(rid) or not rid.strip("."):
        return None
    return (rtype, rid) if rtype in allowed else None


def _backport(first: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """(type, focus references) of an R4B SubscriptionStatus or an R4 backport Parameters."""
    if first.get("resourceType") == "SubscriptionStatus":
        events = first.get("notificationEvent") or []
        focus = [(e.get("focus") or {}).get("reference") for e in events if isinstance(e, dict)]
        kind = first.get("type")
        return kind if isinstance(kind, str) else None, focus
    kind = None
    focus = []
    for param in first.get("parameter") or []:
        if not isinstance(param, dict):
            continue
        if param.get("name") == "type":
            kind = param.get("valueCode")
        elif param.get("name") in ("notification-event", "notificationEvent"):
            for part in param.get("part") or []:
                if isinstance(part, dict) and part.get("name") == "focus":
                    focus.append((part.get("valueReference") or {}).get("reference"))
    return kind if isinstance(kind, str) else None, focus


def parse_notification(
    body: Any, resource_types: Iterable[str], path_target: Target | None = None
) -> Notification:
    """Read one notification; resource types outside `resource_types` are ignored.

    :param body: the parsed JSON body (``None`` for an empty body).
    :param path_target: (Type, id) from a ``PUT {endpoint}/{Type}/{id}`` path.
    :raises InvalidNotification: a body we cannot make sense of.
    """
    allowed = frozenset(resource_types)
    if path_target is not None:
        target = _target(f"{path_target[0]}/{path_target[1]}", allowed)
        if target is None and (
            not _TYPE_RE.fullmatch(path_target[0]) or not _ID_RE.fullmatch(path_target[1])
        ):
            raise InvalidNotification("the path does not name a FHIR resource")
        return Notification("event", (target,) if target else ())
    if body is None:
        return Notification("ping")
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise InvalidNotification("the body is not a FHIR resource")
    entries = body.get("entry") if body["resourceType"] == "Bundle" else None
    if body["resourceType"] == "Bundle" and body.get("type") in (
        "history",
        "subscription-notification",
    ):
        first = entries[0].get("resource") if isinstance(entries, list) and entries else None
        if isinstance(first, dict) and first.get("resourceType") in (
            "SubscriptionStatus",
            "Parameters",
        ):
            kind, focus = _backport(first)
            if kind == "handshake":
                return Notification("handshake")
            if kind == "heartbeat":
                return Notification("heartbeat")
            if kind not in ("event-notification", "query-event"):
                return Notification("heartbeat")  # query-status and the like: a sign of life
            targets = {t for ref in focus if (t := _target(ref, allowed)) is not None}
            for entry in entries[1:] if isinstance(entries, list) else []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict):
                    found = _target(f"{res.get('resourceType')}/{res.get('id')}", allowed)
                    if found:
                        targets.add(found)
            if not targets and not focus:
                return Notification("ping")  # 'empty' content: we are not told what changed
            return Notification("event", tuple(sorted(targets)))
    if not isinstance(body.get("id"), str):
        raise InvalidNotification("the resource has no id")
    found = _target(f"{body['resourceType']}/{body['id']}", allowed)
    return Notification("event", (found,) if found else ())


ClientFactory = Callable[[SourceConfig], AbstractAsyncContextManager[FhirClient]]
SyncRequest = Callable[[str], Awaitable[object]]


@dataclass
class SubscriptionHub:
    """Accept notifications for the configured sources and fetch what they name, in the
    background (a webhook never waits for the EHR).

    :param client_for: opens a FHIR client for a source (the bridge's, sharing its guards).
    :param sync: runs an incremental sync of one source (for notifications naming nothing).
    """

    sources: dict[str, SourceConfig]
    ingestor: Ingestor
    client_for: ClientFactory
    clock: Callable[[], datetime]
    sync: SyncRequest | None = None
    _status: dict[str, SubscriptionStatus] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _syncing: set[str] = field(default_factory=set)

    def source(self, name: str) -> SourceConfig | None:
        """The source if it accepts notifications (has a `subscription` block)."""
        src = self.sources.get(name)
        return src if src is not None and src.subscription is not None else None

    def authorised(self, source: SourceConfig, given: str | None) -> bool:
        """Whether `given` is the source's shared secret (constant-time comparison).

        :raises ConfigError: the secret's environment variable is not set.
        """
        assert source.subscription is not None  # noqa: S101 - callers check source()
        secret = source.subscription.resolve_secret()
        return given is not None and hmac.compare_digest(given.encode(), secret.encode())

    def status(self, name: str) -> dict[str, Any]:
        """Notification times and counts of one source."""
        return asdict(self._status.setdefault(name, SubscriptionStatus()))

    def accept(self, source: SourceConfig, note: Notification) -> None:
        """Record `note` and start the work it asks for; returns at once."""
        state = self._status.setdefault(source.name, SubscriptionStatus())
        now = self.clock().isoformat()
        state.notifications += 1
        state.last_notification = now
        if note.kind == "heartbeat":
            state.last_heartbeat = now
        elif note.kind == "handshake":
            state.last_handshake = now
        log.info(
            "subscription_notification",
            source=source.name,
            kind=note.kind,
            targets=len(note.targets),
        )
        if note.kind == "ping" or len(note.targets) > _MAX_TARGETS:
            self._spawn(self._sync(source, state))
        elif note.targets:
            self._spawn(self._fetch(source, note.targets, state))

    async def drain(self) -> None:
        """Wait for the background work started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self, source: SourceConfig, state: SubscriptionStatus) -> None:
        if self.sync is None or source.name in self._syncing:
            return  # one at a time; the running one (or the next poll) picks the change up
        self._syncing.add(source.name)
        state.syncs_requested += 1
        try:
            await self.sync(source.name)
        except Exception as exc:  # the poll loop is the safety net; never kill the app
            state.last_error = type(exc).__name__
            log.warning("subscription_sync_failed", source=source.name, error=type(exc).__name__)
        finally:
            self._syncing.discard(source.name)

    async def _fetch(
        self, source: SourceConfig, targets: tuple[Target, ...], state: SubscriptionStatus
    ) -> None:
        try:
            async with self.client_for(source) as client:
                for rtype, rid in targets:
                    await self._fetch_one(source, client, rtype, rid, state)
        except Exception as exc:  # e.g. auth trouble opening the client
            state.fetch_errors += 1
            state.last_error = type(exc).__name__
            log.warning("subscription_fetch_failed", source=source.name, error=type(exc).__name__)

    async def _fetch_one(
        self,
        source: SourceConfig,
        client: FhirClient,
        rtype: str,
        rid: str,
        state: SubscriptionStatus,
    ) -> None:
        try:
            resource = await client.read(rtype, rid)
        except ResourceNotFound:
            state.gone += 1  # deleted since: deletion detection (reconciliation) handles it
            return
        except FhirRequestError as exc:
            state.fetch_errors += 1
            state.last_error = str(exc)  # names method, type, id and source; no search values
            log.warning(
                "subscription_fetch_failed",
                source=source.name,
                resource_type=rtype,
                status=exc.status,
            )
            return
        result = await asyncio.to_thread(self.ingestor.ingest, source.name, [resource], rtype)
        state.fetched += 1
        log.info(
            "subscription_fetched",
            source=source.name,
            resource_type=rtype,
            stored=result.stored,
            tasks_created=result.tasks_created,
        )


# -- creating Subscriptions on the server ------------------------------------------------------


@dataclass(frozen=True)
class SubscribeResult:
    """One Subscription per resource type: created now, or found already in place."""

    resource_type: str
    criteria: str
    subscription_id: str | None
    created: bool
    status: str | None


def endpoint_for(base: str, source: str) -> str:
    """The bridge's notification endpoint for `source` under its public base URL."""
    return f"{base.rstrip('/')}/subscriptions/{source}"


def subscription_resource(criteria: str, endpoint: str, secret: str) -> dict[str, Any]:
    """An R4 rest-hook Subscription with payload, carrying our shared secret header."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": SUBSCRIPTION_REASON,
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": [f"{SECRET_HEADER}: {secret}"],
        },
    }


async def _existing(client: FhirClient, endpoint: str) -> dict[str, dict[str, Any]]:
    """criteria -> Subscription of ours already on the server (same endpoint, not off)."""
    found: dict[str, dict[str, Any]] = {}
    pages: AsyncIterator[Any] = client.search("Subscription", {"_count": "100"})
    async for page in pages:
        for sub in page.resources:
            channel = sub.get("channel") or {}
            if channel.get("endpoint") == endpoint and sub.get("status") not in ("off", "error"):
                found[str(sub.get("criteria"))] = sub
    return found


async def subscribe(
    source: SourceConfig, client: FhirClient, endpoint: str
) -> list[SubscribeResult]:
    """Create one rest-hook Subscription per configured type (``criteria: Type?``) on the
    source, unless one of ours with the same criteria and endpoint is already active.

    :raises ConfigError: the source has no `subscription` block or its secret is not set.
    """
    if source.subscription is None:
        raise ConfigError(f"source {source.name}: no 'subscription' settings (secret_env)")
    secret = source.subscription.resolve_secret()
    existing = await _existing(client, endpoint)
    out = []
    for rtype in source.resource_types:
        criteria = f"{rtype}?"
        if criteria in existing:
            sub = existing[criteria]
            out.append(SubscribeResult(rtype, criteria, sub.get("id"), False, sub.get("status")))
            continue
        written = await client.create(subscription_resource(criteria, endpoint, secret))
        status = written.resource.get("status") if written.resource else None
        out.append(SubscribeResult(rtype, criteria, written.resource_id, True, status))
    return out
