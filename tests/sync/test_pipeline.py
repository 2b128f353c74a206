"""Sync fetches the next pages while page N is ingested, and the next type while the one
before is ingested: pages in order, at most `depth` ahead, ingests in dependency order, and a
cursor that moves only past pages stored (respx, no server)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from fhir_bridge.config import SourceConfig
from fhir_bridge.fhir import FhirClient, Page
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import _prefetched, dependency_order, sync_source, sync_type
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW, ROOT

BASE = "https://ehr.example.org/fhir"
PAGES = 4
PER_PAGE = 3


def _stamp(n: int) -> str:
    return f"2026-11-20T10:{n:02d}:00.000Z"


def _patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{n}", "meta": {"lastUpdated": _stamp(n)}}


def _bundle(page: int) -> dict[str, Any]:
    first = (page - 1) * PER_PAGE
    links = [{"relation": "next", "url": f"{BASE}/Patient?page={page + 1}"}] if page < PAGES else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": _patient(first + i)} for i in range(PER_PAGE)],
    }


def _pages_route(api: respx.Router, fail_page: int | None = None) -> respx.Route:
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        if page == fail_page:
            return httpx.Response(400)  # fatal, not retried
        return httpx.Response(200, json=_bundle(page))

    return api.get("/Patient").mock(side_effect=answer)


def _coverage_page() -> httpx.Response:
    """A search page of one Coverage (of Patient p1)."""
    resource = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "meta": {"lastUpdated": _stamp(1)},
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{}],
    }
    return httpx.Response(
        200,
        json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}]},
    )


class _RecordingStore(SqliteStore):
    """Records, at each cursor move, which patients were stored; can fail a page's writes."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__(":memory:")
        self.cursor_moves: list[tuple[str, set[str]]] = []
        self.puts = 0
        self.fail_on_call = fail_on_call

    def put_resources(self, source, items, **options):
        """Count the page; fail the chosen one."""
        self.puts += 1
        if self.puts == self.fail_on_call:
            raise RuntimeError("disk full")
        return super().put_resources(source, items, **options)

    def set_cursor(self, source, key, value):
        """Note what is stored when the Patient cursor moves."""
        if key == "Patient" and value is not None:
            stored = set(self.resource_hashes(source, "Patient", [f"p{i}" for i in range(99)]))
            self.cursor_moves.append((value, stored))
        super().set_cursor(source, key, value)


def _ingestor(store: SqliteStore) -> Ingestor:
    return Ingestor(
        store, RuleSet.load(ROOT / "mappings"), TaskService(store, lambda: NOW, []), lambda: NOW
    )


def _source() -> SourceConfig:
    return SourceConfig(name="ehr", base_url=BASE, resource_types=("Patient",), page_size=3)


async def test_prefetch_keeps_order_and_fetches_at_most_one_page_ahead():
    """Pages come in order; while page N is processed only page N+1 has been asked for."""
    asked: list[int] = []

    async def pages() -> AsyncIterator[Page]:
        for n in range(1, 7):
            asked.append(n)
            await asyncio.sleep(0)
            yield Page([{"n": n}], [], n, None)

    seen = []
    async for page in _prefetched(pages()):
        await asyncio.sleep(0.01)  # processing: the fetch of the next page runs meanwhile
        assert max(asked) <= page.number + 1
        seen.append(page.number)
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_prefetch_runs_depth_pages_ahead_once_deepened():
    """One page ahead until `deepen` is set (a type waiting for the one before it), then
    `depth`: the fetch of page N+2 runs while page N is processed, never N+3."""
    asked: list[int] = []
    deepen, exhausted = asyncio.Event(), asyncio.Event()

    async def pages() -> AsyncIterator[Page]:
        for n in range(1, 9):
            asked.append(n)
            await asyncio.sleep(0)
            yield Page([{"n": n}], [], n, None)

    ahead_while = {}
    async for page in _prefetched(pages(), depth=2, deepen=deepen, exhausted=exhausted):
        await asyncio.sleep(0.01)  # processing: the fetches ahead run meanwhile
        ahead_while[page.number] = max(asked) - page.number
        if page.number == 3:
            deepen.set()
        assert not exhausted.is_set() or max(asked) == 8
    assert ahead_while == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 1, 8: 0}
    assert exhausted.is_set()


async def test_prefetch_hands_each_page_to_ahead_before_the_caller():
    """`ahead` sees every page, in order, before the caller does."""
    ahead_seen: list[int] = []

    async def pages() -> AsyncIterator[Page]:
        for n in range(1, 4):
            yield Page([], [], n, None)

    async def ahead(page: Page) -> None:
        ahead_seen.append(page.number)

    async for page in _prefetched(pages(), ahead):
        assert page.number in ahead_seen
    assert ahead_seen == [1, 2, 3]


