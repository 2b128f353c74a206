"""`fhir-bridge ingest PATH...` (NDJSON and Bundle files) and `fhir-bridge export [SOURCE]`.

Exit status: 0 when the run finished (quarantined resources are counted, not a failure), 1 when
an export failed, 2 for unreadable paths or a configuration mistake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from fhir_bridge import gctune
from fhir_bridge.config import Settings, load_settings
from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.sync.ingest import IngestResult

if TYPE_CHECKING:
    from fhir_bridge.sync.bulk import ExportReport

ingest_app = typer.Typer(no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="settings file (default $FHIR_BRIDGE_CONFIG or config/bridge.yaml)"
    ),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="progress bar (default: on a terminal)"),
]


def _config_path(config: Path | None) -> Path | None:
    """This command's --config, else the parent command's (`fhir-bridge -c FILE ingest ...`)."""
    if config is not None:
        return config
    from fhir_bridge import cli  # late: cli imports this module to mount it

    return cli._State.config


def _settings(config: Path | None, err: Console) -> Settings:
    try:
        settings = load_settings(_config_path(config))
    except FhirBridgeError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG")
    return settings


@contextmanager
def _bar(err: Console, enabled: bool | None, unit: str) -> Iterator[Progress | None]:
    if not (err.is_terminal if enabled is None else enabled):
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[count]} " + unit),
        TimeElapsedColumn(),
        console=err,
    )
    with bar:
        yield bar


def summary_line(what: str, r: IngestResult) -> str:
    """Counts of one run, one line."""
    return (
        f"{what}: {r.received} received, {r.stored} stored, {r.unchanged} unchanged, "
        f"{r.quarantined} quarantined, {r.tasks_created} tasks created, "
        f"{r.tasks_updated} updated, {r.tasks_closed} closed"
    )


@ingest_app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="NDJSON/Bundle JSON files or folders")],
    source: Annotated[
        str, typer.Option(help="source name the resources are stored under")
    ] = "file",
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Ingest NDJSON files or folders (a bulk export on disk) and Bundle JSON files."""
    from fhir_bridge.sync.files import UnreadablePath, collect_files, ingest_files

    out, err = Console(), Console(stderr=True)
    try:
        collect_files(paths)  # before opening the store: a typo must not create a database
    except UnreadablePath as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    bridge = Bridge(_settings(config, err))
    gctune.settle()
    try:
        with _bar(err, progress, "resources") as bar:
            task = bar.add_task("ingest", total=None, count=0) if bar else None

            def on_progress(done: int, total: int, received: int) -> None:
                if bar is not None and task is not None:
                    bar.update(task, completed=done, total=total, count=received)

            report = ingest_files(bridge.ingestor, source, paths, progress=on_progress)
    except UnreadablePath as exc:  # a file vanished between the check and the read
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        bridge.close()
    out.print(summary_line(f"{report.files} files", report.result), highlight=False, soft_wrap=True)
    if report.outcomes:
        out.print(f"{report.outcomes} OperationOutcome lines skipped", highlight=False)
    for problem in report.errors:
        out.print(f"unreadable: {problem}", highlight=False, markup=False, soft_wrap=True)
    if report.result.quarantined:
        out.print(
            f"{report.result.quarantined} resources quarantined (see GET /quarantine)",
            highlight=False,
        )
    if report.errors:
        raise typer.Exit(2)


@ingest_app.command()
def export(
    name: Annotated[str | None, typer.Argument(help="source (default: the first)")] = None,
    resource_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type", help="resource type to export (_type); repeat; default: the source's"
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="_since instant; default: the last finished export")
    ] = None,
    level: Annotated[str, typer.Option(help="system, patient or group")] = "system",
    group: Annotated[str | None, typer.Option(help="Group id, for --level group")] = None,
    max_wait: Annotated[
        float, typer.Option(help="cap in seconds on one wait between status polls")
    ] = 60.0,
    parallel: Annotated[int, typer.Option(help="files downloaded at once")] = 3,
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Bulk-export a source ($export) and ingest the files; an interrupted export resumes."""
    from fhir_bridge.fhir.bulk import ExportRequest, PollPolicy
    from fhir_bridge.sources import client_for
    from fhir_bridge.sync.bulk import export_source

    out, err = Console(), Console(stderr=True)
    settings = _settings(config, err)
    try:
        source = settings.source(name) if name else settings.sources[0]
        if level not in ("system", "patient", "group"):
            raise ValueError("--level must be system, patient or group")
        request = ExportRequest(
            level=level,  # type: ignore[arg-type]  # checked just above
            group_id=group,
            types=tuple(resource_type or source.resource_types),
            since=since,
        )
    except (KeyError, IndexError):
        err.print(f"error: no source named {name!r} in the configuration", highlight=False)
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    bridge = Bridge(settings)
    gctune.settle()
    try:
        with _bar(err, progress, "resources") as bar:
            ids: dict[str, Any] = {}

            def on_progress(src: str, rtype: str, done: int, total: int | None) -> None:
                if bar is not None:
                    if rtype not in ids:
                        ids[rtype] = bar.add_task(f"{src} {rtype}", total=total, count=0)
                    bar.update(ids[rtype], completed=done, total=total, count=done)

            async def go() -> ExportReport:
                async with client_for(source) as client:
                    return await export_source(
                        source,
                        client,
                        bridge.ingestor,
                        request,
                        poll=PollPolicy(max_wait=max_wait),
                        parallel=parallel,
                        progress=on_progress,
                    )

            report = asyncio.run(go())
    finally:
        bridge.close()
    resumed = ", resumed" if report.resumed else ""
    out.print(
        summary_line(f"{source.name} $export ({report.files} files{resumed})", report.result),
        highlight=False,
        soft_wrap=True,
    )
    if report.outcomes or report.deleted:
        out.print(
            f"{report.outcomes} OperationOutcome lines, {report.deleted} deletions reported",
            highlight=False,
        )
    if report.error:
        out.print(f"FAILED: {report.error}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
