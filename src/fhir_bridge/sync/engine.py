"""Incremental pull of one source: `_lastUpdated` search, page by page, cursor after each page.

The cursor of (source, type) is the highest `meta.lastUpdated` of what is durably stored.
The next run asks for `_lastUpdated=ge(cursor - overlap)`: the overlap re-reads resources
committed late by the server (a transaction that started before the cursor's instant), and
the content hash in the store turns the re-read into a no-op.

Servers page by offset and re-run the query for each page (SEKMET does, so do many real
ones), so a page's resources are only known to be complete up to the order they come in.
We ask for `_sort=_lastUpdated`; while the pages really arrive in that order the cursor
advances after every page. If a server ignores `_sort` the cursor advances only when the
whole search has been stored, so a crash mid-search re-pulls it rather than skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirRequestError
from fhir_bridge.fhir import FhirClient, Page
from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.sync.ingest import Ingestor, IngestResult, later, parse_instant

log = get_logger("sync")

MAX_PASSES = 3  # searches per run when the data keeps changing while we page
FIRST_LOAD_SUFFIX = "$first-load"  # cursor key marking a first load not yet complete

# progress(source, resource_type, resources done, total or None)
Progress = Callable[[str, str, int, int | None], None]


def new_job_id() -> str:
    """A fresh id for one unit of background work, bound into its log lines."""
    return uuid.uuid4().hex[:16]


class SyncObserver(Protocol):
    """Receives sync figures (implemented by `fhir_bridge.metrics.BridgeMetrics`)."""

    def observe_page(
        self,
        source: str,
        resource_type: str,
        *,
        received: int,
        stored: int,
        unchanged: int,
        quarantined: int,
        tasks_created: int,
    ) -> None:
        """One search page was ingested."""

    def observe_sync_run(
        self, source: str, resource_type: str, *, ok: bool, seconds: float
    ) -> None:
        """One sync run of a resource type ended."""


@dataclass
class TypeReport:
    """The outcome of syncing one resource type of one source."""

    resource_type: str
    pages: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    cursor: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class SourceReport:
    """The outcome of one sync run of one source."""

    source: str
    types: list[TypeReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every type synced without error."""
        return all(t.error is None for t in self.types)

    @property
    def totals(self) -> IngestResult:
        """All types' figures added up."""
        total = IngestResult()
        for t in self.types:
            total.add(t.result)
        return total


def since_param(cursor: str, overlap_seconds: float) -> str:
    """The `_lastUpdated` search value for a cursor minus the overlap, in UTC with `Z`."""
    start = parse_instant(cursor).astimezone(UTC) - timedelta(seconds=overlap_seconds)
    return "ge" + start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"


def _in_order(resources: list[dict[str, object]], floor: str | None) -> bool:
    """True when the page's lastUpdated values never go below `floor` nor backwards."""
    last = parse_instant(floor) if floor else None
    for res in resources:
        meta = res.get("meta")
        value = meta.get("lastUpdated") if isinstance(meta, dict) else None
        if not isinstance(value, str):
            return False
        try:
            instant = parse_instant(value)
        except ValueError:
            return False
        if last is not None and instant < last:
            return False
        last = instant
    return True


async def _prefetched(pages: AsyncIterator[Page], depth: int = 2) -> AsyncIterator[Page]:
    """Yield `pages` while fetching up to `depth` pages ahead.

    Ingest (parse, store, rules) runs in a worker thread; fetching the next page meanwhile
    overlaps network and server time with our CPU time. Errors surface in order, after the
    pages fetched before them.
    """
    queue: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(maxsize=depth)

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put(page)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, re-raised there
            await queue.put(exc)

    producer = asyncio.create_task(produce())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def sync_type(
    source: SourceConfig,
    resource_type: str,
    client: FhirClient,
    ingestor: Ingestor,
    *,
    full: bool = False,
    progress: Progress | None = None,
    metrics: SyncObserver | None = None,
) -> TypeReport:
    """Pull every resource of `resource_type` changed since the cursor and ingest it.

    Every log line of the run (ours, the FHIR client's, ingest's) carries the run's `job_id`.
    """
    with structlog.contextvars.bound_contextvars(
        job_id=new_job_id(), source=source.name, resource_type=resource_type
    ):
        report = await _sync_type(source, resource_type, client, ingestor, full, progress, metrics)
    if metrics is not None:
        metrics.observe_sync_run(
            source.name, resource_type, ok=report.error is None, seconds=report.seconds
        )
    return report


