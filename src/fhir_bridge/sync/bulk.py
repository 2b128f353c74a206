"""Run a Bulk Data export of one source and ingest its files as they stream in; resumable.

The job state lives in the store under the cursor ``(source, "$export")`` as JSON: the status
URL once the server accepted the export, then the manifest and, per file, how many lines are
durably stored. It is written after every stored batch, so a run that dies part-way resumes
where it stopped: it polls the same job (a new one if the server forgot it) and skips the lines
already stored. A finished export leaves only ``{"since": transactionTime}``, which the next
export sends as ``_since``.

Files download in parallel (bounded), each through a small queue, while one consumer stores
them in dependency order (Coverage before Appointment): memory is bounded by
``parallel x QUEUE_DEPTH`` batches whatever the export's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirRequestError, ResourceNotFound
from fhir_bridge.fhir.bulk import (
    BulkExportClient,
    ExportFile,
    ExportRequest,
    Manifest,
    PollPolicy,
)
from fhir_bridge.fhir.client import FhirClient
from fhir_bridge.logging import get_logger
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import Ingestor, IngestResult

log = get_logger("sync.bulk")

STATE_KEY = "$export"
QUEUE_DEPTH = 2
# progress(source, resource type, resources stored so far, total announced or None)
ExportProgress = Callable[[str, str, int, int | None], None]
_Item = tuple[list[Any], int] | BaseException | None


@dataclass
class ExportReport:
    """The outcome of one export run of one source."""

    source: str
    result: IngestResult = field(default_factory=IngestResult)
    files: int = 0
    resumed: bool = False  # continued a job a previous run had started
    skipped_lines: int = 0  # lines stored by the previous run and not ingested again
    outcomes: int = 0  # OperationOutcome lines in the error files
    deleted: int = 0  # entries in the deleted files (reported; the store keeps no deletions)
    transaction_time: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the export finished and every file was stored."""
        return self.error is None


def load_state(ingestor: Ingestor, source: str) -> dict[str, Any]:
    """The persisted job state of `source` (empty when there is none or it is unreadable)."""
    text = ingestor.store.get_cursor(source, STATE_KEY)
    try:
        state = json.loads(text) if text else {}
    except ValueError:
        state = {}
    return state if isinstance(state, dict) else {}


def _save(ingestor: Ingestor, source: str, state: dict[str, Any]) -> None:
    ingestor.store.set_cursor(source, STATE_KEY, json.dumps(state, separators=(",", ":")))


class _Run:
    """One export run: state, report and the pieces the steps share."""

    def __init__(
        self,
        source: SourceConfig,
        bulk: BulkExportClient,
        ingestor: Ingestor,
        progress: ExportProgress | None,
    ) -> None:
        self.source = source
        self.bulk = bulk
        self.ingestor = ingestor
        self.progress = progress
        self.report = ExportReport(source.name)
        self.state: dict[str, Any] = {}
        self.counts: dict[str, int] = {}  # stored per type before this run
        self.per_type: dict[str, int] = {}  # lines handled per type, for progress
        self.batch_size = 500
        self.totals: dict[str, int] = {}  # lines announced per type (manifest counts)

    async def save(self) -> None:
        await asyncio.to_thread(_save, self.ingestor, self.source.name, self.state)

    async def manifest(self, request: ExportRequest) -> Manifest:
        """The job's manifest: resumed from the state, or polled, or a new job's."""
        if "manifest" in self.state:
            self.report.resumed = True
            return Manifest.from_json(self.state["manifest"])
        if "status_url" in self.state:
            self.report.resumed = True
            try:
                return await self._ready(self.state["status_url"])
            except ResourceNotFound:
                log.warning("bulk_export_forgotten", source=self.source.name)
        previous_since = self.state.get("since")
        if request.since is None and isinstance(previous_since, str):
            request = ExportRequest(request.level, request.group_id, request.types, previous_since)
        self.state = {"status_url": await self.bulk.kick_off(request), "since": previous_since}
        await self.save()
        return await self._ready(self.state["status_url"])

    async def _ready(self, status_url: str) -> Manifest:
        manifest = await self.bulk.wait(status_url)
        self.state["manifest"] = manifest.to_json()
        self.state["done"] = {}
        # Kept with the job: a resumed first load is still a first load ('trigger: new').
        types = {f.resource_type for f in manifest.files if f.kind == "output"}
        self.state["first_load"] = sorted(t for t in types if not self.counts.get(t))
        await self.save()
        return manifest

    async def download(self, file: ExportFile, queue: asyncio.Queue[_Item]) -> None:
        """Producer: one file's batches into its queue, then None (or the error)."""
        try:
            skip = int(self.state["done"].get(file.url, 0))
            async for batch in self.bulk.batches(file, skip=skip, batch_size=self.batch_size):
                await queue.put(batch)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, re-raised there
            await queue.put(exc)

    async def store(self, file: ExportFile, queue: asyncio.Queue[_Item]) -> None:
        """Consumer: ingest one file's batches and record its progress after each."""
        done = self.state["done"]
        self.report.skipped_lines += int(done.get(file.url, 0))
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            items, lines = item
            await asyncio.to_thread(self._ingest, file, items)
            done[file.url] = lines
            await self.save()
            rtype = file.resource_type
            self.per_type[rtype] = self.per_type.get(rtype, 0) + len(items)
            if self.progress is not None:
                self.progress(self.source.name, rtype, self.per_type[rtype], self.totals.get(rtype))

    def _ingest(self, file: ExportFile, items: list[Any]) -> None:
        if file.kind == "error":
            self.report.outcomes += len(items)
            return
        if file.kind == "deleted":
            # The store protocol has no deletion yet: count them so an operator sees them.
            self.report.deleted += sum(
                len(i.get("entry") or []) if isinstance(i, dict) else 1 for i in items
            )
            return
        initial = file.resource_type in self.state.get("first_load", ())
        job = self.totals.get(file.resource_type, 0)  # the manifest's count: the parse pool's cue
        result = self.ingestor.ingest(
            self.source.name, items, file.resource_type, initial=initial, job_size=job
        )
        self.report.result.add(result)


