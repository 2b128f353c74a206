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

Servers without `_lastUpdated` get another plan (`fhir_bridge.sync.strategy`): a date-param
search with a cursor at the previous run's start (misses edits), or a full re-pull.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirRequestError
from fhir_bridge.fhir import FhirClient, Page
from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store import Store
from fhir_bridge.sync.ingest import Ingestor, IngestResult, later, parse_instant
from fhir_bridge.sync.strategy import INCREMENTAL, Mode, StrategyCache, TypePlan
from fhir_bridge.validate.pool import PendingCheck

log = get_logger("sync")

MAX_PASSES = 3  # searches per run when the data keeps changing while we page
MAX_NEW_PATIENT_PULLS = 200  # newly seen patients whose resources one run fetches by patient
# FHIR R4 types with a `patient` search parameter (a newly seen patient's resources are
# fetched with it; configured types not listed are left to their cursor search).
PATIENT_SEARCH_TYPES = frozenset(
    {
        "AllergyIntolerance", "Appointment", "CarePlan", "CareTeam", "Claim", "Condition",
        "Coverage", "CoverageEligibilityRequest", "CoverageEligibilityResponse",
        "DiagnosticReport", "DocumentReference", "Encounter", "ExplanationOfBenefit", "Flag",
        "Goal", "Immunization", "MedicationAdministration", "MedicationDispense",
        "MedicationRequest", "MedicationStatement", "Observation", "Procedure",
        "RiskAssessment", "ServiceRequest",
    }
)  # fmt: skip
TYPES_AT_ONCE = 2  # types whose searches run at once in `sync_source`
PREFETCH_DEPTH = 2  # pages a search runs ahead of its ingest (`_prefetched`)
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
    seconds: float = 0.0  # its own: not the wait for the type before it (`sync_type` after=)
    new_patients: list[str] = field(default_factory=list)  # Patient ids first stored this run


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


async def _prefetched(
    pages: AsyncIterator[Page],
    ahead: Callable[[Page], Awaitable[object]] | None = None,
    *,
    depth: int = 1,
    deepen: asyncio.Event | None = None,
    exhausted: asyncio.Event | None = None,
) -> AsyncGenerator[Page, None]:
    """Yield `pages`, fetching the next ones while the caller processes the current one.

    At most `depth` pages ahead: while the caller holds page N, pages up to N + `depth` are
    asked for, and N + `depth` + 1 not before N + 1 is handed over (memory stays at
    `depth` + 1 pages whatever the search's size). Ingest (parse, store, rules) runs in a
    worker thread, so fetching meanwhile overlaps network and server time with our CPU time.
    One page ahead leaves the server idle while the page it just sent is checked; two keep
    it busy. Pages come in order; an error fetching page N+1 is raised when the caller asks
    for it, after page N was processed (and its cursor moved), so a failing page never moves
    the cursor past itself.

    :param ahead: called with each page as soon as it arrives, before the caller gets it (the
        parse pool starts on the page meanwhile).
    :param deepen: one page ahead until this is set, `depth` from then on (a type whose
        predecessor still fetches holds no more than two pages).
    :param exhausted: set when every page has come (or the fetch failed).
    """
    iterator = aiter(pages)
    fetched: collections.deque[Page] = collections.deque()  # not yet handed over
    taken, arrived = asyncio.Event(), asyncio.Event()
    failure: list[BaseException] = []

    def limit() -> int:
        return depth if deepen is None or deepen.is_set() else 1

    async def deepened() -> None:
        if deepen is not None:
            await deepen.wait()
            taken.set()

    async def fetch() -> None:
        waker = asyncio.create_task(deepened())
        try:
            while True:
                while len(fetched) >= limit():
                    taken.clear()
                    await taken.wait()
                page = await anext(iterator, None)
                if page is None:
                    return
                if ahead is not None:
                    await ahead(page)
                fetched.append(page)
                arrived.set()
        except Exception as exc:  # raised to the caller when it asks for that page
            failure.append(exc)
        finally:
            waker.cancel()
            arrived.set()
            if exhausted is not None:
                exhausted.set()

    fetcher = asyncio.create_task(fetch())
    try:
        while True:
            while not fetched and not fetcher.done():
                arrived.clear()
                await arrived.wait()
            if not fetched:
                if failure:
                    raise failure[0]
                return
            page = fetched.popleft()
            taken.set()
            yield page
    finally:
        if not fetcher.done():
            fetcher.cancel()
            # The caller stopped (an error, or it had enough): the pages it never asked for,
            # and their errors if any, are of no interest.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetcher
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


