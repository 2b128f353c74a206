"""Workers: `fhir-bridge worker --role sync|writeback|all`, any number of them, on any machine.

Sync work is split per (source, resource type), each searched the way the source allows
(`sync/strategy.py`: `_lastUpdated`, created date or full, from `/metadata` once per process).
A worker syncs a pair only while it holds the pair's lease (`store/leases.py`); the lease is
renewed while the sync runs, so a worker that dies (kill -9, lost machine) lets it expire and
another worker takes the pair over after `lease_ttl` seconds, resuming from the cursor. The
cursor write is fenced (`Store.set_cursor_fenced`): a stalled worker whose lease passed on
cannot move it. After a run the lease is kept until the pair's next poll is due, so the poll
schedule is shared by every worker instead of each worker polling on its own. Patients first
seen by the Patient pair have their resources fetched by patient, as `sync_source` does.

Write-back claims outbox entries through the store (`Store.claim_outbox`): on Redis a Stream
consumer group (`store/keys.py`, group `writeback`, the consumer named after the worker's
owner), so each announced entry goes to one worker, and only a task's head entry is announced,
so a task's writes stay in order. A worker killed mid-delivery leaves its claims pending;
after `storage.outbox_visibility_timeout` seconds another worker takes them over (XAUTOCLAIM)
and sends them again. The writes are idempotent (conditional create on a derived identifier,
`If-Match` on the mirror Task, Provenance created once per entry by tag).

When the store is unreachable the worker reports not-ready (`worker_not_ready` log lines,
`Worker.ready`), backs off (1 s doubling to `max_backoff`) and keeps trying; it never exits
on its own and drops nothing (the work stays in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal, cast

from structlog.contextvars import bound_contextvars

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirBridgeError, StoreError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.logging import get_logger
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.base import Lease, Store
from fhir_bridge.store.leases import LeaseLost, LeaseManager
from fhir_bridge.sync import status as sync_status
from fhir_bridge.sync.engine import (
    TypeReport,
    dependency_order,
    new_job_id,
    pull_for_patients,
    sync_type,
)
from fhir_bridge.sync.strategy import INCREMENTAL, TypePlan
from fhir_bridge.writeback.delivery import Delivery

log = get_logger("worker")

Role = Literal["sync", "writeback", "all"]
ROLES: tuple[Role, ...] = ("sync", "writeback", "all")


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker paces itself."""

    lease_ttl: float = 30.0  # a dead worker's sync work is taken over after this many seconds
    max_backoff: float = 30.0  # longest wait between attempts while the store is unreachable
    tick: float = 1.0  # how often due pairs are looked for
    outbox_batch: int = 16  # outbox entries claimed per scan (a full batch: scan again at once)


class _FencedStore:
    """The store as one leased sync sees it: cursor writes go through the lease's fence."""

    def __init__(self, store: Store, lease: Lease) -> None:
        self._store = store
        self._lease = lease

    def set_cursor(self, source: str, resource_type: str, value: str | None) -> None:
        if not self._store.set_cursor_fenced(source, resource_type, value, self._lease):
            raise LeaseLost(f"lease {self._lease.name} passed on: cursor not moved")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def _renew_while(
    leases: LeaseManager, lease: Lease, ttl: float, work: asyncio.Task[Any]
) -> None:
    """Renew `lease` every ttl/3 while `work` runs; cancel `work` once the lease is lost."""
    last_ok = time.monotonic()
    while not work.done():
        await asyncio.sleep(ttl / 3)
        try:
            if await asyncio.to_thread(leases.renew, lease, ttl):
                last_ok = time.monotonic()
                continue
        except StoreError as exc:
            log.warning("lease_renew_failed", lease=lease.name, error=str(exc))
            if time.monotonic() - last_ok < ttl:
                continue  # it may still be ours: try again before it expires
        log.warning("lease_lost", lease=lease.name, token=lease.token)
        work.cancel()
        return


