"""Prometheus metrics of one bridge: counters updated by the code paths, gauges read at scrape.

Every `Bridge` owns one `BridgeMetrics` with its own `CollectorRegistry` (never the global
default one), so two bridges in one process, or two tests, never share a series. Code paths
get the object handed in (`FhirClient(observer=...)`, `sync_source(..., metrics=...)`) and call
its `observe_*` methods. Figures the store already knows (tasks by queue, kind and status,
overdue tasks, outbox depth and dead letters, quarantine by reason, sync lag) are computed by
`StoreCollector` when /metrics is scraped, so they are right after a restart too.

Labels are low-cardinality by construction: source names, resource types, HTTP methods and
status codes, queue, kind and route templates; never a patient, resource, task or request id.

Catalog (all names start with ``fhir_bridge_``; counters get ``_total`` when exposed):

- ``fhir_requests`` counter {source, method, resource_type, status} ('error': no response)
- ``fhir_request_duration_seconds`` histogram {source, method, resource_type}
- ``fhir_retries`` counter {source, method, resource_type, status}
- ``sync_resources_pulled`` counter {source, resource_type}
- ``sync_resources_ingested`` counter {source, resource_type, outcome=stored|unchanged|quarantined}
- ``sync_pages`` counter, ``tasks_created`` counter {source, resource_type}
- ``sync_runs`` counter {source, resource_type, outcome=ok|error}
- ``sync_duration_seconds`` histogram {source, resource_type}
- ``sync_last_success_timestamp_seconds`` gauge {source, resource_type}
- ``sync_lag_seconds`` gauge {source, resource_type}: now minus the cursor (scrape time)
- ``source_last_sync_ok`` gauge {source}; ``mapping_rules_loaded`` gauge
- ``tasks`` gauge {queue, status}; ``tasks_active`` gauge {queue, kind, status};
  ``tasks_overdue`` gauge {queue, kind} (scrape time)
- ``task_time_to_claim_seconds`` histogram {queue, kind}
- ``task_time_to_complete_seconds`` histogram {queue, kind, status=completed|cancelled}
- ``outbox_depth``, ``outbox_dead_letters``, ``outbox_oldest_pending_age_seconds`` gauges
  {source} (scrape time)
- ``outbox_deliveries`` counter {source, action, outcome}; ``writeback_latency_seconds``
  histogram {source, action} (fed by `observe_outbox_delivery`)
- ``quarantine_entries`` gauge {source, resource_type, reason=first issue code} (scrape time)
- ``http_requests`` counter {method, route, status}; ``http_request_duration_seconds``
  histogram {method, route}
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.logging import get_logger
from fhir_bridge.store.base import Store
from fhir_bridge.tasks.model import OutboxStatus, Task, TaskStatus

log = get_logger("metrics")

PREFIX = "fhir_bridge"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: FHIR calls take milliseconds to a minute (Retry-After), sync runs up to hours.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SYNC_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
# Task waits: minutes to weeks.
TASK_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)
QUARANTINE_SCAN_LIMIT = 10_000  # reasons come from the newest entries; the size is exact
_PAGE = 500
_ACTIVE = (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)

Clock = Callable[[], datetime]


def _instant(value: str) -> datetime:
    """A cursor (FHIR instant) as an aware datetime; naive values are taken as UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _status_label(status: int | None) -> str:
    """`'429'`, or `'error'` when no response came back (network trouble)."""
    return "error" if status is None else str(status)


