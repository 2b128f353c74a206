"""Tests for fhir_bridge.fhir.client: status mapping, retries, paging, writes and PHI-free logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from fhir_bridge.errors import (
    FatalFhirError,
    MalformedResponse,
    PreconditionFailed,
    ResourceNotFound,
    TemporaryFhirError,
)
from fhir_bridge.fhir import FhirClient, Page, RetryPolicy, WriteResult

BASE = "https://ehr.example.org/fhir"
FHIR_JSON = "application/fhir+json"


class SleepRecorder:
    """Stands in for asyncio.sleep and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def patient(pid: str = "1", version: str = "1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": version}}


def outcome(text: str | None = None, diagnostics: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": "processing"}
    if text:
        issue["details"] = {"text": text}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def bundle(
    *resources: dict[str, Any], next_url: str | None = None, total: int | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        body["link"] = [{"relation": "self", "url": "x"}, {"relation": "next", "url": next_url}]
    if total is not None:
        body["total"] = total
    return body


async def collect(pages) -> list[Page]:
    return [page async for page in pages]


@pytest.fixture
def slept() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def fhir(slept):
    client = FhirClient(BASE, source="ehr1", sleep=slept, retry=RetryPolicy(attempts=3))
    async with client:
        yield client


# -- reads and status classification ----------------------------------------------------------


async def test_read_returns_resource_and_sends_fhir_headers(api, fhir):
    """A 200 read returns the JSON body; requests ask for FHIR JSON and name the bridge."""
    route = api.get("/Patient/1").respond(200, json=patient())
    assert await fhir.read("Patient", "1") == patient()
    sent = route.calls.last.request
    assert sent.headers["Accept"] == FHIR_JSON
    assert sent.headers["User-Agent"].startswith("fhir-bridge/")


async def test_capabilities_gets_metadata(api, fhir):
    """capabilities() returns the body of GET [base]/metadata."""
    api.get("/metadata").respond(200, json={"resourceType": "CapabilityStatement"})
    assert (await fhir.capabilities())["resourceType"] == "CapabilityStatement"


@pytest.mark.parametrize("status", [404, 410])
async def test_not_found_carries_outcome_text(api, fhir, status):
    """404 and 410 raise ResourceNotFound with the OperationOutcome details text in the message."""
    api.get("/Patient/9").respond(status, json=outcome(text="Resource Patient/9 is not known"))
    with pytest.raises(ResourceNotFound) as info:
        await fhir.read("Patient", "9")
    assert str(info.value) == (
        f"GET Patient/9 on source ehr1: HTTP {status}: Resource Patient/9 is not known"
    )
    assert info.value.status == status
    assert info.value.url == "/fhir/Patient/9"


async def test_outcome_falls_back_to_diagnostics(api, fhir):
    """Without details.text the message uses issue[0].diagnostics."""
    api.get("/Patient/9").respond(404, json=outcome(diagnostics="HAPI-2001: gone"))
    with pytest.raises(ResourceNotFound, match="HAPI-2001: gone"):
        await fhir.read("Patient", "9")


async def test_412_raises_precondition_failed(api, fhir):
    """412 on an update raises PreconditionFailed and is not retried."""
    route = api.put("/Patient/1").respond(412, json=outcome(text="version conflict"))
    with pytest.raises(PreconditionFailed, match="PUT Patient/1 on source ehr1: HTTP 412"):
        await fhir.update(patient(), if_match="3")
    assert route.call_count == 1


async def test_400_is_fatal_and_not_retried(api, fhir, slept):
    """A 400 raises FatalFhirError after a single call."""
    route = api.get("/Patient/1").respond(400)
    with pytest.raises(FatalFhirError) as info:
        await fhir.read("Patient", "1")
    assert not isinstance(info.value, TemporaryFhirError)
    assert route.call_count == 1
    assert slept.calls == []


async def test_redirect_is_not_followed(api, fhir):
    """A 3xx is fatal: following it could hand our credentials to another host."""
    api.get("/Patient/1").respond(302, headers={"Location": "https://evil.example.com/x"})
    with pytest.raises(FatalFhirError, match="HTTP 302"):
        await fhir.read("Patient", "1")


# -- retries -------------------------------------------------------------------------------------


async def test_429_waits_retry_after_seconds(api, fhir, slept):
    """429 with Retry-After: 2 then 200 succeeds after sleeping exactly 2 seconds."""
    route = api.get("/Patient/1")
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(200, json=patient()),
    ]
    assert await fhir.read("Patient", "1") == patient()
    assert slept.calls == [2.0]
    assert route.call_count == 2


async def test_retry_after_http_date(api, fhir, slept):
    """Retry-After given as an HTTP-date waits until that moment."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    route = api.get("/Patient/1")
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": when}),
        httpx.Response(200, json=patient()),
    ]
    await fhir.read("Patient", "1")
    assert len(slept.calls) == 1
    assert 8.0 <= slept.calls[0] <= 10.0


async def test_retry_after_is_capped_by_max_wait(api, slept):
    """A Retry-After longer than RetryPolicy.max_wait is cut to max_wait."""
    route = api.get("/Patient/1")
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": "3600"}),
        httpx.Response(200, json=patient()),
    ]
    async with FhirClient(BASE, sleep=slept, retry=RetryPolicy(max_wait=7.0)) as client:
        await client.read("Patient", "1")
    assert slept.calls == [7.0]


async def test_503_exhausts_attempts(api, fhir, slept):
    """503 every time raises TemporaryFhirError after exactly `attempts` calls, backing off."""
    route = api.get("/Patient/1").respond(503, json=outcome(text="maintenance"))
    with pytest.raises(TemporaryFhirError, match="HTTP 503: maintenance"):
        await fhir.read("Patient", "1")
    assert route.call_count == 3
    assert len(slept.calls) == 2
    assert 0.5 <= slept.calls[0] <= 1.0  # initial_wait + jitter up to initial_wait
    assert 1.0 <= slept.calls[1] <= 1.5


async def test_connection_error_is_retried_then_temporary(api, fhir, slept):
    """A connection error is retried and, when attempts run out, becomes TemporaryFhirError."""
    route = api.get("/Patient/1").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(
        TemporaryFhirError, match="GET Patient/1 on source ehr1: ConnectError"
    ) as info:
        await fhir.read("Patient", "1")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.status is None
    assert route.call_count == 3


async def test_connection_error_then_success(api, fhir, slept):
    """A single connection error is invisible to the caller when the retry succeeds."""
    route = api.get("/Patient/1")
    route.side_effect = [httpx.ConnectError("reset"), httpx.Response(200, json=patient())]
    assert await fhir.read("Patient", "1") == patient()
    assert len(slept.calls) == 1


async def test_timeout_is_temporary(api, fhir):
    """A read timeout becomes TemporaryFhirError chained to the httpx exception."""
    api.get("/Patient/1").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TemporaryFhirError, match="ReadTimeout") as info:
        await fhir.read("Patient", "1")
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_retries_are_logged(api, fhir):
    """Each retry logs fhir_request_retrying with status, attempt and wait."""
    route = api.get("/Patient/1")
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "4"}),
        httpx.Response(200, json=patient()),
    ]
    with capture_logs() as logs:
        await fhir.read("Patient", "1")
    retrying = [e for e in logs if e["event"] == "fhir_request_retrying"]
    assert retrying == [
        {
            "event": "fhir_request_retrying",
            "log_level": "warning",
            "source": "ehr1",
            "method": "GET",
            "resource_type": "Patient",
            "status": 429,
            "attempt": 1,
            "wait": 4.0,
        }
    ]


# -- malformed bodies ----------------------------------------------------------------------------


async def test_invalid_json_is_malformed(api, fhir):
    """A 2xx whose body is not JSON raises MalformedResponse without retrying."""
    route = api.get("/Patient/1").respond(200, text="<html>proxy login</html>")
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        await fhir.read("Patient", "1")
    assert route.call_count == 1


async def test_json_array_is_malformed(api, fhir):
    """A 2xx whose JSON body is not an object raises MalformedResponse."""
    api.get("/Patient/1").respond(200, json=[patient()])
    with pytest.raises(MalformedResponse):
        await fhir.read("Patient", "1")


async def test_read_of_wrong_type_is_malformed(api, fhir):
    """A read answered with another resource type raises MalformedResponse."""
    api.get("/Patient/1").respond(200, json=outcome(text="all ok"))
    with pytest.raises(MalformedResponse, match="not a Patient"):
        await fhir.read("Patient", "1")


async def test_search_non_bundle_is_malformed(api, fhir):
    """A search answered with something other than a Bundle raises MalformedResponse."""
    api.get("/Patient").respond(200, json=patient())
    with pytest.raises(MalformedResponse, match="not a Bundle"):
        await collect(fhir.search("Patient", {"family": "Smith"}))


# -- search --------------------------------------------------------------------------------------


async def test_search_follows_pages_and_deduplicates(api, fhir):
    """Search follows next links over 3 pages, drops a repeated id+version, keeps a new version."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(
            200, json=bundle(patient("1"), patient("2"), next_url=f"{BASE}/Patient?p=2", total=4)
        ),
        httpx.Response(200, json=bundle(patient("2"), patient("3"), next_url="Patient?p=3")),
        httpx.Response(200, json=bundle(patient("2", version="2"), patient("4"))),
    ]
    pages = await collect(fhir.search("Patient", {"family": "Smith"}))

    assert [p.number for p in pages] == [1, 2, 3]
    assert pages[0].total == 4
    assert pages[2].total is None
    ids = [[(r["id"], r["meta"]["versionId"]) for r in p.resources] for p in pages]
    assert ids == [[("1", "1"), ("2", "1")], [("3", "1")], [("2", "2"), ("4", "1")]]
    urls = [str(call.request.url) for call in route.calls]
    assert urls == [f"{BASE}/Patient?family=Smith", f"{BASE}/Patient?p=2", f"{BASE}/Patient?p=3"]


