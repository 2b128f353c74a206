"""The R4B parse and profile checks of large pages in worker processes (the parse pool).

The parse is most of a resource's ingest cost and needs nothing but the resource, while the
store, the rules and the tasks stay in the one process that writes. So a page is cut into
chunks, each chunk goes to a worker as compact JSON bytes, and what comes back is one small
verdict per resource (`Findings`: None for the nearly all that pass) with its content hash.
The caller keeps its own dicts and applies the source's policy (quarantine or warn) itself,
so the outcome is that of `findings` and `content_hash` run in-process, in the same order.

Workers start lazily (the first page of a job big enough to pay for them, or a sync's first
load), in a background thread (pages are checked in-process until they are ready), from a
forkserver (never a plain fork of a process with threads and an event loop), ignore Ctrl-C (the main
process shuts them down) and exit with it. A page whose chunks a worker could not check (it
crashed, the pool broke, or it hung: no answer within `page_timeout` seconds, after which
its workers are killed) is checked in-process with a warning; the next big page starts a
fresh pool, up to `MAX_RESTARTS` times.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import orjson

from fhir_bridge import gctune
from fhir_bridge.logging import get_logger
from fhir_bridge.validate.canonical import content_hash
from fhir_bridge.validate.parse import Issue, is_known_type, validate_resource
from fhir_bridge.validate.profiles import ProfileSet

log = get_logger("parse_pool")

# (issues of the R4B parse, issues of core bindings and profiles when the parse passed);
# None: nothing keeps the resource out of the store.
Findings = tuple[list[Issue], list[Issue]] | None
# A resource's findings and, when it parsed (it may be stored), its content hash.
Checked = tuple[Findings, str | None]

MAX_RESTARTS = 3  # fresh pools after a broken one, then in-process for the process's life
MIN_PAGE = 50  # a smaller page is checked in-process even when the pool runs
MIN_CHUNK = 25  # resources per task sent to a worker, at least (fewer: IPC outweighs the gain)
MAX_AUTO_WORKERS = 8
# Seconds a page's checks may take in the workers before they count as hung (a page of 1,000
# resources takes about half a second; a worker stuck in a pathological resource, or stopped,
# would otherwise hold the sync that waits for it forever).
PAGE_TIMEOUT = 120.0
_WARM_TYPES = ("Patient", "Appointment", "CarePlan", "MedicationStatement", "Coverage")


def findings(
    resource: Any,
    expected_type: str | None,
    profile_set: ProfileSet | None,
    profiles: Sequence[str],
) -> Findings:
    """What keeps `resource` out of the store, before a source's policy is applied.

    A resource whose profile checks give warnings only is None, as one without issues: the
    policy stores both alike.
    """
    issues = validate_resource(resource, expected_type)
    if issues:
        return issues, []
    if profile_set is None:
        return None
    checked = profile_set.check_all(resource, profiles)
    if any(i["severity"] == "error" for i in checked):
        return [], checked
    return None


def auto_workers(cpus: int | None = None) -> int:
    """Workers for `parse_workers: auto`: one per CPU beyond the writer's (at most
    MAX_AUTO_WORKERS), and none on one or two CPUs. Measured on 2 CPUs shared with other work,
    the pool halves the writer's CPU time but adds about a tenth in total and gained no wall
    time: it pays where a CPU is left for the writer and one more for a worker."""
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return 0 if count <= 2 else min(MAX_AUTO_WORKERS, count - 1)


# -- in the workers -----------------------------------------------------------------------------
_worker_profiles: ProfileSet | None = None


def _init_worker(profile_blob: bytes | None) -> None:
    """Worker start: Ctrl-C is the main process's (it shuts the pool down), profiles unpickled."""
    global _worker_profiles
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_profiles = pickle.loads(profile_blob) if profile_blob else None  # noqa: S301 - ours


def _warm() -> int:
    """Import the models of the common types, then settle the heap (gctune); the worker's
    pid (for tests)."""
    for rtype in _WARM_TYPES:
        is_known_type(rtype)
    gctune.settle()
    return os.getpid()


def _check_chunk(
    blob: bytes, pickled: bool, expected_type: str | None, profiles: tuple[str, ...]
) -> list[Checked]:
    resources = pickle.loads(blob) if pickled else orjson.loads(blob)  # noqa: S301 - ours
    out: list[Checked] = []
    for resource in resources:
        found = findings(resource, expected_type, _worker_profiles, profiles)
        # The hash too, off the writer: `encode` gives back equal values, so the same hash.
        parsed = found is None or not found[0]
        out.append((found, content_hash(resource) if parsed else None))
    return out


