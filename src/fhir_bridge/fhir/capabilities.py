"""What a FHIR server can do for us: a typed report from its CapabilityStatement and probes.

:func:`build_report` is a pure function of ``/metadata``, ``/.well-known/smart-configuration`` and
the outcome of one authenticated search, so it is tested with recorded documents.
:func:`check_server` fetches those three things and calls it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from fhir_bridge.errors import FhirRequestError
from fhir_bridge.fhir.client import FHIR_JSON, FhirClient, tls_context

# Search parameters that hold a creation (or authoring) date. Without _lastUpdated, searching on
# one of these finds new resources, but never edits of old ones.
CREATED_PARAMS = ("created", "authored-on", "authoredon", "authored", "recorded-date")
_R4 = "4.0."


class SyncStrategy(StrEnum):
    """How the sync will find changed resources of one type."""

    INCREMENTAL = "incremental _lastUpdated"
    CREATED_DATE = "created-date fallback (misses edits)"
    FULL = "full re-pull"


@dataclass(frozen=True)
class SearchProbe:
    """The outcome of ``GET [base]/{resource_type}?_count=1`` with the source's credentials."""

    resource_type: str
    ok: bool
    detail: str  # "HTTP 200, 1 entry" or the error message (never a credential)
    status: int | None = None
    count_honoured: bool | None = None  # None: cannot tell (fewer than two matches)


@dataclass(frozen=True)
class ResourceSupport:
    """What the CapabilityStatement declares for one resource type."""

    resource_type: str
    declared: bool
    search: bool
    last_updated: bool
    count: bool | None  # None: not declared, and the probe could not tell
    include: bool
    created_param: str | None
    update: bool
    versioning: str | None  # no-version | versioned | versioned-update
    update_create: bool
    conditional_create: bool
    conditional_update: bool
    export: bool  # type-level $export

    @property
    def update_if_match(self) -> bool:
        """Updates are checked against ``If-Match`` (the server says versioned-update)."""
        return self.update and self.versioning == "versioned-update"

    @property
    def strategy(self) -> SyncStrategy:
        """The way the sync finds changes of this type."""
        if self.last_updated:
            return SyncStrategy.INCREMENTAL
        if self.created_param is not None:
            return SyncStrategy.CREATED_DATE
        return SyncStrategy.FULL


@dataclass(frozen=True)
class CompatibilityReport:
    """Everything ``sources check`` says about one source."""

    source: str
    base_url: str
    reachable: bool
    problem: str | None  # why the server or its CapabilityStatement is not usable
    search: SearchProbe | None  # None when the server was not reachable
    fhir_version: str | None
    software_name: str | None
    software_version: str | None
    smart_token_endpoint: str | None
    system_export: bool
    subscriptions: bool
    rest_hook: bool | None  # None: Subscription supported, channel types not declared
    resources: tuple[ResourceSupport, ...]

    @property
    def auth_ok(self) -> bool:
        """The authenticated search succeeded."""
        return self.search is not None and self.search.ok

    @property
    def ok(self) -> bool:
        """Reachable and authenticated: a sync can run."""
        return self.reachable and self.auth_ok

    @property
    def fhir_r4(self) -> bool:
        """The server speaks FHIR R4 (4.0.x), the version the bridge is built for."""
        return (self.fhir_version or "").startswith(_R4)


def build_report(
    *,
    source: str,
    base_url: str,
    resource_types: Sequence[str],
    metadata: dict[str, Any] | None,
    smart_configuration: dict[str, Any] | None,
    search: SearchProbe | None,
    unreachable: str | None = None,
    metadata_problem: str | None = None,
) -> CompatibilityReport:
    """Combine the two documents and the search probe into a report.

    :param metadata: the CapabilityStatement, or ``None`` if it could not be had.
    :param smart_configuration: ``.well-known/smart-configuration``, or ``None`` (404 is normal).
    :param search: the authenticated search, or ``None`` if not tried.
    :param unreachable: why the server could not be reached at all.
    :param metadata_problem: why the CapabilityStatement is missing, if the server answered.
    """
    cs = metadata if metadata and metadata.get("resourceType") == "CapabilityStatement" else {}
    if metadata and not cs and metadata_problem is None:
        metadata_problem = "GET /metadata did not return a CapabilityStatement"
    rest = _server_rest(cs)
    entries = {r.get("type"): r for r in _dicts(rest.get("resource"))}
    common_params = _names(rest.get("searchParam"))
    count_probe = search.count_honoured if search is not None else None
    resources = tuple(
        _support(t, entries.get(t), common_params, count_probe) for t in resource_types
    )
    subscription = entries.get("Subscription")
    subscriptions = subscription is not None and "create" in _interactions(subscription)
    software = cs.get("software")
    software = software if isinstance(software, dict) else {}
    return CompatibilityReport(
        source=source,
        base_url=base_url,
        reachable=unreachable is None,
        problem=unreachable or metadata_problem,
        search=search,
        fhir_version=_str(cs.get("fhirVersion")),
        software_name=_str(software.get("name")),
        software_version=_str(software.get("version")),
        smart_token_endpoint=_str((smart_configuration or {}).get("token_endpoint")),
        system_export="export" in _operations(rest),
        subscriptions=subscriptions,
        rest_hook=_rest_hook(subscription) if subscriptions else False,
        resources=resources,
    )


