"""The `fhir-bridge` command: run, sync, serve, demo.

A face: it parses arguments, shows progress and turns errors into one readable line and a
non-zero exit. The work happens in `runtime.Bridge`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fhir_bridge import cli_ingest, cli_init, gctune
from fhir_bridge.cli_auth import auth_app
from fhir_bridge.cli_outbox import outbox_app
from fhir_bridge.cli_patients import patients_app
from fhir_bridge.cli_sources import sources_app
from fhir_bridge.cli_worker import worker_app
from fhir_bridge.config import CONFIG_ENV, Settings, load_settings
from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.sync.engine import SourceReport

app = typer.Typer(
    name="fhir-bridge",
    help="FHIR interoperability middleware for patient care coordination.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


class _State:
    config: Path | None = None


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="settings file (default $FHIR_BRIDGE_CONFIG or config/bridge.yaml)"
    ),
]


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    _State.config = config


def _settings() -> Settings:
    settings = load_settings(_State.config)
    configure_logging(settings.log_level)
    return settings


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A progress bar on stderr when it is a terminal."""
    if not enabled or not err.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    with bar:
        yield bar


def _sync_with_progress(bridge: Bridge, *, full: bool, only: str | None) -> list[SourceReport]:
    with _progress(True) as bar:
        ids: dict[tuple[str, str], object] = {}

        def on_progress(source: str, rtype: str, done: int, total: int | None) -> None:
            if bar is None:
                return
            key = (source, rtype)
            if key not in ids:
                ids[key] = bar.add_task(f"{source} {rtype}", total=total)
            bar.update(ids[key], completed=done, total=total)  # type: ignore[arg-type]

        return asyncio.run(bridge.sync_once(full=full, progress=on_progress, only=only))


def _print_reports(reports: list[SourceReport]) -> bool:
    ok = True
    for report in reports:
        for t in report.types:
            r = t.result
            status = "ok" if t.error is None else f"FAILED: {t.error}"
            out.print(
                f"{report.source} {t.resource_type}: {r.received} received, {r.stored} stored, "
                f"{r.unchanged} unchanged, {r.quarantined} quarantined, "
                f"tasks: {r.tasks_created} opened, {r.tasks_updated} refreshed, "
                f"{r.tasks_closed} closed, {r.tasks_reopened} reopened "
                f"({t.seconds:.2f} s) {status}",
                highlight=False,
                soft_wrap=True,
            )
            ok = ok and t.error is None
    return ok


@app.command()
def sync(
    once: Annotated[bool, typer.Option("--once", help="one run, then exit")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="ignore cursors: re-pull everything")
    ] = False,
    source: Annotated[str | None, typer.Option(help="only this source")] = None,
) -> None:
    """Pull resources from the configured FHIR servers and update the queues."""
    settings = _settings()
    if source is not None:
        settings.source(source)  # KeyError -> reported by main()
    bridge = Bridge(settings)
    gctune.settle()
    try:
        if once:
            if not _print_reports(_sync_with_progress(bridge, full=full, only=source)):
                raise typer.Exit(1)
            return
        if full:
            _print_reports(_sync_with_progress(bridge, full=True, only=source))
        asyncio.run(_until_interrupted(bridge, serve=False, sync=True, writeback=False))
    finally:
        bridge.close()


async def _until_interrupted(bridge: Bridge, *, serve: bool, sync: bool, writeback: bool) -> None:
    stop = asyncio.Event()
    jobs = []
    if sync or writeback:
        jobs.append(asyncio.create_task(bridge.run_loops(stop, sync=sync, writeback=writeback)))
    try:
        if serve:
            await _serve(bridge)
        else:
            await asyncio.Event().wait()  # until Ctrl-C cancels us
    finally:
        stop.set()
        await asyncio.gather(*jobs, return_exceptions=True)


async def _serve(bridge: Bridge) -> None:
    from fhir_bridge.api import create_app

    api = bridge.settings.api
    config = uvicorn.Config(
        create_app(bridge), host=api.host, port=api.port, log_config=None, access_log=False
    )
    await uvicorn.Server(config).serve()


WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, max=64, help="API processes (default: api.workers, 1)"),
]


@app.command()
def serve(workers: WorkersOpt = None) -> None:
    """Serve the coordinator API only (no sync, no write-back), from one or more processes."""
    settings = _settings()
    settings.auth.check_configured()  # before anything starts, not at the first request
    # Opened here even for several workers: rules, profiles and the store are checked (and a
    # store's one-time set-up done) once, before any worker starts.
    bridge = Bridge(settings)
    count = workers or settings.api.workers
    if count > 1:
        bridge.close()
        _serve_workers(settings, count)
        return
    gctune.settle()
    try:
        asyncio.run(_until_interrupted(bridge, serve=True, sync=False, writeback=False))
    finally:
        bridge.close()