def _ordered(files: list[ExportFile], ingestor: Ingestor) -> list[ExportFile]:
    """Data files in dependency order, then the error and deleted files."""
    types = [f.resource_type for f in files if f.kind == "output"]
    rank = {t: i for i, t in enumerate(dependency_order(types, ingestor.rules))}
    kinds = {"output": 0, "deleted": 1, "error": 2}
    return sorted(files, key=lambda f: (kinds[f.kind], rank.get(f.resource_type, len(rank))))


async def export_source(
    source: SourceConfig,
    client: FhirClient,
    ingestor: Ingestor,
    request: ExportRequest | None = None,
    *,
    poll: PollPolicy | None = None,
    parallel: int = 3,
    batch_size: int = 500,
    progress: ExportProgress | None = None,
) -> ExportReport:
    """Export `source` (or resume its unfinished export) and ingest every file.

    A failure is reported in ``ExportReport.error``; what was stored stays stored and the
    next run resumes.

    :param request: level, types and ``_since``; by default the source's resource types at
        system level, since the last finished export.
    :param parallel: files downloaded at once.
    :param batch_size: NDJSON lines per ingest call (and per persisted progress step).
    """
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    request = request or ExportRequest(types=tuple(source.resource_types))
    run = _Run(source, BulkExportClient(client, poll=poll), ingestor, progress)
    run.batch_size = batch_size
    run.state = await asyncio.to_thread(load_state, ingestor, source.name)
    run.counts = await asyncio.to_thread(ingestor.store.resource_counts, source.name)
    try:
        manifest = await run.manifest(request)
        run.report.transaction_time = manifest.transaction_time
        files = _ordered(manifest.files, ingestor)
        for f in files:
            if f.count is not None:
                run.totals[f.resource_type] = run.totals.get(f.resource_type, 0) + f.count
        run.report.files = len(files)
        await _transfer(run, files, parallel)
    except FhirRequestError as exc:
        run.report.error = str(exc)
        if isinstance(exc, ResourceNotFound) and "manifest" in run.state:
            # The server dropped the job's files (expired, restarted): the next run starts a
            # new export; what is stored stays, and re-reading it is a no-op by content hash.
            run.state = {"since": run.state.get("since")}
            await run.save()
        log.error(
            "bulk_export_failed", source=source.name, status=exc.status, error=type(exc).__name__
        )
        return run.report
    status_url = run.state.get("status_url")
    run.state = {"since": manifest.transaction_time}
    await run.save()
    if isinstance(status_url, str):
        await run.bulk.delete(status_url)
    r = run.report
    log.info(
        "bulk_export_done",
        source=source.name,
        files=r.files,
        received=r.result.received,
        stored=r.result.stored,
        quarantined=r.result.quarantined,
        resumed=r.resumed,
        skipped_lines=r.skipped_lines,
        outcomes=r.outcomes,
        deleted=r.deleted,
    )
    return r


async def _transfer(run: _Run, files: list[ExportFile], parallel: int) -> None:
    """Download up to `parallel` files at once; store them one after the other, in order."""
    gate = asyncio.Semaphore(parallel)
    queues: list[asyncio.Queue[_Item]] = [asyncio.Queue(maxsize=QUEUE_DEPTH) for _ in files]

    async def produce(file: ExportFile, queue: asyncio.Queue[_Item]) -> None:
        async with gate:
            await run.download(file, queue)

    producers = [asyncio.create_task(produce(f, q)) for f, q in zip(files, queues, strict=True)]
    try:
        for file, queue in zip(files, queues, strict=True):
            await run.store(file, queue)
    finally:
        for task in producers:
            task.cancel()
        for task in producers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