async def test_prefetch_error_comes_after_the_pages_before_it_and_stops_fetching():
    """A fetch error is raised when its page is asked for; nothing is fetched after it."""
    asked: list[int] = []

    async def pages() -> AsyncIterator[Page]:
        for n in range(1, 5):
            asked.append(n)
            if n == 3:
                raise RuntimeError("page 3 broke")
            yield Page([], [], n, None)

    seen = []
    with pytest.raises(RuntimeError, match="page 3"):
        async for page in _prefetched(pages()):
            seen.append(page.number)
    assert seen == [1, 2] and asked == [1, 2, 3]


async def test_prefetch_cancels_the_fetch_ahead_when_the_caller_stops():
    """A caller that stops (an ingest error) leaves no fetch running behind it."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def pages() -> AsyncIterator[Page]:
        yield Page([], [], 1, None)
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield Page([], [], 2, None)

    prefetched = _prefetched(pages())
    with pytest.raises(ValueError):
        async with contextlib.aclosing(prefetched):  # as sync_type holds it
            async for _ in prefetched:
                await started.wait()
                raise ValueError("ingest failed")
    assert cancelled.is_set()


async def test_cursor_moves_after_each_page_is_stored():
    """Every cursor move names an instant whose resources are all stored at that moment."""
    store = _RecordingStore()
    with respx.mock(base_url=BASE) as api:
        _pages_route(api)
        async with FhirClient(BASE) as client:
            report = await sync_type(_source(), "Patient", client, _ingestor(store))
    assert report.error is None and report.result.stored == PAGES * PER_PAGE
    assert [value for value, _ in store.cursor_moves] == [
        _stamp(p * PER_PAGE - 1) for p in range(1, PAGES + 1)
    ]
    for value, stored in store.cursor_moves:
        upto = int(value[14:16])
        assert {f"p{i}" for i in range(upto + 1)} <= stored
    assert store.get_cursor("ehr", "Patient") == _stamp(PAGES * PER_PAGE - 1)
    store.close()


async def test_failing_page_stops_before_its_cursor_moves():
    """Page 3 fails: pages 1-2 are stored and the cursor stays at page 2's last instant."""
    store = _RecordingStore()
    with respx.mock(base_url=BASE) as api:
        _pages_route(api, fail_page=3)
        async with FhirClient(BASE) as client:
            report = await sync_type(_source(), "Patient", client, _ingestor(store))
    assert report.error is not None and report.pages == 2
    assert store.get_cursor("ehr", "Patient") == _stamp(2 * PER_PAGE - 1)
    assert store.resource_counts("ehr") == {"Patient": 2 * PER_PAGE}
    store.close()


async def test_failing_store_write_keeps_the_cursor_of_the_page_before():
    """An ingest that fails on page 2 (the next page already fetched) leaves page 1's cursor."""
    store = _RecordingStore(fail_on_call=2)
    with respx.mock(base_url=BASE) as api:
        _pages_route(api)
        async with FhirClient(BASE) as client:
            with pytest.raises(RuntimeError, match="disk full"):
                await sync_type(_source(), "Patient", client, _ingestor(store))
    assert store.get_cursor("ehr", "Patient") == _stamp(PER_PAGE - 1)
    assert store.resource_counts("ehr") == {"Patient": PER_PAGE}
    store.close()


class _TimedIngestor(Ingestor):
    """Notes when each page's ingest starts and ends; slow enough for fetches to overlap."""

    def __init__(self, store: SqliteStore, events: list[tuple[str, str]]) -> None:
        super().__init__(
            store, RuleSet.load(ROOT / "mappings"), TaskService(store, lambda: NOW, []), lambda: NOW
        )
        self.events = events

    def ingest(self, source, resources, expected_type, *args, **kwargs):
        """Ingest, between two events."""
        self.events.append(("ingest-start", expected_type))
        time.sleep(0.05)
        try:
            return super().ingest(source, resources, expected_type, *args, **kwargs)
        finally:
            self.events.append(("ingest-end", expected_type))


