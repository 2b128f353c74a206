"""Load FHIR resources into a server with transaction Bundles of ``PUT Type/id`` (idempotent).

The packaged sample (``data/synthea/<Type>.ndjson``) is a Synthea-derived 30-patient population;
see ``data/synthea/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"

# Referenced types first, so a server that checks references (SEKMET does not) accepts every batch.
TYPE_ORDER: tuple[str, ...] = (
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "Coverage",
    "Encounter",
    "Condition",
    "Goal",
    "CareTeam",
    "CarePlan",
    "MedicationRequest",
    "MedicationStatement",
    "Appointment",
    "CoverageEligibilityRequest",
)
_RANK = {name: i for i, name in enumerate(TYPE_ORDER)}


def sample_data_dir() -> Path:
    """The packaged ``data/synthea`` folder holding one ``<Type>.ndjson`` per resource type."""
    return Path(__file__).parent / "data" / "synthea"


def sample_files() -> list[Path]:
    """The packaged NDJSON files, sorted by name."""
    return sorted(sample_data_dir().glob("*.ndjson"))


def load_ndjson(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Yield one resource per non-blank line of each NDJSON file.

    Raises :class:`ValueError` naming file and line for a line that is not a JSON object.
    """
    for path in paths:
        with Path(path).open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
                if not isinstance(item, dict):
                    raise ValueError(f"{path}:{lineno}: not a JSON object")
                yield item


def _outcome_text(body: Any) -> str:
    """Readable text of an OperationOutcome (or of a transaction-response entry's outcome)."""
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in body.get("issue") or []:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        severity = issue.get("severity", "error")
        where = ", ".join(issue.get("expression") or [])
        parts.append(f"{severity}: {text}" + (f" [{where}]" if where else ""))
    return "; ".join(parts)


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str) or not rtype or not rid:
        raise ValueError("every resource to seed needs a resourceType and an id")
    return {
        "fullUrl": f"{rtype}/{rid}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
    }


def _post_transaction(client: httpx.Client, base_url: str, entries: list[dict[str, Any]]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        resp = client.post(
            base_url.rstrip("/"),
            content=json.dumps(bundle, separators=(",", ":")),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(f"seeding {base_url} failed: {exc!r}") from exc
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 300:
        text = _outcome_text(body) or resp.text[:2000]
        raise RuntimeError(
            f"seeding {base_url}: transaction answered HTTP {resp.status_code}: {text}"
        )
    if not isinstance(body, dict) or body.get("type") != "transaction-response":
        raise RuntimeError(f"seeding {base_url}: expected a transaction-response Bundle")
    for i, item in enumerate(body.get("entry") or []):
        response = item.get("response") or {}
        status = str(response.get("status", ""))
        if not status.startswith("2"):
            text = _outcome_text(response.get("outcome")) or status
            raise RuntimeError(
                f"seeding {base_url}: entry {i} ({entries[i]['request']['url']}): {text}"
            )


def seed(
    base_url: str,
    resources: Iterable[dict[str, Any]],
    *,
    batch: int = 120,
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``resources`` to ``base_url`` as transaction Bundles of ``PUT Type/id``.

    Referenced types go first (see :data:`TYPE_ORDER`; other types after them, in input order).
    Idempotent: seeding again only makes new versions. ``progress`` gets the running total after
    each Bundle. Returns the number of resources written. Raises :class:`RuntimeError` with the
    server's OperationOutcome text if a Bundle fails (that Bundle is rolled back; earlier ones
    stay).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    items = sorted(
        (_entry(r) for r in resources),
        key=lambda e: _RANK.get(e["resource"]["resourceType"], len(_RANK)),
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    written = 0
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            _post_transaction(client, base_url, chunk)
            written += len(chunk)
            if progress is not None:
                progress(written)
    return written


def seed_sample(
    base_url: str,
    *,
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Seed the packaged sample data (every ``data/synthea/*.ndjson``); returns the count."""
    return seed(base_url, load_ndjson(sample_files()), token=token, progress=progress)
