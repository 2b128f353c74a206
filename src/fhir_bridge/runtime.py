"""The running bridge: one object that wires the rooms together for the CLI and the API.

Faces (cli.py, api/) call into this; it holds no business logic of its own beyond the
loops that drive sync and write-back on their intervals.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from structlog.contextvars import bound_contextvars

from fhir_bridge.config import Settings, SourceConfig, WritePolicyConfig
from fhir_bridge.fhir import FhirClient
from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import Problem, RuleSet, compile_folder
from fhir_bridge.metrics import BridgeMetrics
from fhir_bridge.sources import client_for, guard_for
from fhir_bridge.store import Store, open_store
from fhir_bridge.sync import status as sync_status
from fhir_bridge.sync.deletions import reconcile_source
from fhir_bridge.sync.engine import Progress, SourceReport, new_job_id, sync_source
from fhir_bridge.sync.ingest import Clock, Ingestor, ProfilePolicy, utcnow
from fhir_bridge.sync.status import SourceState
from fhir_bridge.sync.strategy import StrategyCache
from fhir_bridge.tasks.model import TaskStatus
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.pool import ParsePool, auto_workers
from fhir_bridge.validate.profiles import ProfileSet
from fhir_bridge.writeback import webhook
from fhir_bridge.writeback.delivery import Delivery, DeliveryStats

log = get_logger("runtime")
MAPPING_SUFFIXES = frozenset({".yaml", ".yml", ".json"})


class Bridge:
    """Settings, store, rules and services of one bridge process."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, clock: Clock = utcnow
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rules = RuleSet.load(settings.mappings_dir)
        self.store = store if store is not None else open_store(settings.storage)
        # The family webhook (off without a url): completions queue it, delivery POSTs it.
        hook = settings.family.webhook
        self.webhook = webhook.FamilyWebhook(hook) if hook.enabled else None
        self.tasks = TaskService(
            self.store,
            clock,
            [s.name for s in settings.sources if s.writeback],
            actions_for=self.actions_for,
            follow_ups=webhook.drafts if self.webhook is not None else None,
        )
        self.profiles = ProfileSet.load(settings.profiles_dir)
        for source in settings.sources:
            self.profiles.resolve(source.profiles)  # unknown profile names fail at start-up
        workers = settings.ingest.parse_workers
        self.ingestor = Ingestor(
            self.store,
            self.rules,
            self.tasks,
            clock,
            profile_set=self.profiles,
            pool=ParsePool(  # starts no process until a job is big enough
                self.profiles,
                auto_workers() if workers == "auto" else workers,
                min_resources=settings.ingest.parse_pool_min,
            ),
            policies={
                s.name: ProfilePolicy(s.profiles, s.on_profile_violation == "quarantine")
                for s in settings.sources
            },
        )
        # Keyed by event loop too: the CLI runs several asyncio.run()s over one Bridge.
        self._sync_locks: dict[tuple[int, str], asyncio.Lock] = {}
        self.strategies = StrategyCache()  # each source's sync plan, decided once per run
        # One registry per bridge (see fhir_bridge.metrics): tests never share a series.
        self.metrics = BridgeMetrics(
            self.store, clock, {s.name: list(s.resource_types) for s in settings.sources}
        )
        self.metrics.rules_loaded.set(len(self.rules.rules))
        # Rate limit and circuit breaker per source, shared by all of the source's clients.
        self.guards = {
            s.name: guard_for(s, on_change=self.metrics.observe_circuit) for s in settings.sources
        }

    def actions_for(self, rule_id: str, status: TaskStatus) -> tuple[dict[str, Any], ...]:
        """The `on_status` actions of a rule in force for a status (none for unknown rules)."""
        rule = self.rules.get(rule_id)
        return rule.on_status.get(status, ()) if rule is not None else ()

    def reload_rules(self) -> list[Problem]:
        """Re-read the mapping folder; swap the rules in only if it compiles without problems.

        A broken file is reported and the previous rules stay in force: never a half-loaded
        rule set.
        """
        ruleset, problems = compile_folder(self.settings.mappings_dir)
        if problems or ruleset is None:
            log.error(
                "mappings_reload_failed",
                problems=len(problems),
                first=str(problems[0]) if problems else None,
            )
            return problems
        self.rules = ruleset
        self.ingestor.rules = ruleset
        self.metrics.rules_loaded.set(len(ruleset.rules))
        log.info("mappings_reloaded", rules=len(ruleset.rules))
        return []

    def _mappings_stamp(self) -> tuple[tuple[str, float], ...]:
        folder = self.settings.mappings_dir
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in MAPPING_SUFFIXES]
        return tuple(sorted((str(p), p.stat().st_mtime) for p in files))

    async def _watch_mappings(self, stop: asyncio.Event) -> None:
        interval = self.settings.mappings_reload_interval
        if not interval:
            return
        stamp = await asyncio.to_thread(self._mappings_stamp)
        while not await _wait(stop, interval):
            current = await asyncio.to_thread(self._mappings_stamp)
            if current != stamp:
                stamp = current
                await asyncio.to_thread(self.reload_rules)

    async def _sweep(self, stop: asyncio.Event) -> None:
        interval = self.settings.reevaluate_interval
        if not interval:
            return
        while not await _wait(stop, interval):
            with bound_contextvars(job_id=new_job_id(), job="reevaluate"):
                await self._reevaluate()

    async def _reevaluate(self) -> None:
        result = await asyncio.to_thread(self.ingestor.reevaluate)
        log.info(
            "rules_reevaluated",
            tasks_created=result.tasks_created,
            tasks_closed=result.tasks_closed,
            rule_errors=result.rule_errors,
        )

    def close(self) -> None:
        """Stop the parse pool's workers (if any started) and close the store."""
        self.ingestor.close()
        self.store.close()

    async def _sync_with(
        self, source: SourceConfig, client: FhirClient, *, full: bool, progress: Progress | None
    ) -> SourceReport:
        # One sync of a source at a time: the poll loop and a subscription-triggered sync
        # would otherwise page the same searches twice and race on the cursor.
        key = (id(asyncio.get_running_loop()), source.name)
        lock = self._sync_locks.setdefault(key, asyncio.Lock())
        async with lock:
            report = await sync_source(
                source,
                client,
                self.ingestor,
                full=full,
                progress=progress,
                metrics=self.metrics,
                strategies=self.strategies,
            )
        await asyncio.to_thread(sync_status.record_source, self.store, report, self.clock())
        self.metrics.observe_source(source.name, ok=report.ok)
        return report

    @property
    def source_state(self) -> dict[str, SourceState]:
        """Each source's last sync as the store records it, whichever process ran it."""
        return sync_status.states(self.store, self.settings.sources)

    def client(self, source: SourceConfig) -> FhirClient:
        """An (unopened) FHIR client for `source` that reports to this bridge's metrics."""
        return client_for(source, observer=self.metrics, guard=self.guards[source.name])

    async def sync_once(
        self, *, full: bool = False, progress: Progress | None = None, only: str | None = None
    ) -> list[SourceReport]:
        """One sync run of every source (or only the one named), sources in parallel."""
        sources = [s for s in self.settings.sources if only is None or s.name == only]

        async def one(source: SourceConfig) -> SourceReport:
            async with self.client(source) as client:
                return await self._sync_with(source, client, full=full, progress=progress)

        return list(await asyncio.gather(*(one(s) for s in sources)))

    def write_policies(self) -> dict[str, WritePolicyConfig]:
        """Each source's write policy, by source name."""
        return {s.name: s.write_policy for s in self.settings.sources}

    async def deliver_once(self) -> DeliveryStats:
        """One scan of the outbox (its log lines share one `job_id`)."""
        async with AsyncExitStack() as stack:
            stack.enter_context(bound_contextvars(job_id=new_job_id(), job="outbox"))
            clients = {
                s.name: await stack.enter_async_context(self.client(s))
                for s in self.settings.sources
                if s.writeback
            }
            return await Delivery(
                self.store,
                clients,
                self.settings.writeback,
                self.clock,
                self.metrics,
                policies=self.write_policies(),
                webhook=self.webhook,
            ).deliver_due()

    async def run_loops(
        self, stop: asyncio.Event, *, sync: bool = True, writeback: bool = True
    ) -> None:
        """Sync every source on its poll interval and deliver the outbox, until `stop` is set."""
        async with AsyncExitStack() as stack:
            clients = {
                s.name: await stack.enter_async_context(self.client(s))
                for s in self.settings.sources
            }
            jobs = []
            if sync:
                jobs += [self._poll(s, clients[s.name], stop) for s in self.settings.sources]
                jobs += [self._watch_mappings(stop), self._sweep(stop)]
                jobs += [
                    self._reconcile(s, clients[s.name], stop)
                    for s in self.settings.sources
                    if s.reconcile_interval
                ]
            if writeback:
                wb_clients = {s.name: clients[s.name] for s in self.settings.sources if s.writeback}
                delivery = Delivery(
                    self.store,
                    wb_clients,
                    self.settings.writeback,
                    self.clock,
                    self.metrics,
                    policies=self.write_policies(),
                    webhook=self.webhook,
                )
                jobs.append(delivery.run(stop))
            await asyncio.gather(*jobs)

    async def _reconcile(
        self, source: SourceConfig, client: FhirClient, stop: asyncio.Event
    ) -> None:
        """Detect deletions on the source every `reconcile_interval` (see sync/deletions.py)."""
        while not await _wait(stop, source.reconcile_interval):
            with bound_contextvars(job_id=new_job_id(), job="reconcile"):
                await reconcile_source(source, client, self.ingestor)

    async def _poll(self, source: SourceConfig, client: FhirClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sync_with(source, client, full=False, progress=None)
            await _wait(stop, source.poll_interval)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True as soon as `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
