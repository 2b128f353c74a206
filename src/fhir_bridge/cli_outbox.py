"""`fhir-bridge outbox list|show|retry|discard`: dead letters and conflicts for operators.

Exit status: 0 on success, 1 when the entry is missing or not in a state the command applies
to, 2 for a configuration or storage problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fhir_bridge.cli_common import ConfigOpt, configured_store, fail
from fhir_bridge.store import Store
from fhir_bridge.tasks.model import OutboxStatus
from fhir_bridge.writeback import admin

outbox_app = typer.Typer(no_args_is_help=True, add_completion=False)


@outbox_app.callback()
def _outbox() -> None:
    """Inspect and repair write-back: dead letters, conflicts, retry, discard."""


@contextmanager
def _store(config: Path | None) -> Iterator[Store]:
    """The configured store; a missing entry or a wrong state exits 1."""
    with configured_store(config) as store:
        try:
            yield store
        except (admin.OutboxEntryNotFound, admin.OutboxStateError) as exc:
            raise fail(str(exc), 1) from None


@outbox_app.command("list")
def list_(
    status: Annotated[OutboxStatus | None, typer.Option(help="only entries in this status")] = None,
    task: Annotated[str | None, typer.Option(help="only entries of this task id")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    config: ConfigOpt = None,
) -> None:
    """Outbox entries, oldest first."""
    with _store(config) as store:
        entries = admin.list_entries(store, status, task, limit)
    out = Console()
    if as_json:
        for entry in entries:
            out.print_json(json.dumps(admin.describe(entry)))
        return
    table = Table("id", "task", "action", "status", "attempts", "last error")
    for e in entries:
        table.add_row(
            str(e.id), e.task_id, e.action, e.status.value, str(e.attempts), e.last_error or ""
        )
    out.print(table)


@outbox_app.command()
def show(entry_id: int, config: ConfigOpt = None) -> None:
    """One entry as JSON, with its payload and why it failed (OperationOutcome or diff)."""
    with _store(config) as store:
        entry = admin.get_entry(store, entry_id)
    Console().print_json(json.dumps(admin.describe(entry, payload=True)))


@outbox_app.command()
def retry(entry_id: int, config: ConfigOpt = None) -> None:
    """Put a dead or conflict entry back to pending, due now, with a fresh retry budget."""
    with _store(config) as store:
        entry = admin.retry(store, entry_id, datetime.now(UTC))
    Console().print(f"outbox entry {entry.id} is {entry.status.value} again", highlight=False)


@outbox_app.command()
def discard(
    entry_id: int,
    reason: Annotated[str, typer.Option(help="why it is given up (kept with the entry)")],
    config: ConfigOpt = None,
) -> None:
    """Never deliver an entry (it stays listed as discarded, with the reason)."""
    with _store(config) as store:
        entry = admin.discard(store, entry_id, reason)
    Console().print(f"outbox entry {entry.id} is {entry.status.value}", highlight=False)