async def test_search_separates_included_resources(api, fhir):
    """Entries with search.mode include go to Page.included, outcome entries are dropped."""
    body = bundle(patient("1"))
    body["entry"] += [
        {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
        {"resource": outcome(text="partial"), "search": {"mode": "outcome"}},
        {"resource": patient("2")},
    ]
    api.get("/Patient").respond(200, json=body)
    (page,) = await collect(fhir.search("Patient", [("_include", "Patient:organization")]))
    assert [r["id"] for r in page.resources] == ["1", "2"]
    assert [r["id"] for r in page.included] == ["o"]


async def test_search_empty_bundle(api, fhir):
    """A Bundle without entries yields one empty page."""
    api.get("/Patient").respond(200, json={"resourceType": "Bundle", "total": 0})
    assert await collect(fhir.search("Patient", {})) == [Page([], [], 1, 0)]


async def test_search_next_link_loop_is_malformed(api, fhir):
    """A next link back to an already fetched page raises MalformedResponse."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(200, json=bundle(patient("1"), next_url=f"{BASE}/Patient?p=2")),
        httpx.Response(200, json=bundle(patient("2"), next_url=f"{BASE}/Patient?family=Smith")),
    ]
    with pytest.raises(MalformedResponse, match="next link loops") as info:
        await collect(fhir.search("Patient", {"family": "Smith"}))
    assert "Smith" not in str(info.value)
    assert route.call_count == 2


async def test_search_stops_after_max_pages(api, slept):
    """A search with more than max_pages pages raises MalformedResponse."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(200, json=bundle(patient(str(n)), next_url=f"Patient?p={n + 1}"))
        for n in range(5)
    ]
    async with FhirClient(BASE, sleep=slept, max_pages=2) as client:
        with pytest.raises(MalformedResponse, match="more than 2 pages"):
            await collect(client.search("Patient", {}))
    assert route.call_count == 2


