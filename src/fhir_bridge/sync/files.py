"""Resources from files: NDJSON (a bulk export dropped on disk) and Bundle JSON, in small batches.

NDJSON is read line by line, so a file of any size costs one batch of memory. A Bundle (or a
single resource) is a JSON document and has to be parsed whole, one file at a time. A line that
is not a JSON object is passed on as it is, so the ingestor quarantines it with its reason:
nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.logging import get_logger
from fhir_bridge.sync.ingest import Ingestor, IngestResult
from fhir_bridge.validate.pool import PendingCheck

log = get_logger("files")

BATCH_SIZE = 500  # resources per ingest call: one store transaction each
BYTES_PER_RESOURCE = 1000  # for the estimate of a job's size (sample resources: ~1.3 KB)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
JSON_SUFFIXES = (".json",)
# Bulk export error files hold OperationOutcomes about the export, not data to store.
OUTCOME_TYPE = "OperationOutcome"
# progress(bytes done, bytes in all files, resources so far)
FileProgress = Callable[[int, int, int], None]


class UnreadablePath(FhirBridgeError):
    """A path given to file ingest does not exist, cannot be read, or holds no resource files."""


@dataclass(frozen=True)
class FileBatch:
    """Consecutive resources of one type from one file.

    :param resource_type: ``None`` for items that are not resources (they get quarantined).
    :param position: bytes of the file consumed once this batch is done (for progress).
    :param error: the whole file could not be read as JSON; ``resources`` is then empty.
    """

    path: Path
    resource_type: str | None
    resources: list[Any]
    position: int
    error: str | None = None


@dataclass
class FileIngestReport:
    """What ingesting a set of files did."""

    files: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    outcomes: int = 0  # OperationOutcome lines (bulk export error files), counted, not stored
    errors: list[str] = field(default_factory=list)  # files that could not be read at all


def is_resource_file(path: Path) -> bool:
    """True for ``.ndjson``, ``.jsonl`` and ``.json`` files, optionally gzipped."""
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """The resource files named by `paths`, folders searched recursively, in name order.

    :raises UnreadablePath: naming every path that is missing, unreadable or holds no files.
    """
    found: list[Path] = []
    bad: list[str] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_resource_file(p))
            if not files:
                bad.append(f"{path}: no .ndjson, .jsonl or .json files")
            found.extend(files)
        elif path.is_file() and os.access(path, os.R_OK):
            found.append(path)
        else:
            bad.append(f"{path}: {'cannot be read' if path.exists() else 'does not exist'}")
    if bad:
        raise UnreadablePath("; ".join(bad))
    return list(dict.fromkeys(found))


def read_batches(path: Path, batch_size: int = BATCH_SIZE) -> Iterator[FileBatch]:
    """The resources of one file as batches of at most `batch_size`, in file order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if path.name.lower().removesuffix(".gz").endswith(NDJSON_SUFFIXES):
        yield from _ndjson_batches(path, batch_size)
    else:
        yield from _json_batches(path, batch_size)


def _type_of(item: Any) -> str | None:
    rtype = item.get("resourceType") if isinstance(item, dict) else None
    return rtype if isinstance(rtype, str) and rtype else None


def _grouped(path: Path, items: Iterable[tuple[Any, int]], batch_size: int) -> Iterator[FileBatch]:
    """Batches of consecutive same-type items; each item comes with the position after it."""
    current: list[Any] = []
    rtype: str | None = None
    position = 0
    for item, position_after in items:
        item_type = _type_of(item)
        if current and (item_type != rtype or len(current) >= batch_size):
            yield FileBatch(path, rtype, current, position)
            current = []
        rtype = item_type
        current.append(item)
        position = position_after
    if current:
        yield FileBatch(path, rtype, current, position)


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(reader, raw file): the raw file's offset tells progress even through gzip."""
    raw = path.open("rb")
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def _ndjson_items(path: Path) -> Iterator[tuple[Any, int]]:
    reader, raw = _open(path)
    with raw, reader:
        for line in reader:
            if not line.strip():
                continue
            try:
                item: Any = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8: the line goes to quarantine as text
                item = line.decode("utf-8", errors="replace").strip()
            yield item, raw.tell()


def _ndjson_batches(path: Path, batch_size: int) -> Iterator[FileBatch]:
    yield from _grouped(path, _ndjson_items(path), batch_size)


