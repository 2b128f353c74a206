"""`fhir-bridge patients links|link|separate|forget`: admins' decisions on which records are
one person, from the shell of the machine that holds the store (the API's /patients/links
does the same for an admin token). Each change is written to the audit trail with the agent
`cli:<os user>`.

Exit status: 0 on success, 1 when a record or decision is missing, 2 for a configuration or
storage problem.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fhir_bridge.cli_common import ConfigOpt, configured_store, fail
from fhir_bridge.patients.identity import Decision, PatientRecord, decide, decisions, forget
from fhir_bridge.store import Store
from fhir_bridge.store.base import AuditRecord

patients_app = typer.Typer(no_args_is_help=True, add_completion=False)
_err = Console(stderr=True)

RecordArg = Annotated[str, typer.Argument(help="SOURCE/PATIENT_ID, e.g. ehr/p1")]


@patients_app.callback()
def _patients() -> None:
    """Link or separate patient records across sources by hand."""


def _stored(store: Store, key: str) -> PatientRecord:
    try:
        record = PatientRecord.parse(key)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if store.get_resource(record.source, "Patient", record.id) is None:
        raise fail(f"no Patient {record.id} stored from source {record.source!r}", 1)
    return record


def _agent() -> str:
    return f"cli:{getpass.getuser()}"


def _audit(store: Store, action: str, *records: PatientRecord) -> None:
    now = datetime.now(UTC)
    for record in records:
        store.add_audit(
            AuditRecord(
                recorded=now,
                subtype="patient-link",
                action=action,
                outcome="0",
                agent=_agent(),
                patient=record.reference,
                source=record.source,
            )
        )


def _decide(a: str, b: str, same_person: bool, note: str | None, config: Path | None) -> None:
    with configured_store(config) as store:
        first, second = _stored(store, a), _stored(store, b)
        if first == second:
            raise fail("give two different records", 2)
        decide(store, Decision(first, second, same_person, _agent(), datetime.now(UTC), note))
        _audit(store, "U", first, second)
    verb = "linked (the same person)" if same_person else "separated (different persons)"
    Console().print(f"{a} and {b} are {verb}", highlight=False)


@patients_app.command()
def link(
    a: RecordArg,
    b: RecordArg,
    note: Annotated[str | None, typer.Option(help="why (shown to admins)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Treat two records as the same person, even without a shared trusted identifier."""
    _decide(a, b, True, note, config)


@patients_app.command()
def separate(
    a: RecordArg,
    b: RecordArg,
    note: Annotated[str | None, typer.Option(help="why (shown to admins)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Keep two records apart even when a trusted identifier matches (e.g. a reused MRN)."""
    _decide(a, b, False, note, config)


@patients_app.command("forget")
def forget_(a: RecordArg, b: RecordArg, config: ConfigOpt = None) -> None:
    """Drop the decision about two records: trusted identifiers decide again."""
    with configured_store(config) as store:
        first, second = PatientRecord.parse(a), PatientRecord.parse(b)
        if not forget(store, first, second):
            raise fail(f"no link decision about {a} and {b}", 1)
        _audit(store, "D", first, second)
    Console().print(f"the decision about {a} and {b} is forgotten", highlight=False)


@patients_app.command("links")
def list_links(config: ConfigOpt = None) -> None:
    """Every decision, by pair."""
    with configured_store(config) as store:
        found = decisions(store)
    table = Table("record", "record", "decision", "by", "on", "note")
    for d in found:
        same = "same person" if d.same_person else "different persons"
        table.add_row(d.a.key, d.b.key, same, d.by, d.at.date().isoformat(), d.note or "")
    Console().print(table)