@pytest.mark.parametrize(
    "foreign",
    [
        "https://other.example.org/fhir/Patient?p=2",
        "http://ehr.example.org/fhir/Patient?p=2",
        "https://ehr.example.org:8443/fhir/Patient?p=2",
    ],
)
async def test_search_foreign_next_link_is_fatal(api, fhir, foreign):
    """A next link to another scheme, host or port raises FatalFhirError and is never fetched."""
    api.get("/Patient").respond(200, json=bundle(patient("1"), next_url=foreign))
    with pytest.raises(FatalFhirError, match="next link points at another server"):
        await collect(fhir.search("Patient", {}))
    assert [str(c.request.url) for c in api.calls] == [f"{BASE}/Patient"]


async def test_search_explicit_default_port_is_same_origin(api, fhir):
    """A next link naming the default port explicitly is the same server."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(
            200, json=bundle(patient("1"), next_url="https://ehr.example.org:443/fhir/Patient?p=2")
        ),
        httpx.Response(200, json=bundle(patient("2"))),
    ]
    assert len(await collect(fhir.search("Patient", {}))) == 2


async def test_search_encodes_plus_sign(api, fhir):
    """A '+' in a search value is sent as %2B (SEKMET rejects a bare '+' in _lastUpdated)."""
    route = api.get("/Observation").respond(200, json=bundle())
    await collect(fhir.search("Observation", [("_lastUpdated", "gt2024-05-01T10:00:00+02:00")]))
    raw = route.calls.last.request.url.raw_path.decode()
    assert "%2B02" in raw
    assert "+" not in raw


async def test_search_page_is_retried_on_its_own(api, fhir, slept):
    """A temporary failure on page 2 retries page 2 only."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(200, json=bundle(patient("1"), next_url="Patient?p=2")),
        httpx.Response(503),
        httpx.Response(200, json=bundle(patient("2"))),
    ]
    pages = await collect(fhir.search("Patient", {}))
    assert [r["id"] for p in pages for r in p.resources] == ["1", "2"]
    urls = [call.request.url.query.decode() for call in route.calls]
    assert urls == ["", "p=2", "p=2"]


