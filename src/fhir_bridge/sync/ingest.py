"""One page of resources through validate -> store -> mapping -> queues.

Called by the sync loop (and later by bulk and file ingest). Synchronous and free of HTTP:
the caller fetched the page; this decides what to keep and which tasks it calls for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store.base import QuarantineEntry, Store
from fhir_bridge.validate.parse import validate_resource

log = get_logger("ingest")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def content_hash(resource: dict[str, Any]) -> str:
    """A hash of the resource's content, blind to `meta.versionId` and `meta.lastUpdated`.

    Servers bump the version on a no-op PUT; hashing without those two keeps such a
    re-save from re-running every rule.
    """
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = {**resource, "meta": meta}
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class IngestResult:
    """What one page did."""

    received: int = 0
    stored: int = 0
    unchanged: int = 0
    quarantined: int = 0
    tasks_created: int = 0
    tasks_updated: int = 0
    max_last_updated: str | None = None
    tasks_by_rule: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestResult) -> None:
        """Accumulate another page's figures (max_last_updated is the later of the two)."""
        for name in (
            "received",
            "stored",
            "unchanged",
            "quarantined",
            "tasks_created",
            "tasks_updated",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for rule, n in other.tasks_by_rule.items():
            self.tasks_by_rule[rule] = self.tasks_by_rule.get(rule, 0) + n
        self.max_last_updated = later(self.max_last_updated, other.max_last_updated)


def later(a: str | None, b: str | None) -> str | None:
    """The later of two FHIR instants (None counts as earliest)."""
    if a is None or b is None:
        return a or b
    return a if parse_instant(a) >= parse_instant(b) else b


def parse_instant(value: str) -> datetime:
    """A FHIR instant/dateTime as an aware datetime (naive values are taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Ingestor:
    """Validates, stores and maps resources for one bridge."""

    def __init__(self, store: Store, rules: RuleSet, clock: Clock = utcnow) -> None:
        self.store = store
        self.rules = rules
        self.clock = clock

    def ingest(
        self, source: str, resources: Iterable[Any], expected_type: str | None = None
    ) -> IngestResult:
        """Take a page of resources from `source`; never raises for a bad resource."""
        result = IngestResult()
        now = self.clock()
        with self.store.batch():
            for resource in resources:
                result.received += 1
                self._one(source, resource, expected_type, now, result)
        return result

    def _one(
        self,
        source: str,
        resource: Any,
        expected_type: str | None,
        now: datetime,
        result: IngestResult,
    ) -> None:
        issues = validate_resource(resource, expected_type)
        if isinstance(resource, dict):
            last_updated = (resource.get("meta") or {}).get("lastUpdated")
            if isinstance(last_updated, str):
                try:
                    result.max_last_updated = later(result.max_last_updated, last_updated)
                except ValueError:
                    pass  # the parse check below reports the bad instant
        if issues:
            result.quarantined += 1
            self._quarantine(source, resource, expected_type, issues, now)
            return
        if not self.store.put_resource(source, resource, content_hash(resource)):
            result.unchanged += 1
            return
        result.stored += 1
        self.store.release_quarantine(source, resource["resourceType"], resource["id"])
        for draft in self.rules.evaluate(resource, source, now):
            outcome = self.store.upsert_task(draft, now)
            if outcome.created:
                result.tasks_created += 1
                result.tasks_by_rule[draft.rule_id] = result.tasks_by_rule.get(draft.rule_id, 0) + 1
            elif outcome.updated:
                result.tasks_updated += 1

    def _quarantine(
        self,
        source: str,
        resource: Any,
        expected_type: str | None,
        issues: list[Any],
        now: datetime,
    ) -> None:
        body = resource if isinstance(resource, dict) else {"value": resource}
        rtype = body.get("resourceType") if isinstance(body.get("resourceType"), str) else None
        rid = body.get("id") if isinstance(body.get("id"), str) else None
        meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
        self.store.add_quarantine(
            QuarantineEntry(
                source=source,
                resource_type=rtype or expected_type or "(unknown)",
                resource_id=rid,
                version_id=meta.get("versionId")
                if isinstance(meta.get("versionId"), str)
                else None,
                issues=[dict(i) for i in issues],
                body=body,
                at=now,
            )
        )
        log.warning(
            "resource_quarantined",
            source=source,
            resource_type=rtype or expected_type,
            resource_id=rid,
            issues=len(issues),
            first_issue=issues[0]["expression"],
        )