async def _sync_type(
    source: SourceConfig,
    resource_type: str,
    client: FhirClient,
    ingestor: Ingestor,
    full: bool,
    progress: Progress | None,
    metrics: SyncObserver | None = None,
) -> TypeReport:
    report = TypeReport(resource_type)
    store = ingestor.store
    started = time.perf_counter()
    stored_cursor = await asyncio.to_thread(store.get_cursor, source.name, resource_type)
    cursor = None if full else stored_cursor
    high_water = cursor
    # A first load that fails part-way is still a first load on the next run: the marker
    # lives until a search of this type completes ('trigger: new' rules stay quiet till then).
    marker = resource_type + FIRST_LOAD_SUFFIX
    first_load = (
        stored_cursor is None
        or (await asyncio.to_thread(store.get_cursor, source.name, marker)) is not None
    )
    if stored_cursor is None:
        await asyncio.to_thread(store.set_cursor, source.name, marker, "1")
    sorted_so_far = True
    try:
        for _ in range(MAX_PASSES):
            params = [("_count", str(source.page_size)), ("_sort", "_lastUpdated")]
            if cursor:
                params.append(("_lastUpdated", since_param(cursor, source.overlap)))
            began = datetime.now(UTC)
            sorted_so_far, pass_max, pass_pages = True, None, 0
            async for page in _prefetched(client.search(resource_type, params)):
                page_started = time.perf_counter()
                report.pages += 1
                pass_pages += 1
                sorted_so_far = sorted_so_far and _in_order(page.resources, pass_max)
                result = await asyncio.to_thread(
                    ingestor.ingest,
                    source.name,
                    page.resources,
                    resource_type,
                    initial=first_load,
                )
                report.result.add(result)
                pass_max = later(pass_max, result.max_last_updated)
                if sorted_so_far and pass_max:
                    high_water = pass_max
                    await asyncio.to_thread(
                        store.set_cursor, source.name, resource_type, high_water
                    )
                _page_done(page.number, result, metrics, source.name, resource_type, page_started)
                if progress:
                    progress(source.name, resource_type, report.result.received, page.total)
            if pass_pages < 2 or pass_max is None or parse_instant(pass_max) < began:
                if pass_max and not sorted_so_far:
                    high_water = pass_max
                    await asyncio.to_thread(
                        store.set_cursor, source.name, resource_type, high_water
                    )
                break
            # A resource changed while we paged. Offset pages shift when that happens, so one
            # may have been skipped below the cursor just moved: back to where this pass began,
            # and search again (unchanged resources are no-ops by content hash).
            high_water = cursor
            await asyncio.to_thread(store.set_cursor, source.name, resource_type, cursor)
        if first_load:
            await asyncio.to_thread(store.set_cursor, source.name, marker, None)
    except FhirRequestError as exc:
        report.error = str(exc)
        log.error(
            "sync_type_failed",
            source=source.name,
            resource_type=resource_type,
            status=exc.status,
            error=type(exc).__name__,
            pages=report.pages,
        )
    report.cursor = high_water
    report.seconds = time.perf_counter() - started
    r = report.result
    log.info(
        "sync_type_done",
        source=source.name,
        resource_type=resource_type,
        pages=report.pages,
        received=r.received,
        stored=r.stored,
        unchanged=r.unchanged,
        quarantined=r.quarantined,
        tasks_created=r.tasks_created,
        tasks_updated=r.tasks_updated,
        sorted=sorted_so_far,
        ok=report.error is None,
        elapsed_ms=round(report.seconds * 1000),
    )
    return report


def _page_done(
    number: int,
    result: IngestResult,
    metrics: SyncObserver | None,
    source: str,
    resource_type: str,
    started: float,
) -> None:
    """The canonical line of one synced page (source, type and job id come from the context)."""
    log.info(
        "sync_page",
        page=number,
        received=result.received,
        stored=result.stored,
        unchanged=result.unchanged,
        quarantined=result.quarantined,
        tasks_created=result.tasks_created,
        tasks_updated=result.tasks_updated,
        elapsed_ms=round((time.perf_counter() - started) * 1000),
    )
    if metrics is not None:
        metrics.observe_page(
            source,
            resource_type,
            received=result.received,
            stored=result.stored,
            unchanged=result.unchanged,
            quarantined=result.quarantined,
            tasks_created=result.tasks_created,
        )


def dependency_order(resource_types: Sequence[str], rules: RuleSet) -> list[str]:
    """`resource_types` reordered so the types rules read through `related` come first.

    A booked Appointment is judged against the patient's Coverage; syncing Coverage first
    spares a first load from opening tasks that the next page would close again.
    Otherwise the configured order is kept.
    """
    wanted = list(dict.fromkeys(resource_types))
    needs = {
        t: {rtype for rule in rules.for_type(t) for _, rtype, _ in rule.related if rtype in wanted}
        for t in wanted
    }
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(rtype: str) -> None:
        if rtype in ordered or rtype in visiting:
            return  # already placed, or a cycle: keep configured order
        visiting.add(rtype)
        for dep in sorted(needs[rtype], key=wanted.index):
            visit(dep)
        visiting.discard(rtype)
        ordered.append(rtype)

    for rtype in wanted:
        visit(rtype)
    return ordered


async def sync_source(
    source: SourceConfig,
    client: FhirClient,
    ingestor: Ingestor,
    *,
    full: bool = False,
    progress: Progress | None = None,
    metrics: SyncObserver | None = None,
) -> SourceReport:
    """Sync every configured resource type of one source, one after the other.

    A failing type is reported and the others still run; nothing already stored is lost.
    """
    report = SourceReport(source.name)
    for resource_type in dependency_order(source.resource_types, ingestor.rules):
        report.types.append(
            await sync_type(
                source,
                resource_type,
                client,
                ingestor,
                full=full,
                progress=progress,
                metrics=metrics,
            )
        )
    return report
