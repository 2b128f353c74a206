"""Bulk Data ``$export`` client: kick-off, polling that honours Retry-After, streamed NDJSON files.

Built on :class:`FhirClient`: kick-off, status polls and the final DELETE go through its request
machinery (retries, status classification, logs without URLs); file downloads stream through its
``httpx`` client so a file of any size costs one batch of memory. No state is kept here: the
caller persists the status URL, the manifest and how many lines of each file it has stored, and
passes them back after a crash.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from fhir_bridge.errors import FatalFhirError, MalformedResponse, TemporaryFhirError
from fhir_bridge.fhir.client import (
    FHIR_JSON,
    FhirClient,
    _Call,
    _check_id,
    _check_type,
    _origin,
    _raise_for_status,
    _transport_error,
)
from fhir_bridge.logging import get_logger

log = get_logger("bulk")

NDJSON = "application/fhir+ndjson"
Level = Literal["system", "patient", "group"]
FileKind = Literal["output", "error", "deleted"]


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the level, the types (``_type``) and the ``_since`` instant."""

    level: Level = "system"
    group_id: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None

    def __post_init__(self) -> None:
        if (self.level == "group") != (self.group_id is not None):
            raise ValueError("a group id goes with level 'group' and only with it")
        if self.group_id is not None:
            _check_id(self.group_id)  # it becomes a path segment
        for resource_type in self.types:
            _check_type(resource_type)

    @property
    def path(self) -> str:
        """The kick-off path relative to the FHIR base."""
        if self.level == "patient":
            return "Patient/$export"
        if self.level == "group":
            return f"Group/{self.group_id}/$export"
        return "$export"

    def params(self) -> list[tuple[str, str]]:
        """The kick-off query."""
        params = [("_outputFormat", NDJSON)]
        if self.types:
            params.append(("_type", ",".join(self.types)))
        if self.since:
            params.append(("_since", self.since))
        return params