# -- in the main process ------------------------------------------------------------------------
@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start processes without the caller's `__main__`.

    A forkserver or spawn child otherwise runs the main script again as `__mp_main__`: the
    whole CLI and API imports in each worker (seconds, tens of MB), and a script without an
    `if __name__ == "__main__"` guard would start a second pool from there. The workers need
    only this module, so the main module is replaced by an empty one while they start.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def encode(resources: list[Any]) -> tuple[bytes, bool]:
    """`resources` as bytes for a worker: orjson (about 8x cheaper than pickle for the sender,
    which is the busy process), or pickle where JSON would not give back the same values.

    orjson refuses integers beyond 64 bits and lone surrogates, and writes NaN/Infinity (which
    `json` reads) as null: a blob containing "null" anywhere (rare in FHIR) is pickled.
    """
    try:
        blob = orjson.dumps(resources)
    except TypeError:  # orjson.JSONEncodeError is one
        return pickle.dumps(resources, protocol=pickle.HIGHEST_PROTOCOL), True
    if b"null" in blob:
        return pickle.dumps(resources, protocol=pickle.HIGHEST_PROTOCOL), True
    return blob, False


def _workers(executor: ProcessPoolExecutor | None) -> list[Any]:
    """The worker processes of `executor` (a private attribute: the executor has no API)."""
    processes = getattr(executor, "_processes", None) or {}
    return list(processes.values())


class PendingCheck:
    """The findings of one page, being computed by the pool."""

    def __init__(
        self,
        pool: ParsePool,
        futures: list[Future[list[Checked]]],
        size: int,
        executor: ProcessPoolExecutor | None = None,
    ) -> None:
        self._pool = pool
        self._futures = futures
        self.size = size
        self._executor = executor  # the one that ran it: only its failure drops the pool
        self._deadline = time.monotonic() + pool.page_timeout

    def results(self) -> list[Checked] | None:
        """One `Checked` per resource, in page order; None when the pool failed or hung (the
        caller checks the page in-process)."""
        out: list[Checked] = []
        try:
            for future in self._futures:
                out.extend(future.result(max(0.0, self._deadline - time.monotonic())))
        except FutureTimeout:
            self._pool.failed(
                TimeoutError(f"no answer in {self._pool.page_timeout:g} s"),
                self.size,
                self._executor,
                hung=True,
            )
            return None
        except Exception as exc:  # a crashed worker (BrokenProcessPool), anything else
            self._pool.failed(exc, self.size, self._executor)
            return None
        self._pool.pages_checked += 1
        return out


