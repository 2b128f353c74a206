"""Outcome figures over a date range, as JSON for the dashboard and as CSV for spreadsheets
(`outcomes/metrics.py`; definitions in docs/family.md)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from fhir_bridge.api.auth import Principal, forbidden
from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.outcomes.metrics import CSV_COLUMNS, Outcomes, csv_rows, outcomes

router = APIRouter(tags=["outcomes"])
DEFAULT_DAYS = 28
_DATE = r"^\d{4}-\d{2}-\d{2}$"
FromQuery = Annotated[
    date | None, Query(alias="from", description="first day (UTC), default 28 days before to")
]
ToQuery = Annotated[date | None, Query(description="last day (UTC, included), default today")]
QueueQuery = Annotated[
    str | None,
    Query(max_length=64, description="one queue's tasks only; default every queue you may work"),
]


def window(now: datetime, first: date | None, last: date | None) -> tuple[datetime, datetime]:
    """[start, end) in UTC from inclusive days; 422 when reversed."""
    last = last or now.astimezone(UTC).date()
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise RequestValidationError(
            [{"loc": ("query", "from"), "msg": "must not be after 'to'", "type": "value_error"}]
        )
    start = datetime.combine(first, time(), UTC)
    return start, datetime.combine(last + timedelta(days=1), time(), UTC)


def scope(request: Request, queue: str | None) -> frozenset[str] | None:
    """The queues whose tasks the figures count: the one asked for, else every queue the
    caller may work (None: all). A coordinator restricted to some queues asking for another
    one gets 403, as on the task list."""
    principal: Principal | None = getattr(request.state, "principal", None)
    mine = None if principal is None or principal.is_admin else principal.queues
    if queue is not None:
        if mine is not None and queue not in mine:
            raise forbidden(f"you may not work the queue {queue!r}")
        return frozenset({queue})
    return None if mine is None else frozenset(mine)


@router.get("/outcomes", response_model=Outcomes)
def read_outcomes(
    bridge: BridgeDep,
    request: Request,
    first: FromQuery = None,
    to: ToQuery = None,
    queue: QueueQuery = None,
) -> Outcomes:
    """Every outcome figure for the days from..to, each with the ids behind it."""
    now = bridge.clock()
    start, end = window(now, first, to)
    return outcomes(bridge.store, now, start, end, scope(request, queue))


@router.get("/outcomes.csv", response_class=Response)
def read_outcomes_csv(
    bridge: BridgeDep,
    request: Request,
    first: FromQuery = None,
    to: ToQuery = None,
    queue: QueueQuery = None,
) -> Response:
    """The same figures, one row per figure and group (metric, group, value, count, ids)."""
    now = bridge.clock()
    start, end = window(now, first, to)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(outcomes(bridge.store, now, start, end, scope(request, queue))))
    name = f"outcomes-{start.date()}-{(end - timedelta(days=1)).date()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