async def test_next_type_is_fetched_while_the_one_before_is_ingested():
    """The search of the next type starts while the type before it is being ingested (once
    that type's first page came); ingests never overlap and keep the dependency order."""
    events: list[tuple[str, str]] = []
    types = ("Patient", "Coverage", "Appointment")

    def other(rtype: str):
        def answer(request: httpx.Request) -> httpx.Response:
            events.append(("request", rtype))
            resource = {"resourceType": rtype, "id": f"{rtype}-1", "status": "active"}
            resource["meta"] = {"lastUpdated": _stamp(1)}
            if rtype == "Coverage":
                resource |= {"beneficiary": {"reference": "Patient/p1"}, "payor": [{}]}
            else:
                resource |= {"status": "proposed", "participant": [{"status": "accepted"}]}
            return httpx.Response(
                200,
                json={
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": resource}],
                },
            )

        return answer

    def patients(request: httpx.Request) -> httpx.Response:
        events.append(("request", "Patient"))
        return httpx.Response(200, json=_bundle(int(request.url.params.get("page", "1"))))

    store = SqliteStore(":memory:")
    ingestor = _TimedIngestor(store, events)
    source = SourceConfig(
        name="ehr", base_url=BASE, resource_types=types, page_size=3, sync_strategy="last-updated"
    )
    with respx.mock(base_url=BASE) as api:
        api.get("/Patient").mock(side_effect=patients)
        api.get("/Coverage").mock(side_effect=other("Coverage"))
        api.get("/Appointment").mock(side_effect=other("Appointment"))
        async with FhirClient(BASE) as client:
            report = await sync_source(source, client, ingestor)
    order = dependency_order(types, ingestor.rules)
    assert [t.resource_type for t in report.types] == order
    assert report.ok, [t.error for t in report.types]
    ingests = [e for e in events if e[0].startswith("ingest")]
    assert ingests == [
        (kind, rtype)
        for rtype in order
        for _ in range(PAGES if rtype == "Patient" else 1)
        for kind in ("ingest-start", "ingest-end")
    ]
    for before, after in itertools.pairwise(order):
        last_ingest = max(i for i, e in enumerate(events) if e == ("ingest-end", before))
        first_request = events.index(("request", after))
        assert first_request < last_ingest, f"{after} waited for {before} to be ingested"
    store.close()


async def test_every_cursor_is_read_before_the_first_ingest():
    """`sync_source` reads all types' cursors at its start: read when each type starts, they
    waited for the store's writer while the type before was being ingested (SQLite has one
    connection), and that type's search did not start meanwhile."""
    events: list[tuple[str, str]] = []

    class _Store(SqliteStore):
        def get_cursor(self, source, key):
            """Note the read."""
            events.append(("cursor-read", key))
            return super().get_cursor(source, key)

    def coverage(request: httpx.Request) -> httpx.Response:
        return _coverage_page()

    store = _Store(":memory:")
    ingestor = _TimedIngestor(store, events)
    source = SourceConfig(
        name="ehr",
        base_url=BASE,
        resource_types=("Patient", "Coverage"),
        page_size=3,
        sync_strategy="last-updated",
    )
    for _ in range(2):  # a first load, then a run from the cursors it left
        events.clear()
        with respx.mock(base_url=BASE) as api:
            _pages_route(api)
            api.get("/Coverage").mock(side_effect=coverage)
            async with FhirClient(BASE) as client:
                report = await sync_source(source, client, ingestor)
        assert report.ok, [t.error for t in report.types]
        reads = [i for i, e in enumerate(events) if e[0] == "cursor-read"]
        first_ingest = events.index(("ingest-start", "Patient"))
        assert {events[i][1] for i in reads} >= {"Patient", "Coverage"}
        assert max(reads) < first_ingest, events
    assert store.get_cursor("ehr", "Coverage") == _stamp(1)
    store.close()


async def test_a_type_that_raises_stops_the_run_before_the_next_is_ingested():
    """An ingest that raises (not a reported error: a failing store) ends the run with that
    error, as when types ran one after the other; the next type, already fetching, ingests
    nothing."""
    events: list[tuple[str, str]] = []

    class _Failing(_TimedIngestor):
        def ingest(self, source, resources, expected_type, *args, **kwargs):
            """Patient pages fail, after a while (the next type's search runs meanwhile)."""
            if expected_type == "Patient":
                time.sleep(0.1)
                raise RuntimeError("disk full")
            return super().ingest(source, resources, expected_type, *args, **kwargs)

    def coverage(request: httpx.Request) -> httpx.Response:
        events.append(("request", "Coverage"))
        return _coverage_page()

    store = SqliteStore(":memory:")
    ingestor = _Failing(store, events)
    types = ("Patient", "Coverage")
    source = SourceConfig(
        name="ehr", base_url=BASE, resource_types=types, page_size=3, sync_strategy="last-updated"
    )
    assert dependency_order(types, ingestor.rules) == ["Patient", "Coverage"]
    with respx.mock(base_url=BASE, assert_all_called=False) as api:
        _pages_route(api)
        api.get("/Coverage").mock(side_effect=coverage)
        async with FhirClient(BASE) as client:
            with pytest.raises(RuntimeError, match="disk full"):
                await sync_source(source, client, ingestor)
    assert ("request", "Coverage") in events
    assert ("ingest-start", "Coverage") not in events
    assert store.resource_counts("ehr") == {}
    store.close()