@dataclass
class Turn:
    """One type's place in its source's run (`sync_source`): the types' searches overlap, but
    they are ingested one after the other, in dependency order."""

    after: asyncio.Future[Any] | None = None  # the type before: nothing is ingested until done
    before_fetched: asyncio.Event | None = None  # the type before has all its pages
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # this one's first page came
    fetched: asyncio.Event = field(default_factory=asyncio.Event)  # this one has all its pages


async def sync_type(
    source: SourceConfig,
    resource_type: str,
    client: FhirClient,
    ingestor: Ingestor,
    *,
    full: bool = False,
    progress: Progress | None = None,
    metrics: SyncObserver | None = None,
    plan: TypePlan = INCREMENTAL,
    turn: Turn | None = None,
    start: TypeStart | None = None,
) -> TypeReport:
    """Pull every resource of `resource_type` changed since the cursor and ingest it.

    Every log line of the run (ours, the FHIR client's, ingest's) carries the run's `job_id`.
    :param plan: how changes are found (default: `_lastUpdated`).
    :param turn: its place among the types of a `sync_source` run: the search starts now,
        but nothing is ingested before the type before it is done (its resources this type's
        rules may read); the search runs further ahead once that type has all its pages.
    :param start: the type's cursor state, read by the caller (`type_starts`); read here if
        omitted.
    """
    try:
        with structlog.contextvars.bound_contextvars(
            job_id=new_job_id(), source=source.name, resource_type=resource_type
        ):
            report = await _sync_type(
                source,
                resource_type,
                client,
                ingestor,
                full,
                progress,
                metrics,
                plan,
                turn or Turn(),
                start,
            )
    finally:
        if turn is not None:
            turn.answered.set()
            turn.fetched.set()
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
    metrics: SyncObserver | None,
    plan: TypePlan,
    turn: Turn,
    start: TypeStart | None,
) -> TypeReport:
    report = TypeReport(resource_type)
    after = turn.after
    store = ingestor.store
    started = time.perf_counter()
    incremental = plan.mode is Mode.LAST_UPDATED
    if start is None:
        [start] = await asyncio.to_thread(type_starts, store, source.name, [resource_type])
    stored_cursor, first_load = start.cursor, start.first_load
    cursor = None if full or plan.mode is Mode.FULL else stored_cursor
    high_water = cursor
    marker = resource_type + FIRST_LOAD_SUFFIX
    sorted_so_far = True
    try:
        for _ in range(MAX_PASSES):
            params = [("_count", str(source.page_size))]
            if incremental:
                params.append(("_sort", "_lastUpdated"))
                if cursor:
                    params.append(("_lastUpdated", since_param(cursor, source.overlap)))
            elif cursor and plan.mode is Mode.CREATED and plan.param:
                params.append((plan.param, since_param(cursor, source.overlap)))
            began = datetime.now(UTC)
            sorted_so_far, pass_max, pass_pages = incremental, None, 0
            checks: dict[int, PendingCheck | None] = {}  # page number -> its pool checks

            async def ahead(page: Page, checks: dict[int, PendingCheck | None] = checks) -> None:
                # The parse pool (if the search is big enough) starts on the page as soon as
                # it arrives, while the page before it is still being ingested.
                job = max(page.total or 0, report.result.received + len(page.resources))
                checks[page.number] = await asyncio.to_thread(
                    ingestor.precheck, source.name, page.resources, resource_type, job
                )

            pool = ingestor.pool is not None and ingestor.pool.enabled
            pages = _prefetched(
                client.search(resource_type, params),
                ahead if pool else None,
                depth=PREFETCH_DEPTH,
                deepen=turn.before_fetched,
                exhausted=turn.fetched,
            )
            # aclosing: an ingest error stops the fetch ahead now, not when garbage-collected.
            async with contextlib.aclosing(pages):
                async for page in pages:
                    turn.answered.set()
                    if after is not None and not after.done():
                        waited = time.perf_counter()
                        await asyncio.wait([after])  # its outcome is its own report's
                        started += time.perf_counter() - waited  # not this type's time
                    if after is not None and (after.cancelled() or after.exception()):
                        # The type before raised (not a reported error): the run stops
                        # there, as it did when types ran one after the other.
                        raise asyncio.CancelledError
                    page_started = time.perf_counter()
                    report.pages += 1
                    pass_pages += 1
                    sorted_so_far = sorted_so_far and _in_order(page.resources, pass_max)
                    watch = resource_type == "Patient" and not first_load
                    unseen = (
                        await asyncio.to_thread(_unseen, store, source.name, page.resources)
                        if watch
                        else []
                    )
                    result = await asyncio.to_thread(
                        ingestor.ingest,
                        source.name,
                        page.resources,
                        resource_type,
                        initial=first_load,
                        prechecked=checks.pop(page.number, None),
                        # The pool may have become ready since `ahead` ran: then it checks
                        # this page now (its workers split it).
                        job_size=page.total or 0,
                    )
                    if unseen:
                        now_stored = await asyncio.to_thread(_stored, store, source.name, unseen)
                        report.new_patients.extend(
                            i for i in now_stored if i not in report.new_patients
                        )
                    report.result.add(result)
                    pass_max = later(pass_max, result.max_last_updated)
                    if sorted_so_far and pass_max:
                        high_water = pass_max
                        await asyncio.to_thread(
                            store.set_cursor, source.name, resource_type, high_water
                        )
                    _page_done(
                        page.number, result, metrics, source.name, resource_type, page_started
                    )
                    if progress:
                        progress(source.name, resource_type, report.result.received, page.total)
            if not incremental:
                # One pass; the next run searches from this run's start (created) or all (full).
                high_water = began.isoformat()
                await asyncio.to_thread(store.set_cursor, source.name, resource_type, high_water)
                break
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