# -- writes --------------------------------------------------------------------------------------


async def test_update_sends_if_match_and_parses_version(api, fhir):
    """update() PUTs with If-Match W/"3" and takes the new version from the ETag."""
    route = api.put("/Patient/1").respond(
        200,
        json=patient("1", version="4"),
        headers={"ETag": 'W/"4"', "Location": f"{BASE}/Patient/1/_history/4"},
    )
    result = await fhir.update(patient("1", version="3"), if_match="3")
    sent = route.calls.last.request
    assert sent.headers["If-Match"] == 'W/"3"'
    assert sent.headers["Content-Type"] == FHIR_JSON
    assert json.loads(sent.content) == patient("1", version="3")
    assert result == WriteResult(200, patient("1", version="4"), "1", "4", created=False)


async def test_update_without_body_uses_location(api, fhir):
    """With an empty body the id and version come from the Location header."""
    api.put("/Patient/1").respond(200, headers={"Location": f"{BASE}/Patient/1/_history/7"})
    result = await fhir.update(patient("1"))
    assert result == WriteResult(200, None, "1", "7", created=False)


async def test_update_needs_a_valid_id(fhir):
    """update() refuses a resource without an id or with an id that would change the path."""
    with pytest.raises(ValueError, match="id"):
        await fhir.update({"resourceType": "Patient"})
    with pytest.raises(ValueError, match="id"):
        await fhir.update({"resourceType": "Patient", "id": ".."})


