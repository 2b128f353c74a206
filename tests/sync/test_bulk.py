"""Tests for fhir_bridge.sync.bulk and fhir.bulk against a scripted $export server."""

from __future__ import annotations

import json

import httpx
import pytest

from fhir_bridge.config import SourceConfig
from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.fhir.bulk import ExportRequest, PollPolicy
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.sync.bulk import export_source, load_state
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW, ROOT, sample

BASE = "https://ehr.example.org/fhir"
SOURCE = SourceConfig(name="ehr", base_url=BASE, resource_types=("Patient",))


@pytest.fixture
def ingestor(store) -> Ingestor:
    """An Ingestor with the default rules over the in-memory store."""
    return Ingestor(
        store, RuleSet.load(ROOT / "mappings"), TaskService(store, lambda: NOW, []), lambda: NOW
    )


def _ndjson(items: list) -> bytes:
    """Items as an NDJSON body."""
    return "".join(json.dumps(i) + "\n" for i in items).encode()


class BulkServer:
    """Kick-off, two 202 polls with Retry-After 30, then a manifest with output, error and
    deleted files; every request is recorded."""

    def __init__(self, files_url: str = f"{BASE}/files") -> None:
        """No polls yet, no requests."""
        self.files_url = files_url
        self.polls = 0
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer like a Bulk Data server."""
        self.requests.append(request)
        path = request.url.path
        if path.endswith("$export"):
            assert request.headers["Prefer"] == "respond-async"
            return httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        if path.endswith("/status/1") and request.method == "DELETE":
            return httpx.Response(202)
        if path.endswith("/status/1"):
            self.polls += 1
            if self.polls <= 2:
                return httpx.Response(202, headers={"Retry-After": "30", "X-Progress": "50%"})
            return httpx.Response(
                200,
                json={
                    "transactionTime": "2026-11-26T12:00:00Z",
                    "requiresAccessToken": True,
                    "output": [{"type": "Patient", "url": f"{self.files_url}/p", "count": 5}],
                    "error": [{"type": "OperationOutcome", "url": f"{self.files_url}/e"}],
                    "deleted": [{"type": "Bundle", "url": f"{self.files_url}/d"}],
                },
            )
        if path.endswith("/files/p"):
            return httpx.Response(200, content=_ndjson(sample("Patient")[:5]))
        if path.endswith("/files/e"):
            outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
            return httpx.Response(200, content=_ndjson([outcome, outcome]))
        if path.endswith("/files/d"):
            entries = [
                {"request": {"method": "DELETE", "url": f"Patient/gone-{i}"}} for i in (1, 2)
            ]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            return httpx.Response(200, content=_ndjson([bundle]))
        return httpx.Response(404)


async def test_export_polls_within_the_cap_and_handles_error_and_deleted_files(ingestor, store):
    """Retry-After 30 is capped at 2 s; output is stored; error lines and deletions are
    counted, not stored; the job is deleted and `since` kept for the next export."""
    server = BulkServer()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with FhirClient(
        BASE, source="ehr", transport=httpx.MockTransport(server), sleep=sleep
    ) as client:
        report = await export_source(
            SOURCE, client, ingestor, poll=PollPolicy(max_wait=2.0), parallel=2
        )
    assert report.ok, report.error
    assert waits == [2.0, 2.0]
    assert (report.result.stored, report.outcomes, report.deleted) == (5, 2, 2)
    assert store.resource_counts("ehr") == {"Patient": 5}
    assert load_state(ingestor, "ehr") == {"since": "2026-11-26T12:00:00Z"}
    assert server.requests[-1].method == "DELETE"
    kickoff = server.requests[0]
    assert kickoff.url.params["_type"] == "Patient"


async def test_files_on_another_host_are_refused(ingestor):
    """A manifest pointing at another host fails the export: our token never goes there."""
    server = BulkServer(files_url="https://elsewhere.example.com/files")
    async with FhirClient(
        BASE, source="ehr", transport=httpx.MockTransport(server), sleep=_no_sleep
    ) as client:
        report = await export_source(SOURCE, client, ingestor)
    assert not report.ok and "another server" in (report.error or "")
    assert not any(r.url.host == "elsewhere.example.com" for r in server.requests)


async def test_next_export_sends_since_of_the_last_one(ingestor):
    """After a finished export the next kick-off carries `_since` = its transactionTime."""
    server = BulkServer()
    async with FhirClient(
        BASE, source="ehr", transport=httpx.MockTransport(server), sleep=_no_sleep
    ) as client:
        await export_source(SOURCE, client, ingestor)
        server.polls = 0
        await export_source(SOURCE, client, ingestor)
    kickoffs = [r for r in server.requests if r.url.path.endswith("$export")]
    assert "_since" not in kickoffs[0].url.params
    assert kickoffs[1].url.params["_since"] == "2026-11-26T12:00:00Z"


async def test_a_persistent_download_failure_is_reported_and_resumable(ingestor, store):
    """A file that keeps answering 503 fails the run with the status; the job state stays
    for the next run to resume."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/files/p"):
            return httpx.Response(503)
        return server(request)

    server = BulkServer()
    async with FhirClient(
        BASE,
        source="ehr",
        transport=httpx.MockTransport(handler),
        sleep=_no_sleep,
        retry=RetryPolicy(attempts=2),
    ) as client:
        report = await export_source(SOURCE, client, ingestor)
    assert not report.ok and "HTTP 503" in (report.error or "")
    assert "manifest" in load_state(ingestor, "ehr")


def test_group_ids_and_types_are_checked():
    """A group id that could change the path, or a bad type name, is refused up front."""
    with pytest.raises(ValueError):
        ExportRequest(level="group", group_id="../Patient")
    with pytest.raises(ValueError):
        ExportRequest(types=("patient?x=1",))
    assert ExportRequest(level="group", group_id="g1").path == "Group/g1/$export"


async def _no_sleep(_: float) -> None:
    """Skip waits."""