@dataclass(frozen=True)
class TypeStart:
    """Where a type's sync starts: its stored cursor, and whether it is (still) a first load."""

    cursor: str | None
    first_load: bool


def type_starts(store: Store, source: str, resource_types: Sequence[str]) -> list[TypeStart]:
    """The cursor state of each of `resource_types`, marking those without a cursor as in
    their first load.

    A first load that fails part-way is still a first load on the next run: the marker lives
    until a search of the type completes (`trigger: new` rules stay quiet till then).
    `sync_source` reads every type's at once before any ingest starts: read when each type
    starts, they waited for the store's writer (SQLite's one connection) while the type
    before was being ingested, and the search did not start meanwhile.
    """
    starts = []
    for resource_type in resource_types:
        marker = resource_type + FIRST_LOAD_SUFFIX
        cursor = store.get_cursor(source, resource_type)
        if cursor is None:
            store.set_cursor(source, marker, "1")
        first_load = cursor is None or store.get_cursor(source, marker) is not None
        starts.append(TypeStart(cursor, first_load))
    return starts


def _unseen(store: Store, source: str, resources: list[dict[str, object]]) -> list[str]:
    """Ids of the page's Patients not in the store yet."""
    ids = [i for r in resources if isinstance(i := r.get("id"), str)]
    known = store.resource_hashes(source, "Patient", ids)  # one read for the page
    return [i for i in ids if i not in known]


