"""How the sync finds the changed resources of each type: chosen per source, overridable.

``sync_strategy`` in a source's config:

- ``last-updated``: ``_lastUpdated=ge(cursor - overlap)``, sorted by ``_lastUpdated``. Finds
  every create and edit; the default whenever the server declares ``_lastUpdated``.
- ``created``: a search on the type's own date parameter (below) with a ``ge`` cursor set to
  the instant the previous run began (after a first load: its highest ``lastUpdated``, which
  is earlier), minus the overlap. It finds new resources but
  **misses edits** of resources whose date lies before the cursor (as SMART Fetch documents
  for its own created-date fallback); use it only where ``_lastUpdated`` is missing.
- ``full``: every run re-pulls every resource of the type. Costs a full search per run, but
  the store's content hash makes unchanged resources no-ops, so only changes are written.
- ``auto`` (default): the first sync of a source reads ``/metadata`` once (after the searches
  on a first load, which fetches everything whatever the plan) and chooses per type:
  ``last-updated`` if the type declares ``_lastUpdated``, else ``created`` if it declares its
  date parameter, else ``full``. The choice is cached for the life of the Bridge.

The date parameter per type (the element FHIR R4 indexes; none is a true creation date except
``created``, so edits and back-dated resources are missed):

- Appointment: ``date`` (``Appointment.start``)
- CarePlan: ``date`` (``CarePlan.period``)
- MedicationStatement: ``effective`` (``effective[x]``)
- CoverageEligibilityRequest (and other types with a ``created`` element): ``created``
- Patient, Coverage: none, so ``full``

Appointment ``date`` is the start: future appointments are re-read every run (their edits are
seen), appointments that started before the cursor are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import FhirRequestError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.fhir.capabilities import SyncStrategy, build_report
from fhir_bridge.logging import get_logger

log = get_logger("sync.strategy")

DATE_PARAMS: dict[str, str] = {
    "Appointment": "date",
    "CarePlan": "date",
    "MedicationStatement": "effective",
    "CoverageEligibilityRequest": "created",
    "CoverageEligibilityResponse": "created",
    "Claim": "created",
    "ServiceRequest": "authored",
    "MedicationRequest": "authoredon",
    "Encounter": "date",
    "Observation": "date",
}


class Mode(StrEnum):
    """The search a sync run of one type makes."""

    LAST_UPDATED = "last-updated"
    CREATED = "created"
    FULL = "full"


@dataclass(frozen=True)
class TypePlan:
    """The mode for one type and, for ``created``, the date search parameter it uses."""

    mode: Mode
    param: str | None = None


INCREMENTAL = TypePlan(Mode.LAST_UPDATED)


def fixed_plan(resource_type: str, mode: Mode) -> TypePlan:
    """The plan for an explicitly configured mode (``created`` without a date param is full)."""
    if mode is Mode.CREATED:
        param = DATE_PARAMS.get(resource_type)
        return TypePlan(Mode.CREATED, param) if param else TypePlan(Mode.FULL)
    return TypePlan(mode)


def plans_from_metadata(
    source: SourceConfig, metadata: dict[str, Any] | None
) -> dict[str, TypePlan]:
    """Choose a plan per configured type from a CapabilityStatement (pure; no probes)."""
    report = build_report(
        source=source.name,
        base_url=source.url,
        resource_types=source.resource_types,
        metadata=metadata,
        smart_configuration=None,
        search=None,
    )
    declared = _declared_params(metadata)
    plans: dict[str, TypePlan] = {}
    for support in report.resources:
        rtype = support.resource_type
        param = DATE_PARAMS.get(rtype)
        if support.strategy is SyncStrategy.INCREMENTAL:
            plans[rtype] = INCREMENTAL
        elif support.search and param and param in declared.get(rtype, set()):
            plans[rtype] = TypePlan(Mode.CREATED, param)
        elif support.strategy is SyncStrategy.CREATED_DATE and support.created_param:
            plans[rtype] = TypePlan(Mode.CREATED, support.created_param)
        else:
            plans[rtype] = TypePlan(Mode.FULL)
    return plans


def _declared_params(metadata: dict[str, Any] | None) -> dict[str, set[str]]:
    """Search parameter names per type (server-wide ones added to each)."""
    if not metadata or metadata.get("resourceType") != "CapabilityStatement":
        return {}
    out: dict[str, set[str]] = {}
    for rest in _dicts(metadata.get("rest")):
        common = {n for p in _dicts(rest.get("searchParam")) if isinstance(n := p.get("name"), str)}
        for entry in _dicts(rest.get("resource")):
            rtype = entry.get("type")
            if isinstance(rtype, str):
                names = {
                    n
                    for p in _dicts(entry.get("searchParam"))
                    if isinstance(n := p.get("name"), str)
                }
                out.setdefault(rtype, set()).update(names | common)
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class StrategyCache:
    """The plans per source, decided once per Bridge run (``auto`` reads ``/metadata`` once)."""

    def __init__(self) -> None:
        self._plans: dict[str, dict[str, TypePlan]] = {}

    def cached(self, source_name: str) -> dict[str, TypePlan] | None:
        """The decided plans of a source, or None before its first sync."""
        return self._plans.get(source_name)

    async def plans(self, source: SourceConfig, client: FhirClient) -> dict[str, TypePlan]:
        """The plan per configured type; fetches the CapabilityStatement on first use in auto.

        If ``/metadata`` cannot be read, the run uses ``last-updated`` and the next run asks
        again (nothing is cached).
        """
        if (known := self._plans.get(source.name)) is not None:
            return known
        if source.sync_strategy != "auto":
            mode = Mode(source.sync_strategy)
            plans = {t: fixed_plan(t, mode) for t in source.resource_types}
        else:
            try:
                metadata = await client.capabilities()
            except FhirRequestError as exc:
                log.warning(
                    "sync_strategy_metadata_failed",
                    source=source.name,
                    status=exc.status,
                    error=type(exc).__name__,
                )
                return {t: INCREMENTAL for t in source.resource_types}
            plans = plans_from_metadata(source, metadata)
        self._plans[source.name] = plans
        log.info(
            "sync_strategy_chosen",
            source=source.name,
            configured=source.sync_strategy,
            plans={t: p.mode.value for t, p in plans.items()},
        )
        return plans