def _support(
    resource_type: str,
    entry: dict[str, Any] | None,
    common_params: set[str],
    count_by_probe: bool | None,
) -> ResourceSupport:
    entry = entry or {}
    interactions = _interactions(entry)
    params = _names(entry.get("searchParam")) | common_params
    search = "search-type" in interactions
    created = next((p for p in CREATED_PARAMS if p in params), None) if search else None
    return ResourceSupport(
        resource_type=resource_type,
        declared=bool(entry),
        search=search,
        last_updated=search and "_lastUpdated" in params,
        count=(True if "_count" in params else count_by_probe) if search else False,
        include=search and bool(entry.get("searchInclude")),
        created_param=created,
        update="update" in interactions,
        versioning=_str(entry.get("versioning")),
        update_create=entry.get("updateCreate") is True,
        conditional_create=entry.get("conditionalCreate") is True,
        conditional_update=entry.get("conditionalUpdate") is True,
        export="export" in _operations(entry),
    )


def _rest_hook(subscription: dict[str, Any] | None) -> bool | None:
    # R4 has no standard element for channel types; some servers name them in an extension
    # or the documentation, which is the best we can read.
    return True if "rest-hook" in json.dumps(subscription) else None


def _server_rest(cs: dict[str, Any]) -> dict[str, Any]:
    rests = _dicts(cs.get("rest"))
    return next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _names(items: Any) -> set[str]:
    return {n for i in _dicts(items) if isinstance(n := i.get("name"), str)}


def _interactions(entry: dict[str, Any]) -> set[str]:
    return {c for i in _dicts(entry.get("interaction")) if isinstance(c := i.get("code"), str)}


def _operations(entry: dict[str, Any]) -> set[str]:
    return {name.lstrip("$") for name in _names(entry.get("operation"))}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- probing a live server -------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    status: int | None
    body: dict[str, Any] | None
    error: str | None  # network trouble, or a 5xx


async def _get_public(http: httpx.AsyncClient, url: str, accept: str) -> _Fetched:
    """GET a document every client may read (no credentials are sent)."""
    try:
        response = await http.get(url, headers={"Accept": accept})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Fetched(None, None, f"GET {httpx.URL(url).path}: {type(exc).__name__}")
    if response.status_code >= 500:
        return _Fetched(response.status_code, None, f"GET {response.url.path}: HTTP 5xx")
    try:
        body = json.loads(response.content) if response.status_code == 200 else None
    except ValueError:
        body = None
    return _Fetched(response.status_code, body if isinstance(body, dict) else None, None)


async def probe_search(client: FhirClient, resource_type: str) -> SearchProbe:
    """Run ``GET [base]/{resource_type}?_count=1`` on an open client and say how it went."""
    pages = client.search(resource_type, {"_count": "1"})
    try:
        page = await anext(pages)
    except StopAsyncIteration:  # pragma: no cover - search yields at least one page
        return SearchProbe(resource_type, ok=False, detail="no answer")
    except FhirRequestError as exc:
        return SearchProbe(resource_type, ok=False, detail=str(exc), status=exc.status)
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
    entries = len(page.resources)
    honoured = False if entries > 1 else (True if (page.total or 0) > 1 else None)
    return SearchProbe(
        resource_type,
        ok=True,
        detail=f"GET {resource_type}?_count=1: {entries} entr{'y' if entries == 1 else 'ies'}",
        status=200,
        count_honoured=honoured,
    )


async def check_server(
    client: FhirClient,
    base_url: str,
    resource_types: Sequence[str],
    *,
    source: str = "",
    timeout: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CompatibilityReport:
    """Fetch the public documents, run one authenticated search and build the report.

    :param client: an unopened client with the source's credentials; this opens and closes it.
    :param resource_types: the configured types; the first one is searched.
    """
    base = base_url.rstrip("/")
    async with httpx.AsyncClient(
        timeout=timeout, transport=transport, follow_redirects=False, verify=tls_context()
    ) as http:
        metadata = await _get_public(http, f"{base}/metadata", FHIR_JSON)
        smart = None
        if metadata.error is None:
            smart = await _get_public(http, f"{base}/.well-known/smart-configuration", "*/*")
    if metadata.error is not None or smart is None:
        return build_report(
            source=source,
            base_url=base,
            resource_types=resource_types,
            metadata=None,
            smart_configuration=None,
            search=None,
            unreachable=metadata.error,
        )
    cs, problem = metadata.body, _metadata_problem(metadata)
    async with client:
        if metadata.status in (401, 403):  # some gateways protect /metadata too
            cs, problem = await _authenticated_metadata(client)
        search = await probe_search(client, resource_types[0])
    return build_report(
        source=source,
        base_url=base,
        resource_types=resource_types,
        metadata=cs,
        smart_configuration=smart.body if smart.status == 200 else None,
        search=search,
        metadata_problem=problem,
    )


def _metadata_problem(fetched: _Fetched) -> str | None:
    if fetched.status == 200 and fetched.body is not None:
        return None
    if fetched.status in (401, 403):
        return None  # retried with credentials
    return f"GET /metadata: HTTP {fetched.status}"


async def _authenticated_metadata(client: FhirClient) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return await client.capabilities(), None
    except FhirRequestError as exc:
        return None, str(exc)