def _json_batches(path: Path, batch_size: int) -> Iterator[FileBatch]:
    reader, raw = _open(path)
    with raw, reader:
        try:
            data = json.load(reader)
        except (ValueError, OSError) as exc:
            # The message of a JSON error names a position, never the content.
            yield FileBatch(path, None, [], raw.tell(), error=f"not JSON ({type(exc).__name__})")
            return
        size = raw.tell()
    if isinstance(data, list):
        items = data
    elif _type_of(data) == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            yield FileBatch(path, None, [], size, error="Bundle.entry is not a list")
            return
        # A transaction's DELETE entry carries no resource: nothing to store.
        items = [e.get("resource") for e in entries if isinstance(e, dict) and e.get("resource")]
    else:
        items = [data]
    yield from _grouped(path, ((item, size) for item in items), batch_size)


def _name_type(path: Path) -> str | None:
    """The type a bulk export file name announces (``Patient.ndjson``, ``1.Patient.ndjson``)."""
    from fhir_bridge.validate.parse import is_known_type

    return next((part for part in path.name.split(".") if is_known_type(part)), None)


def dependency_sorted(files: list[Path], ingestor: Ingestor) -> list[Path]:
    """`files` with the types rules read through `related` first (Coverage before Appointment),
    as a sync orders types; files whose name names no type keep their place at the end."""
    from fhir_bridge.sync.engine import dependency_order

    named = [t for t in (_name_type(p) for p in files) if t is not None]
    order = {t: i for i, t in enumerate(dependency_order(named, ingestor.rules))}
    return sorted(files, key=lambda p: order.get(_name_type(p) or "", len(order)))


def _batches(files: list[Path], batch_size: int) -> Iterator[FileBatch | Path]:
    """Every file's batches, each file followed by its path (the file is done)."""
    for path in files:
        yield from read_batches(path, batch_size)
        yield path


def _lookahead(
    items: Iterator[FileBatch | Path],
) -> Iterator[tuple[FileBatch | Path, FileBatch | None]]:
    """Each item with the next batch (None at the end): one batch is read ahead."""
    queue: list[FileBatch | Path] = []
    for item in items:
        queue.append(item)
        if isinstance(item, FileBatch):
            while len(queue) > 1:
                yield queue.pop(0), item
    for item in queue:
        yield item, None


def ingest_files(
    ingestor: Ingestor,
    source: str,
    paths: Iterable[Path],
    *,
    batch_size: int = BATCH_SIZE,
    progress: FileProgress | None = None,
) -> FileIngestReport:
    """Validate, store and map every resource in `paths` as coming from `source`.

    A type with nothing stored for `source` before this run counts as a first load (rules with
    ``trigger: new`` stay quiet), as on a first sync. Cursors are not touched: a file says
    nothing about what a server holds. With a parse pool, the next batch is read and sent to
    the pool before the current one is stored, so both run at once.

    :raises UnreadablePath: before anything is ingested.
    """
    files = dependency_sorted(collect_files(paths), ingestor)
    total = sum(p.stat().st_size for p in files)
    job = total // BYTES_PER_RESOURCE  # an estimate, for whether the parse pool pays
    already = ingestor.store.resource_counts(source)
    report = FileIngestReport(files=len(files))
    done = 0
    pending: tuple[FileBatch, PendingCheck | None] | None = None
    for item, following in _lookahead(_batches(files, batch_size)):
        if isinstance(item, Path):
            done += item.stat().st_size
            log.info("file_ingested", file=item.name, received=report.result.received)
            continue
        checks = pending[1] if pending is not None and pending[0] is item else None
        pending = None
        if following is not None and _is_data(following):
            rtype = following.resource_type
            pending = following, ingestor.precheck(source, following.resources, rtype, job)
        _ingest_batch(ingestor, source, item, checks, job, already, report)
        if progress is not None:
            progress(done + item.position, total, report.result.received)
    return report


def _ingest_batch(
    ingestor: Ingestor,
    source: str,
    batch: FileBatch,
    checks: PendingCheck | None,
    job: int,
    already: dict[str, int],
    report: FileIngestReport,
) -> None:
    if batch.error is not None:
        report.errors.append(f"{batch.path.name}: {batch.error}")
        log.error("file_unreadable", file=batch.path.name, error=batch.error)
    elif batch.resource_type == OUTCOME_TYPE:
        report.outcomes += len(batch.resources)
    else:
        rtype = batch.resource_type
        first = rtype is not None and already.get(rtype, 0) == 0
        report.result.add(
            ingestor.ingest(
                source, batch.resources, rtype, initial=first, prechecked=checks, job_size=job
            )
        )


def _is_data(batch: FileBatch) -> bool:
    """True for a batch `ingest_files` stores (not an error, not OperationOutcomes)."""
    return batch.error is None and batch.resource_type != OUTCOME_TYPE