class LeasedDelivery(Delivery):
    """Outbox delivery as a worker does it: claims made in the lease owner's name.

    Kept for callers of the per-task lease version; the store's claims (a consumer group on
    Redis) now keep two workers from delivering one entry, so `lease_ttl` is not used.
    """

    def __init__(
        self, *args: Any, leases: LeaseManager, lease_ttl: float = 30.0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("consumer", leases.owner)
        super().__init__(*args, **kwargs)
        self.leases = leases


class Worker:
    """One worker process: leased sync of every (source, type), and/or leased write-back."""

    def __init__(
        self,
        bridge: Bridge,
        leases: LeaseManager,
        role: Role = "all",
        options: WorkerOptions | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown worker role {role!r}: use one of {', '.join(ROLES)}")
        self.bridge = bridge
        self.leases = leases
        self.role = role
        self.options = options or WorkerOptions()
        self.ready = False
        self._failures = 0

    # -- readiness -----------------------------------------------------------------------------
    def _ok(self) -> None:
        if not self.ready:
            log.info("worker_ready", owner=self.leases.owner, role=self.role)
        self.ready, self._failures = True, 0

    def _backoff(self, exc: Exception) -> float:
        """Mark not-ready and return how long to wait before the next attempt."""
        self.ready = False
        self._failures += 1
        wait = min(self.options.max_backoff, 2.0 ** (self._failures - 1))
        log.error("worker_not_ready", owner=self.leases.owner, error=str(exc), retry_in=wait)
        return wait

    def health(self) -> dict[str, Any]:
        """What a probe reports: ready, role, owner (no PHI)."""
        return {"ready": self.ready, "role": self.role, "owner": self.leases.owner}

    # -- sync ----------------------------------------------------------------------------------
    async def sync_pair(
        self, source: SourceConfig, resource_type: str, client: FhirClient
    ) -> TypeReport | None:
        """Sync one (source, type) if its lease can be had; None when leased elsewhere or lost.

        :raises StoreError: the store cannot be reached.
        """
        name = f"sync:{source.name}:{resource_type}"
        ttl = self.options.lease_ttl
        lease = await asyncio.to_thread(self.leases.acquire, name, ttl)
        if lease is None:
            return None
        ingestor = copy.copy(self.bridge.ingestor)
        ingestor.store = cast(Store, _FencedStore(self.bridge.store, lease))
        plan = await self._plan(source, resource_type, client)
        work = asyncio.ensure_future(
            sync_type(
                source, resource_type, client, ingestor, metrics=self.bridge.metrics, plan=plan
            )
        )
        renew = asyncio.create_task(_renew_while(self.leases, lease, ttl, work))
        try:
            report = await work
        except LeaseLost:
            log.warning("sync_lease_lost", source=source.name, resource_type=resource_type)
            return None
        except asyncio.CancelledError:
            if not (work.cancelled() and renew.done()):
                raise  # cancelled from outside (shutdown), not by the renewer
            log.warning("sync_lease_lost", source=source.name, resource_type=resource_type)
            return None
        finally:
            renew.cancel()
        # The outcome in the store, for the API process and `sources status` (sync/status.py).
        await asyncio.to_thread(
            sync_status.record, self.bridge.store, source.name, report, self.bridge.clock()
        )
        # Keep the pair until its next poll is due: one schedule for every worker.
        await asyncio.to_thread(self.leases.renew, lease, source.poll_interval)
        if report.new_patients:
            # Their resources may sit below the other types' cursors: fetch them by patient
            # (idempotent by content hash; no cursor moves, so no other pair's lease is needed).
            await pull_for_patients(source, client, self.bridge.ingestor, report.new_patients)
        return report

    async def _plan(self, source: SourceConfig, resource_type: str, client: FhirClient) -> TypePlan:
        """How this pair finds changes (`sync/strategy.py`); a first load searches everything
        whatever the plan, so it does not wait for `/metadata`."""
        stored = await asyncio.to_thread(self.bridge.store.get_cursor, source.name, resource_type)
        if stored is None and source.sync_strategy == "auto":
            return INCREMENTAL
        plans = await self.bridge.strategies.plans(source, client)
        return plans.get(resource_type, INCREMENTAL)

    async def _sync_loop(self, stop: asyncio.Event, clients: dict[str, FhirClient]) -> None:
        due: dict[tuple[str, str], float] = {}
        while not stop.is_set():
            wait = self.options.tick
            try:
                for source in self.bridge.settings.sources:
                    for rtype in dependency_order(source.resource_types, self.bridge.rules):
                        if stop.is_set() or due.get((source.name, rtype), 0) > time.monotonic():
                            continue
                        report = await self.sync_pair(source, rtype, clients[source.name])
                        self._ok()
                        later = source.poll_interval if report is not None else wait
                        due[(source.name, rtype)] = time.monotonic() + later
            except StoreError as exc:
                wait = self._backoff(exc)
            await _sleep(stop, wait)

    async def _reevaluate_loop(self, stop: asyncio.Event) -> None:
        interval = self.bridge.settings.reevaluate_interval
        if not interval:
            return
        while not await _sleep(stop, interval):
            with contextlib.suppress(StoreError):
                lease = await asyncio.to_thread(self.leases.acquire, "reevaluate", interval)
                if lease is not None:
                    with bound_contextvars(job_id=new_job_id(), job="reevaluate"):
                        await asyncio.to_thread(self.bridge.ingestor.reevaluate)

    # -- write-back ----------------------------------------------------------------------------
    async def _writeback_loop(self, stop: asyncio.Event, clients: dict[str, FhirClient]) -> None:
        b = self.bridge
        delivery = Delivery(
            b.store,
            {s.name: clients[s.name] for s in b.settings.sources if s.writeback},
            b.settings.writeback,
            b.clock,
            b.metrics,
            policies=b.write_policies(),
            consumer=self.leases.owner,
            batch=self.options.outbox_batch,
            webhook=b.webhook,
        )
        while not stop.is_set():
            wait = b.settings.writeback.interval
            try:
                with bound_contextvars(job_id=new_job_id(), job="outbox"):
                    await delivery.deliver_due()
                self._ok()
                if delivery.last_claimed >= delivery.batch:
                    wait = 0  # more may be waiting
            except StoreError as exc:
                wait = self._backoff(exc)
            except FhirBridgeError as exc:
                log.error("outbox_scan_failed", error=type(exc).__name__, message=str(exc))
            await _sleep(stop, wait)
        await delivery.close()

    # -- the whole process -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set."""
        log.info("worker_started", owner=self.leases.owner, role=self.role)
        async with AsyncExitStack() as stack:
            clients = {
                s.name: await stack.enter_async_context(self.bridge.client(s))
                for s in self.bridge.settings.sources
            }
            jobs: list[Awaitable[None]] = []
            if self.role in ("sync", "all"):
                jobs += [self._sync_loop(stop, clients), self._reevaluate_loop(stop)]
                # Every worker reloads changed mapping files itself (rules live in the process).
                jobs.append(self.bridge._watch_mappings(stop))
            if self.role in ("writeback", "all"):
                jobs.append(self._writeback_loop(stop, clients))
            await asyncio.gather(*jobs)
        log.info("worker_stopped", owner=self.leases.owner)


async def open_with_retry(
    open_bridge: Callable[[], Bridge], stop: asyncio.Event, max_backoff: float = 30.0
) -> Bridge | None:
    """Open the bridge, retrying with backoff while its store is unreachable; None if stopped."""
    failures = 0
    while not stop.is_set():
        try:
            return await asyncio.to_thread(open_bridge)
        except StoreError as exc:
            failures += 1
            wait = min(max_backoff, 2.0 ** (failures - 1))
            log.error("worker_not_ready", error=str(exc), retry_in=wait)
            await _sleep(stop, wait)
    return None


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True as soon as `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