def _stored(store: Store, source: str, ids: list[str]) -> list[str]:
    """Those of `ids` whose Patient is now stored (not quarantined)."""
    known = store.resource_hashes(source, "Patient", ids)
    return [i for i in ids if i in known]


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
    strategies: StrategyCache | None = None,
) -> SourceReport:
    """Sync every configured resource type of one source, one after the other.

    A failing type is reported and the others still run; nothing already stored is lost.
    :param strategies: decides (and remembers) each type's plan; a fresh cache if omitted.
    """
    report = SourceReport(source.name)
    cache = strategies or StrategyCache()
    plans = cache.cached(source.name)
    # A first load searches everything whatever the plan, so in auto it does not wait for
    # /metadata (nor lets a failing /metadata trip the breaker first): it reads it afterwards.
    # Its incremental cursor (highest lastUpdated, before the run's start) is a safe start
    # for a created-date plan too.
    auto = plans is None and source.sync_strategy == "auto"
    pool = ingestor.pool if ingestor.pool is not None and ingestor.pool.enabled else None
    ordered = dependency_order(source.resource_types, ingestor.rules)
    starts = dict(
        zip(
            ordered,
            await asyncio.to_thread(type_starts, ingestor.store, source.name, ordered),
            strict=True,
        )
    )
    first = all(s.cursor is None for s in starts.values())
    defer = auto and first
    if pool is not None and (first or full):
        # Everything is searched: a big job. The workers start while the first pages come,
        # not when a search's total first passes `parse_pool_min` (types before it would be
        # checked in-process).
        pool.start(background=True)
    if plans is None and not defer:
        plans = await _decide(cache, source, client)
    # Types are ingested one after the other, in dependency order. Each one's search starts
    # once the type before it has had its first page (the source answers: a failing one is
    # not asked twice at once, its breaker's first failure stays the first type's), while
    # that type is still being ingested: no type waits for the server at its start, and the
    # parse pool checks its first pages meanwhile. At most TYPES_AT_ONCE run (the one being
    # ingested and the next), so memory stays at a few pages.
    running: list[tuple[asyncio.Task[TypeReport], Turn]] = []
    try:
        for resource_type in ordered:
            before = running[-1] if running else None
            if before is not None:
                await before[1].answered.wait()
            while len(running) >= TYPES_AT_ONCE:
                report.types.append(await running.pop(0)[0])
            turn = Turn(
                after=before[0] if before else None,
                before_fetched=before[1].fetched if before else None,
            )
            task = asyncio.create_task(
                sync_type(
                    source,
                    resource_type,
                    client,
                    ingestor,
                    full=full,
                    progress=progress,
                    metrics=metrics,
                    plan=(plans or {}).get(resource_type, INCREMENTAL),
                    turn=turn,
                    start=starts[resource_type],
                )
            )
            running.append((task, turn))
        while running:
            report.types.append(await running.pop(0)[0])
    finally:
        for task, _ in running:  # cancelled, or the type before failed unexpectedly
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
    if defer and report.ok:  # after a failed run the next one asks (no extra breaker probe)
        await _decide(cache, source, client)
    new_patients = [i for t in report.types if t.resource_type == "Patient" for i in t.new_patients]
    if new_patients:
        with structlog.contextvars.bound_contextvars(job_id=new_job_id(), source=source.name):
            await _pull_for_patients(source, client, ingestor, new_patients, report)
    return report


async def _decide(
    cache: StrategyCache, source: SourceConfig, client: FhirClient
) -> dict[str, TypePlan]:
    """The cache's plans for `source`, its `/metadata` read logged under a job id of its own."""
    with structlog.contextvars.bound_contextvars(job_id=new_job_id(), source=source.name):
        return await cache.plans(source, client)


async def pull_for_patients(
    source: SourceConfig, client: FhirClient, ingestor: Ingestor, patient_ids: list[str]
) -> SourceReport:
    """`sync_source`'s pull of newly seen patients' resources, for callers that sync one
    (source, type) at a time (`worker.py`); a report per configured type searched by patient.
    """
    report = SourceReport(source.name, [TypeReport(t) for t in source.resource_types])
    with structlog.contextvars.bound_contextvars(job_id=new_job_id(), source=source.name):
        await _pull_for_patients(source, client, ingestor, patient_ids, report)
    return report


async def _pull_for_patients(
    source: SourceConfig,
    client: FhirClient,
    ingestor: Ingestor,
    patient_ids: list[str],
    report: SourceReport,
) -> None:
    """Fetch the configured types' resources of Patients first seen after the initial load.

    Their resources may carry a `lastUpdated` below the type's cursor (moved from another
    system, or back-dated), so the cursor search alone would never see them. Searched by
    `patient=Patient/{id}`; what is already stored is a no-op by content hash. Failures are
    logged and leave the type's report alone: the cursor search has already run.
    """
    if len(patient_ids) > MAX_NEW_PATIENT_PULLS:
        log.warning(
            "new_patient_pulls_capped",
            source=source.name,
            new_patients=len(patient_ids),
            cap=MAX_NEW_PATIENT_PULLS,
        )
    by_type = {t.resource_type: t for t in report.types}
    types = [t for t in by_type if t in PATIENT_SEARCH_TYPES]
    fetched = 0
    for patient_id in patient_ids[:MAX_NEW_PATIENT_PULLS]:
        for resource_type in types:
            params = [("patient", f"Patient/{patient_id}"), ("_count", str(source.page_size))]
            try:
                async for page in client.search(resource_type, params):
                    result = await asyncio.to_thread(
                        ingestor.ingest, source.name, page.resources, resource_type, initial=False
                    )
                    by_type[resource_type].result.add(result)
                    by_type[resource_type].pages += 1
                    fetched += result.received
            except FhirRequestError as exc:
                log.warning(
                    "new_patient_pull_failed",
                    source=source.name,
                    resource_type=resource_type,
                    status=exc.status,
                    error=type(exc).__name__,
                )
    log.info(
        "new_patients_pulled",
        source=source.name,
        patients=min(len(patient_ids), MAX_NEW_PATIENT_PULLS),
        received=fetched,
    )