@dataclass(frozen=True)
class ExportFile:
    """One file of a finished export's manifest."""

    kind: FileKind
    resource_type: str
    url: str
    count: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A finished export: its transaction time and its files."""

    transaction_time: str
    requires_access_token: bool
    files: list[ExportFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, for the persisted job state."""
        return {
            "transactionTime": self.transaction_time,
            "requiresAccessToken": self.requires_access_token,
            "files": [[f.kind, f.resource_type, f.url, f.count] for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """The inverse of :meth:`to_json`."""
        return cls(
            data["transactionTime"],
            bool(data["requiresAccessToken"]),
            [ExportFile(k, t, u, c) for k, t, u, c in data["files"]],
        )


@dataclass(frozen=True)
class PollPolicy:
    """How to wait for an export: the server's Retry-After, capped, else a growing backoff."""

    initial_wait: float = 1.0  # first wait when the server gives no Retry-After
    max_wait: float = 60.0  # cap on one wait, the server's Retry-After included
    timeout: float = 6 * 3600.0  # give up on an export that takes longer than this

    def wait(self, retry_after: float | None, polls: int) -> float:
        """Seconds to wait before poll number `polls + 1`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        return min(self.initial_wait * 2.0 ** min(polls, 30), self.max_wait)


class BulkExportClient:
    """Run ``$export`` jobs on the server behind an open :class:`FhirClient`.

    :param poll: how long to wait between status polls, and for how long in all.
    :param sleep: awaited between polls; default: the FhirClient's (tests pass a recorder).
    """

    def __init__(
        self,
        fhir: FhirClient,
        *,
        poll: PollPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.fhir = fhir
        self.poll = poll or PollPolicy()
        self._sleep = sleep or fhir._sleep

    @property
    def _source(self) -> str:
        return self.fhir._source

    async def kick_off(self, request: ExportRequest) -> str:
        """Start an export; return its status URL (``Content-Location`` of the 202)."""
        call = _Call("GET", "$export")
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        response = await self.fhir._request(
            call, request.path, params=tuple(request.params()), headers=headers
        )
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not isinstance(location, str) or not location:
            raise MalformedResponse(
                f"{call.describe(self._source)}: HTTP {response.status_code}: "
                "expected 202 with Content-Location",
                status=response.status_code,
            )
        self._check_origin(httpx.URL(location), call)
        log.info("bulk_export_started", source=self._source, level=request.level)
        return location

    async def wait(self, status_url: str) -> Manifest:
        """Poll `status_url` until the export is done; return its manifest.

        :raises ResourceNotFound: the server no longer knows the job (expired or restarted).
        :raises TemporaryFhirError: the export took longer than the poll timeout.
        """
        call = _Call("GET", "$export-status")
        started = time.monotonic()
        polls = 0
        while True:
            response = await self.fhir._request(call, status_url, headers={"Accept": FHIR_JSON})
            if response.status_code == 200:
                return self._manifest(response, call)
            retry_after = _retry_after(response.headers.get("Retry-After"))
            delay = self.poll.wait(retry_after, polls)
            polls += 1
            if time.monotonic() - started + delay > self.poll.timeout:
                raise TemporaryFhirError(
                    f"{call.describe(self._source)}: export not done after {polls} polls"
                )
            log.info(
                "bulk_export_waiting",
                source=self._source,
                progress=response.headers.get("X-Progress", "")[:40],
                wait=delay,
            )
            await self._sleep(delay)

    async def delete(self, status_url: str) -> None:
        """Tell the server it may delete the job's files (best effort; errors are logged)."""
        call = _Call("DELETE", "$export-status")
        try:
            await self.fhir._request(call, status_url)
        except (TemporaryFhirError, FatalFhirError) as exc:
            log.warning("bulk_export_delete_failed", source=self._source, status=exc.status)

    async def batches(
        self, file: ExportFile, *, skip: int = 0, batch_size: int = 500
    ) -> AsyncIterator[tuple[list[Any], int]]:
        """Stream one NDJSON file as (items, lines so far) batches, leaving out the first `skip`
        lines (those stored before a crash). A line that is not JSON is passed on as text.

        A broken or truncated download is retried by the client's retry policy and resumes
        after the lines already yielded.
        """
        done = skip
        attempt = 0
        while True:
            attempt += 1
            before = done
            try:
                async for items, lines in self._stream(file, done, batch_size):
                    done = lines
                    yield items, lines
                return
            except TemporaryFhirError as exc:
                if done > before:
                    attempt = 1  # it got further: a long file may break more than `attempts` times
                if attempt >= self.fhir._retry.attempts:
                    raise
                wait = self.poll.wait(exc.retry_after, attempt - 1)
                log.warning(
                    "bulk_download_retrying",
                    source=self._source,
                    resource_type=file.resource_type,
                    status=exc.status,
                    attempt=attempt,
                    lines=done,
                    wait=wait,
                )
                await self._sleep(wait)

    async def _stream(
        self, file: ExportFile, skip: int, batch_size: int
    ) -> AsyncIterator[tuple[list[Any], int]]:
        call = _Call("GET", file.resource_type)
        url = httpx.URL(file.url)
        self._check_origin(url, call)
        headers = {"Accept": NDJSON}
        try:
            async with self.fhir._client().stream("GET", url, headers=headers) as response:
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response, call, self._source)
                    raise FatalFhirError(f"{call.describe(self._source)}: redirected")
                lines = 0
                batch: list[Any] = []
                async for line in _lines(response, call, self._source):
                    lines += 1
                    if lines <= skip:
                        continue
                    batch.append(line)
                    if len(batch) >= batch_size:
                        yield batch, lines
                        batch = []
                if batch:
                    yield batch, lines
        except httpx.HTTPError as exc:
            raise _transport_error(exc, call, self._source, url.path) from exc

    def _check_origin(self, url: httpx.URL, call: _Call) -> None:
        base = self.fhir._base
        if url.is_absolute_url and _origin(url) != _origin(base):
            # Never send our credentials to another host.
            raise FatalFhirError(
                f"{call.describe(self._source)}: export URL points at another server "
                f"({url.scheme}://{url.host})"
            )

    def _manifest(self, response: httpx.Response, call: _Call) -> Manifest:
        try:
            body = json.loads(response.content)
            files = [
                ExportFile(kind, str(item["type"]), str(item["url"]), _count(item.get("count")))
                for kind in ("output", "error", "deleted")
                for item in body.get(kind) or []
            ]
            manifest = Manifest(
                str(body["transactionTime"]), bool(body.get("requiresAccessToken")), files
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(
                f"{call.describe(self._source)}: HTTP 200: not a bulk export manifest",
                status=200,
            ) from exc
        log.info(
            "bulk_export_ready",
            source=self._source,
            files=len(files),
            resources=sum(f.count or 0 for f in files if f.kind == "output"),
        )
        return manifest


async def _lines(response: httpx.Response, call: _Call, source: str) -> AsyncIterator[Any]:
    """The decoded non-blank lines of an NDJSON body.

    A last line without its newline that does not parse means the body was cut short (a
    proxy or server gave up mid-file): that is a temporary failure, not a bad resource.
    """
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            if raw.strip():
                yield _decode(raw)
    if pending.strip():
        try:
            yield json.loads(pending)
        except ValueError:
            raise TemporaryFhirError(
                f"{call.describe(source)}: NDJSON body ends mid-line (truncated)",
                url=response.request.url.path,
            ) from None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # quarantined as text by the ingestor
        return raw.decode("utf-8", errors="replace").strip()


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _retry_after(value: str | None) -> float | None:
    from fhir_bridge.fhir.client import parse_retry_after

    return parse_retry_after(value)