def _serve_workers(settings: Settings, workers: int) -> None:
    """`workers` uvicorn processes on one listening socket, each with its own bridge built
    from the same settings file (`api.main.app_from_environment`); uvicorn's supervisor
    restarts one that dies and stops them all on Ctrl-C or SIGTERM."""
    if settings.config_file is not None:
        os.environ[CONFIG_ENV] = str(settings.config_file)
    api = settings.api
    uvicorn.run(
        "fhir_bridge.api.main:app_from_environment",
        factory=True,
        workers=workers,
        host=api.host,
        port=api.port,
        log_config=None,
        access_log=False,
    )


@app.command()
def run() -> None:
    """Sync on every source's interval, serve the API and deliver write-backs."""
    settings = _settings()
    settings.auth.check_configured()  # before anything syncs, not at the first request
    bridge = Bridge(settings)
    gctune.settle()
    api = bridge.settings.api
    err.print(f"fhir_bridge API on http://{api.host}:{api.port}/queues (docs at /docs)")
    try:
        asyncio.run(_until_interrupted(bridge, serve=True, sync=True, writeback=True))
    finally:
        bridge.close()


@app.command()
def demo(
    port: Annotated[
        int | None, typer.Option(help="API port (default from config/demo.yaml)")
    ] = None,
) -> None:
    """Start a sandbox EHR (SEKMET) with the sample population, sync it, serve the API."""
    from fhir_bridge.sandbox import Sekmet, seed_sample

    config = _State.config or Path("config/demo.yaml")
    base = load_settings(config)
    configure_logging("WARNING")
    err.print("Starting the sandbox EHR (SEKMET; the first run installs it, about 20 s)...")
    with Sekmet() as ehr:
        url = ehr.start()
        count = seed_sample(url)
        err.print(f"Sandbox EHR at {url} holds {count} sample resources.")
        source = base.sources[0].model_copy(update={"base_url": url})
        settings = base.model_copy(update={"sources": (source, *base.sources[1:])})
        if port is not None:
            settings = settings.model_copy(
                update={"api": settings.api.model_copy(update={"port": port})}
            )
        db = settings.storage.path  # the sandbox is new, so is the demo store
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)
        bridge = Bridge(settings)
        gctune.settle()
        try:
            _print_reports(_sync_with_progress(bridge, full=True, only=None))
            api = settings.api
            served = f"http://{api.host}:{api.port}"
            out.print(
                f"\nfhir_bridge is running. Open {served}/ui/ "
                f"(API docs: {served}/docs). Ctrl-C stops it.",
                highlight=False,
                soft_wrap=True,
            )
            from fhir_bridge.web import open_when_ready

            open_when_ready(served)  # only where a display is available
            asyncio.run(_until_interrupted(bridge, serve=True, sync=True, writeback=True))
        finally:
            bridge.close()


mappings_app = typer.Typer(
    help="Check, test and explain mapping files.", no_args_is_help=True, add_completion=False
)
app.add_typer(mappings_app, name="mappings")
app.add_typer(sources_app, name="sources")
app.add_typer(outbox_app, name="outbox")
app.add_typer(patients_app, name="patients")
app.add_typer(worker_app)  # top-level `worker` and `migrate`
app.command("ingest")(cli_ingest.ingest)
app.command("export")(cli_ingest.export)
app.command("init")(cli_init.init)
app.add_typer(auth_app, name="auth")


def _mappings_dir(folder: Path | None) -> Path:
    if folder is not None:
        return folder
    try:
        return load_settings(_State.config).mappings_dir
    except FhirBridgeError:
        return Path("mappings")


DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="mapping folder (default: from the settings)")
]


@mappings_app.command("check")
def mappings_check(
    paths: Annotated[list[Path] | None, typer.Argument(help="files or folders")] = None,
    folder: DirOpt = None,
) -> None:
    """Check mapping files: schema, FHIRPath syntax, element names, queues, duplicate ids."""
    from fhir_bridge.mapping.engine import compile_folder, rule_files

    targets = paths or [_mappings_dir(folder)]
    problems = []
    rules = files = 0
    for target in targets:
        if target.is_dir():
            ruleset, found = compile_folder(target)
            files += len(rule_files(target))
        else:
            ruleset, found = compile_folder(target.parent, [target])
            files += 1
        problems += found
        rules += len(ruleset.rules) if ruleset else 0
    for problem in problems:
        out.print(str(problem), highlight=False, markup=False, soft_wrap=True)
    if problems:
        err.print(f"{len(problems)} problem(s)", highlight=False)
        raise typer.Exit(1)
    out.print(f"ok: {rules} rules in {files} files", highlight=False)