class ParsePool:
    """Worker processes that run `findings` over chunks of pages.

    :param profile_set: the ingestor's profiles (pickled once to each worker).
    :param workers: processes; 0 turns the pool off.
    :param min_resources: the pool starts for a page when it, or the job it belongs to (a
        search's Bundle.total, a file ingest's estimate), has at least this many resources.
    :param min_page: once started, the pool takes every page of at least this many.
    :param page_timeout: seconds a page's checks may take before the workers count as hung
        (they are killed, the page is checked in-process).
    """

    def __init__(
        self,
        profile_set: ProfileSet | None,
        workers: int,
        *,
        min_resources: int = 2000,
        min_page: int = MIN_PAGE,
        page_timeout: float = PAGE_TIMEOUT,
    ) -> None:
        self.workers = max(0, workers)
        self.page_timeout = page_timeout
        self.min_resources = min_resources
        self.min_page = min_page
        self._profile_blob = pickle.dumps(profile_set) if profile_set is not None else None
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._warmup: list[Future[int]] = []
        self._restarts = 0
        self._closed = False
        self._starting = False  # a background start is running
        self.pages_checked = 0  # pages whose checks the workers did (benchmarks, tests)

    @property
    def enabled(self) -> bool:
        """False when configured off, closed, or given up after repeated failures."""
        return self.workers > 0 and not self._closed and self._restarts <= MAX_RESTARTS

    def wanted(self, page_size: int, job_size: int = 0) -> bool:
        """True when a page should go to the pool: its job (or the page) is big enough to
        start one, or the pool runs already (started for an earlier big job, its start-up is
        paid) and the page is worth the round trip."""
        if not self.enabled or page_size == 0:
            return False
        if self._executor is not None:
            return page_size >= self.min_page
        return max(page_size, job_size) >= self.min_resources

    def start(self, *, background: bool = False) -> None:
        """Start the workers (without waiting for them to be ready); a no-op when started or
        disabled. Starting takes a while (the first pool of a process starts the forkserver,
        which imports the R4B models): `background` does it in a thread, and pages are checked
        in-process meanwhile instead of waiting."""
        if not background:
            with self._lock:
                self._start()
            return
        with self._lock:
            if self._executor is not None or self._starting or not self.enabled:
                return
            self._starting = True
        threading.Thread(target=self._start_quietly, name="parse-pool-start", daemon=True).start()

    def _start_quietly(self) -> None:
        try:
            with self._lock:
                self._start()
        except Exception as exc:  # no process could start (limits, no /tmp...): never fatal
            with self._lock:
                self._broken(exc, 0, start_failed=True)
        finally:
            self._starting = False

    def _start(self) -> ProcessPoolExecutor | None:
        if self._executor is None and self.enabled:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            if context.get_start_method() == "forkserver":
                # Only our module in the server, not the caller's __main__ (a script, pytest).
                context.set_forkserver_preload(["fhir_bridge.validate.pool"])
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self._profile_blob,),
            )
            with _main_hidden():  # the executor starts a worker on each of these submits
                self._warmup = [self._executor.submit(_warm) for _ in range(self.workers)]
            log.info("parse_pool_started", workers=self.workers)
        return self._executor

    def ready(self) -> bool:
        """True when every worker has started (until then pages are checked in-process)."""
        return bool(self._warmup) and all(f.done() for f in self._warmup)

    def wait_ready(self, timeout: float | None = None) -> list[int]:
        """Start the pool and wait for its workers; their pids (benchmarks, tests)."""
        self.start()
        return [f.result(timeout) for f in self._warmup]

    def submit(
        self,
        resources: list[Any],
        expected_type: str | None,
        profiles: Sequence[str],
        job_size: int = 0,
    ) -> PendingCheck | None:
        """Send a page's checks to the workers; None when the page is to be checked in-process
        (pool off, job too small, workers still starting, pool broken)."""
        if not self.wanted(len(resources), job_size) or self._starting:
            return None
        if self._executor is None:
            self.start(background=True)  # this page is checked in-process meanwhile
            return None
        with self._lock:
            executor = self._executor
            if executor is None or not self.ready():
                return None
            failure = next((e for f in self._warmup if (e := f.exception()) is not None), None)
            if failure is not None:  # a worker died starting
                self._broken(failure, len(resources))
                return None
            futures: list[Future[list[Checked]]] = []
            try:
                # Chunks spread one page over every worker, never below MIN_CHUNK resources.
                size = max(MIN_CHUNK, -(-len(resources) // self.workers))
                for at in range(0, len(resources), size):
                    blob, pickled = encode(resources[at : at + size])
                    futures.append(
                        executor.submit(_check_chunk, blob, pickled, expected_type, tuple(profiles))
                    )
            except Exception as exc:  # BrokenProcessPool: a worker died while idle
                for future in futures:
                    future.cancel()
                self._broken(exc, len(resources))
                return None
        return PendingCheck(self, futures, len(resources), executor)

    def failed(
        self,
        exc: BaseException,
        size: int,
        executor: ProcessPoolExecutor | None = None,
        *,
        hung: bool = False,
    ) -> None:
        """A page's checks failed in `executor`: log it and drop that pool, unless a fresh one
        replaced it already (the next big page starts a fresh one). `hung`: its workers are
        killed first (a shutdown would wait for them, or leave them running)."""
        for process in _workers(executor) if hung else []:
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        with self._lock:
            self._broken(exc, size, executor)

    def _broken(
        self,
        exc: BaseException,
        size: int,
        executor: ProcessPoolExecutor | None = None,
        *,
        start_failed: bool = False,
    ) -> None:
        current = self._executor
        if start_failed or (current is not None and (executor is None or executor is current)):
            self._executor, self._warmup = None, []
            self._restarts += 1
            if current is not None:
                current.shutdown(wait=False, cancel_futures=True)
        log.warning(
            "parse_pool_failed",
            error=type(exc).__name__,
            resources=size,
            restarts=self._restarts,
            fallback="in-process",
            gave_up=not self.enabled,
        )

    def pids(self) -> list[int]:
        """Pids of the running workers (tests)."""
        return [p.pid for p in _workers(self._executor) if p.pid is not None]

    def close(self) -> None:
        """Stop the workers and wait for them; checks not yet started are cancelled."""
        with self._lock:
            self._closed = True
            executor, self._executor, self._warmup = self._executor, None, []
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
            log.info("parse_pool_stopped", workers=self.workers)