async def test_create_201_reports_created(api, fhir):
    """create() POSTs with If-None-Exist and reports created=True on 201."""
    route = api.post("/Patient").respond(
        201, headers={"Location": f"{BASE}/Patient/abc/_history/1", "ETag": 'W/"1"'}
    )
    result = await fhir.create(
        {"resourceType": "Patient"}, if_none_exist="identifier=http://mrn|123"
    )
    assert route.calls.last.request.headers["If-None-Exist"] == "identifier=http://mrn|123"
    assert result == WriteResult(201, None, "abc", "1", created=True)


async def test_create_200_reports_existing(api, fhir):
    """create() reports created=False when If-None-Exist matched (200) and reads meta.versionId."""
    api.post("/Patient").respond(200, json=patient("abc", version="5"))
    result = await fhir.create({"resourceType": "Patient"}, if_none_exist="identifier=x|1")
    assert result == WriteResult(200, patient("abc", version="5"), "abc", "5", created=False)


async def test_write_with_outcome_body_has_no_resource(api, fhir):
    """A write answered with an OperationOutcome returns resource=None."""
    api.post("/Patient").respond(
        201, json=outcome(text="created"), headers={"Location": "Patient/z"}
    )
    result = await fhir.create({"resourceType": "Patient"})
    assert (result.resource, result.resource_id, result.version_id) == (None, "z", None)


# -- lifecycle and logs --------------------------------------------------------------------------


async def test_use_outside_async_with_raises():
    """Every method raises RuntimeError before `async with` and after it ends."""
    client = FhirClient(BASE)
    with pytest.raises(RuntimeError, match="async with"):
        await client.read("Patient", "1")
    with pytest.raises(RuntimeError, match="async with"):
        client.search("Patient", {})
    with pytest.raises(RuntimeError, match="async with"):
        await client.capabilities()
    async with client:
        pass
    with pytest.raises(RuntimeError, match="async with"):
        await client.create({"resourceType": "Patient"})


async def test_logs_carry_no_query_or_body(api, fhir):
    """A search for family=Smith logs fhir_request lines with no query string, URL or body."""
    route = api.get(url__startswith=f"{BASE}/Patient")
    route.side_effect = [
        httpx.Response(
            200,
            json=bundle(
                {"resourceType": "Patient", "id": "1", "name": [{"family": "Smith"}]},
                next_url="Patient?family=Smith&p=2",
            ),
        ),
        httpx.Response(500),
        httpx.Response(200, json=bundle()),
    ]
    with capture_logs() as logs:
        await collect(fhir.search("Patient", {"family": "Smith"}))
    assert [e["event"] for e in logs] == [
        "fhir_request",
        "fhir_request",
        "fhir_request_retrying",
        "fhir_request",
    ]
    assert logs[0]["status"] == 200
    assert logs[0]["resource_type"] == "Patient"
    assert isinstance(logs[0]["elapsed_ms"], float)
    text = repr(logs)
    assert "Smith" not in text
    assert "?" not in text
    assert "family" not in text


async def test_error_messages_carry_no_query(api, fhir):
    """A failing search names type and status but not the search values."""
    api.get("/Patient").respond(400, json=outcome(diagnostics="bad parameter"))
    with pytest.raises(FatalFhirError) as info:
        await collect(fhir.search("Patient", {"family": "Smith"}))
    assert str(info.value) == "GET Patient on source ehr1: HTTP 400: bad parameter"
    assert info.value.url == "/fhir/Patient"


async def test_clients_share_one_tls_context() -> None:
    """Each client used to load the CA bundle again (30-50 ms); now they share one context,
    which still verifies certificates against it."""
    import ssl

    from fhir_bridge.fhir.client import tls_context

    contexts = []
    for _ in range(2):
        async with FhirClient(BASE) as client:
            http = client._http
            assert http is not None
            contexts.append(http._transport._pool._ssl_context)  # type: ignore[attr-defined]
    assert contexts[0] is contexts[1] is tls_context()
    assert tls_context().verify_mode is ssl.CERT_REQUIRED
    assert tls_context().get_ca_certs() or tls_context().cert_store_stats()["x509_ca"] > 0