@mappings_app.command("test")
def mappings_test(folder: DirOpt = None) -> None:
    """Run the golden tests in <mappings>/tests against the rules; show a diff on failure."""
    from fhir_bridge.mapping.engine import TESTS_DIR, RuleSet
    from fhir_bridge.mapping.fixtures import run_folder

    mdir = _mappings_dir(folder)
    results = run_folder(mdir / TESTS_DIR, RuleSet.load(mdir))
    failed = [r for r in results if not r.ok]
    for r in failed:
        out.print(f"FAIL {r.file}: {r.name}", highlight=False, markup=False, soft_wrap=True)
        for line in r.failures:
            out.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed", highlight=False)
    if failed or not results:
        raise typer.Exit(1)


@mappings_app.command("explain")
def mappings_explain(
    rule_id: Annotated[str, typer.Argument(metavar="RULE")],
    resource_file: Annotated[Path, typer.Argument(metavar="RESOURCE.json")],
    now: Annotated[
        str | None, typer.Option(help="evaluation time, ISO 8601 (default: now)")
    ] = None,
    store: Annotated[
        list[Path] | None, typer.Option(help="JSON/NDJSON of the patient's other resources")
    ] = None,
    folder: DirOpt = None,
) -> None:
    """Show each expression of RULE, its value on the resource, and the task or why none."""
    from fhir_bridge.mapping.engine import RuleSet
    from fhir_bridge.mapping.explain import explain

    rules = RuleSet.load(_mappings_dir(folder))
    rule = rules.get(rule_id)
    if rule is None:
        known = ", ".join(sorted(r.id for r in rules.rules))
        raise FhirBridgeError(f"no rule {rule_id!r}; rules: {known}")
    resource = _read_json(resource_file)
    others = [r for path in store or [] for r in _read_resources(path)]
    when = datetime.now(UTC)
    if now:
        try:
            when = datetime.fromisoformat(now)
        except ValueError:
            raise FhirBridgeError(f"--now {now!r} is not an ISO 8601 date or time") from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    _, lines = explain(rule, resource, when, others)
    for line in lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def validate(
    resource_file: Annotated[
        Path, typer.Argument(metavar="RESOURCE.json", help="a resource or a Bundle")
    ],
    profile: Annotated[
        list[str] | None,
        typer.Option(help="StructureDefinition url or file name in the profiles folder; repeat"),
    ] = None,
    profiles_dir: Annotated[
        Path | None, typer.Option(help="profiles folder (default: from the settings)")
    ] = None,
) -> None:
    """Check a resource: R4 structure, core required bindings and the given profiles."""
    from fhir_bridge.validate.profiles import ProfileSet
    from fhir_bridge.validate.report import format_issues, validate_file

    folder = profiles_dir
    if folder is None:
        try:
            folder = load_settings(_State.config).profiles_dir
        except FhirBridgeError:
            folder = Path("profiles")
    try:
        issues = validate_file(resource_file, ProfileSet.load(folder), profile or [])
    except OSError as exc:
        raise FhirBridgeError(f"{resource_file}: cannot read: {exc.strerror}") from None
    if issues:
        out.print(format_issues(issues), highlight=False, markup=False, soft_wrap=True)
    errors = sum(i["severity"] == "error" for i in issues)
    out.print(
        f"{resource_file}: {errors} error(s), {len(issues) - errors} warning(s)", highlight=False
    )
    if errors:
        raise typer.Exit(1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FhirBridgeError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise FhirBridgeError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or "resourceType" not in data:
        raise FhirBridgeError(f"{path}: not a FHIR resource (no resourceType)")
    return data


def _read_resources(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return [e["resource"] for e in data.get("entry", []) if "resource" in e]
    return data if isinstance(data, list) else [data]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


def main() -> None:
    """Entry point of the console script: errors become one line and exit status 2.

    SIGTERM is treated like Ctrl-C so `finally` blocks run (the demo stops its sandbox EHR,
    the store is closed) when a service manager or `timeout` stops us.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except FhirBridgeError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyError as exc:
        err.print(f"error: no source named {exc.args[0]!r} in the configuration", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