class BridgeMetrics:
    """The metrics of one bridge, in a registry of their own.

    :param store: read at scrape time for the store-derived gauges.
    :param clock: "now" for sync lag and overdue tasks (the bridge's clock).
    :param sources: each source's name and resource types (for the per-type sync lag).
    """

    def __init__(self, store: Store, clock: Clock, sources: Mapping[str, Sequence[str]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fhir_requests = Counter(
            f"{PREFIX}_fhir_requests",
            "Requests to FHIR servers, one per attempt, by response status ('error': no answer)",
            ["source", "method", "resource_type", "status"],
            registry=r,
        )
        self.fhir_request_seconds = Histogram(
            f"{PREFIX}_fhir_request_duration_seconds",
            "Time of one request attempt to a FHIR server",
            ["source", "method", "resource_type"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.fhir_retries = Counter(
            f"{PREFIX}_fhir_retries",
            "Retries of FHIR requests after a temporary failure, by the status that caused them",
            ["source", "method", "resource_type", "status"],
            registry=r,
        )
        self.resources_pulled = Counter(
            f"{PREFIX}_sync_resources_pulled",
            "Resources received from search pages",
            ["source", "resource_type"],
            registry=r,
        )
        self.resources_ingested = Counter(
            f"{PREFIX}_sync_resources_ingested",
            "What ingest did with pulled resources: stored, unchanged or quarantined",
            ["source", "resource_type", "outcome"],
            registry=r,
        )
        self.sync_pages = Counter(
            f"{PREFIX}_sync_pages",
            "Search pages ingested",
            ["source", "resource_type"],
            registry=r,
        )
        self.sync_runs = Counter(
            f"{PREFIX}_sync_runs",
            "Sync runs of one resource type, by outcome (ok, error)",
            ["source", "resource_type", "outcome"],
            registry=r,
        )
        self.sync_seconds = Histogram(
            f"{PREFIX}_sync_duration_seconds",
            "Time of one sync run of one resource type",
            ["source", "resource_type"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.sync_last_success = Gauge(
            f"{PREFIX}_sync_last_success_timestamp_seconds",
            "Unix time of the last sync run of a resource type that ended without error",
            ["source", "resource_type"],
            registry=r,
        )
        self.tasks_created = Counter(
            f"{PREFIX}_tasks_created",
            "Tasks opened by the rules during sync",
            ["source", "resource_type"],
            registry=r,
        )
        self.time_to_claim = Histogram(
            f"{PREFIX}_task_time_to_claim_seconds",
            "From a task's creation to its claim by a coordinator",
            ["queue", "kind"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.time_to_close = Histogram(
            f"{PREFIX}_task_time_to_complete_seconds",
            "From a task's creation to its completion or cancellation by a coordinator",
            ["queue", "kind", "status"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.outbox_deliveries = Counter(
            f"{PREFIX}_outbox_deliveries",
            "Outbox delivery attempts by outcome (delivered, retry, dead)",
            ["source", "action", "outcome"],
            registry=r,
        )
        self.writeback_latency = Histogram(
            f"{PREFIX}_writeback_latency_seconds",
            "From an outbox entry's creation (the status change) to its delivery",
            ["source", "action"],
            buckets=(*REQUEST_BUCKETS, 300.0, 900.0, 3600.0),
            registry=r,
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "Requests to the bridge's API, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer one API request",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.source_up = Gauge(
            f"{PREFIX}_source_last_sync_ok",
            "1 when the source's last sync run had no failing resource type, else 0",
            ["source"],
            registry=r,
        )
        self.circuit_state = Gauge(
            f"{PREFIX}_circuit_state",
            "Circuit breaker of a source: 0 closed, 1 open (requests refused), 2 half-open",
            ["source"],
            registry=r,
        )
        for name in sources:
            self.circuit_state.labels(name).set(0)
        self.rules_loaded = Gauge(
            f"{PREFIX}_mapping_rules_loaded", "Mapping rules in force", registry=r
        )
        self.store_collector = StoreCollector(store, clock, sources)
        r.register(self.store_collector)

    # -- FHIR client (fhir.client.RequestObserver) ------------------------------------------
    def request(
        self, source: str, method: str, resource_type: str, status: int | None, seconds: float
    ) -> None:
        """Count one FHIR request attempt and time it."""
        self.fhir_requests.labels(source, method, resource_type, _status_label(status)).inc()
        self.fhir_request_seconds.labels(source, method, resource_type).observe(seconds)

    def retry(self, source: str, method: str, resource_type: str, status: int | None) -> None:
        """Count one retry of a FHIR request (status: the one that made us retry)."""
        self.fhir_retries.labels(source, method, resource_type, _status_label(status)).inc()

    def observe_circuit(self, source: str, state: str) -> None:
        """A source's circuit breaker changed state (closed, open or half_open)."""
        values = {"closed": 0, "open": 1, "half_open": 2}
        self.circuit_state.labels(source).set(values.get(state, 0))

    # -- sync -------------------------------------------------------------------------------
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
        """Count one ingested search page and what became of its resources."""
        self.sync_pages.labels(source, resource_type).inc()
        self.resources_pulled.labels(source, resource_type).inc(received)
        for outcome, n in (
            ("stored", stored),
            ("unchanged", unchanged),
            ("quarantined", quarantined),
        ):
            self.resources_ingested.labels(source, resource_type, outcome).inc(n)
        self.tasks_created.labels(source, resource_type).inc(tasks_created)

    def observe_sync_run(
        self, source: str, resource_type: str, *, ok: bool, seconds: float
    ) -> None:
        """Record the end of one sync run of a resource type (and when it last succeeded)."""
        self.sync_runs.labels(source, resource_type, "ok" if ok else "error").inc()
        self.sync_seconds.labels(source, resource_type).observe(seconds)
        if ok:
            self.sync_last_success.labels(source, resource_type).set(time.time())

    def observe_source(self, source: str, *, ok: bool) -> None:
        """Record whether a source's last sync run was free of failures."""
        self.source_up.labels(source).set(1 if ok else 0)

    # -- tasks (called where a coordinator acts) --------------------------------------------
    def observe_task_claimed(self, task: Task, now: datetime) -> None:
        """Time from the task's creation to this claim."""
        seconds = max(0.0, (now - task.created_at).total_seconds())
        self.time_to_claim.labels(task.queue, task.kind).observe(seconds)

    def observe_task_closed(self, task: Task, now: datetime) -> None:
        """Time from the task's creation to its completion or cancellation (others ignored)."""
        if task.status not in (TaskStatus.COMPLETED, TaskStatus.CANCELLED):
            return
        seconds = max(0.0, (now - task.created_at).total_seconds())
        self.time_to_close.labels(task.queue, task.kind, task.status.value).observe(seconds)

    # -- write-back (for writeback.delivery) ------------------------------------------------
    def observe_outbox_delivery(
        self, source: str, action: str, outcome: str, *, latency_seconds: float | None = None
    ) -> None:
        """Count one delivery attempt; on `delivered`, pass the seconds since the entry's
        `created_at` as `latency_seconds` (the write-back latency a coordinator sees).

        :param outcome: ``delivered``, ``retry`` or ``dead``.
        """
        self.outbox_deliveries.labels(source, action, outcome).inc()
        if latency_seconds is not None:
            self.writeback_latency.labels(source, action).observe(max(0.0, latency_seconds))

    # -- API (api.middleware) ---------------------------------------------------------------
    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one API request; `route` is the template (`/tasks/{task_id}`)."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_request_seconds.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Gauges computed from the store at scrape time (a failing store yields no series)."""

    def __init__(self, store: Store, clock: Clock, sources: Mapping[str, Sequence[str]]) -> None:
        self.store = store
        self.clock = clock
        self.sources = {name: list(types) for name, types in sources.items()}

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the series exist only once the store has been read."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the store and yield the gauges; a store error is logged, not raised."""
        try:
            families = list(self._families())
        except FhirBridgeError as exc:  # a scrape must answer even while the store is down
            log.error("metrics_store_read_failed", error=type(exc).__name__)
            return []
        return families

    def _families(self) -> Iterator[Metric]:
        now = self.clock()
        yield self._queue_counts()
        yield from self._active_tasks(now)
        yield from self._outbox()
        yield self._quarantine()
        yield self._sync_lag(now)

    def _queue_counts(self) -> Metric:
        family = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks by queue and status", labels=["queue", "status"]
        )
        for queue, counts in sorted(self.store.queue_counts().items()):
            for status in TaskStatus:
                family.add_metric([queue, status.value], counts.get(status.value, 0))
        return family

    def _active_tasks(self, now: datetime) -> Iterator[Metric]:
        active: Tally[tuple[str, str, str]] = Tally()
        overdue: Tally[tuple[str, str]] = Tally()
        for task in self.store.iter_tasks(statuses=list(_ACTIVE)):
            active[(task.queue, task.kind, task.status.value)] += 1
            overdue[(task.queue, task.kind)] += 0
            if task.due is not None and task.due < now:
                overdue[(task.queue, task.kind)] += 1
        by_kind = GaugeMetricFamily(
            f"{PREFIX}_tasks_active",
            "Open and in-progress tasks by queue, kind and status",
            labels=["queue", "kind", "status"],
        )
        for key, n in sorted(active.items()):
            by_kind.add_metric(list(key), n)
        late = GaugeMetricFamily(
            f"{PREFIX}_tasks_overdue",
            "Open and in-progress tasks whose due date has passed",
            labels=["queue", "kind"],
        )
        for (queue, kind), n in sorted(overdue.items()):
            late.add_metric([queue, kind], n)
        return iter((by_kind, late))

    def _outbox(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_outbox_depth", "Outbox entries waiting for delivery", labels=["source"]
        )
        dead = GaugeMetricFamily(
            f"{PREFIX}_outbox_dead_letters",
            "Outbox entries given up on (kept for an operator)",
            labels=["source"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox entry still waiting (0 when none waits)",
            labels=["source"],
        )
        now = self.clock()
        for status, family in ((OutboxStatus.PENDING, depth), (OutboxStatus.DEAD, dead)):
            counts: Tally[str] = Tally({name: 0 for name in self.sources})
            ages: dict[str, float] = {name: 0.0 for name in self.sources}
            # Pending and dead entries are few by design (delivered ones are not read).
            for entry in self.store.list_outbox(status, limit=1_000_000):
                counts[entry.source] += 1
                if status is OutboxStatus.PENDING:
                    age = (now - entry.created_at).total_seconds()
                    ages[entry.source] = max(ages.get(entry.source, 0.0), age)
            for name, n in sorted(counts.items()):
                family.add_metric([name], n)
            if status is OutboxStatus.PENDING:
                for name, age in sorted(ages.items()):
                    oldest.add_metric([name], age)
        return iter((depth, dead, oldest))

    def _quarantine(self) -> Metric:
        family = GaugeMetricFamily(
            f"{PREFIX}_quarantine_entries",
            "Quarantined resources by source, type and first issue code (the reason)",
            labels=["source", "resource_type", "reason"],
        )
        reasons: Tally[tuple[str, str, str]] = Tally()
        offset = 0
        while offset < QUARANTINE_SCAN_LIMIT:
            entries, total = self.store.list_quarantine(None, _PAGE, offset)
            for entry in entries:
                first = entry.issues[0] if entry.issues else {}
                reasons[(entry.source, entry.resource_type, str(first.get("code", "unknown")))] += 1
            offset += len(entries)
            if not entries or offset >= total:
                break
        for key, n in sorted(reasons.items()):
            family.add_metric(list(key), n)
        return family

    def _sync_lag(self, now: datetime) -> Metric:
        family = GaugeMetricFamily(
            f"{PREFIX}_sync_lag_seconds",
            "Now minus the sync cursor (the newest lastUpdated stored) per source and type",
            labels=["source", "resource_type"],
        )
        for source, types in sorted(self.sources.items()):
            for rtype in types:
                cursor = self.store.get_cursor(source, rtype)
                if cursor is None:
                    continue  # never synced: no lag to speak of, /readyz shows it
                lag = (now - _instant(cursor)).total_seconds()
                family.add_metric([source, rtype], lag)
        return family
