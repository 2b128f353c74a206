"""`fhir-bridge sources check`: can the bridge reach each source, log in, and sync it how?
`fhir-bridge sources subscribe NAME`: create rest-hook Subscriptions on a source.
`fhir-bridge sources status`: the running bridge's view: last sync and circuit breaker.

Exit status: 0 when every checked source is reachable and accepts our credentials, 1 when one is
not, 2 for a configuration mistake.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fhir_bridge.config import Settings, SourceConfig, load_settings
from fhir_bridge.errors import ConfigError, FhirRequestError
from fhir_bridge.fhir.capabilities import CompatibilityReport, ResourceSupport, SyncStrategy
from fhir_bridge.logging import configure_logging
from fhir_bridge.sources import check_source, client_for
from fhir_bridge.sync.subscriptions import SubscribeResult, endpoint_for, subscribe

sources_app = typer.Typer(no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="settings file (default $FHIR_BRIDGE_CONFIG or config/bridge.yaml)"
    ),
]


@sources_app.callback()
def _sources() -> None:
    """Inspect the configured FHIR sources."""


def _yes(flag: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]unknown[/]"}[flag]


def _config_path(config: Path | None) -> Path | None:
    """This command's --config, else the parent command's (`fhir-bridge -c FILE sources ...`)."""
    if config is not None:
        return config
    from fhir_bridge import cli  # late: cli imports this module to mount it

    return cli._State.config


def _load(config: Path | None, name: str | None) -> tuple[Settings, list[SourceConfig]]:
    settings = load_settings(_config_path(config))
    if name is None:
        return settings, list(settings.sources)
    try:
        return settings, [settings.source(name)]
    except KeyError:
        raise ConfigError(f"no source named {name!r} in {settings.config_file}") from None


def _resource_rows(table: Table, res: ResourceSupport, probed: str | None) -> None:
    t = res.resource_type
    table.add_section()
    if not res.declared:
        table.add_row(t, _yes(False), "not in the CapabilityStatement")
    table.add_row(f"{t} search", _yes(res.search), "")
    table.add_row(f"{t} _lastUpdated", _yes(res.last_updated), "")
    # The one authenticated search (`probed`) says whether the server pages by _count: only
    # when it has two matches or more (one entry of several, or several entries).
    count_note = ""
    if res.count is None:
        count_note = (
            f"not declared, and GET {probed}?_count=1 had fewer than 2 matches to tell"
            if probed
            else "not declared, and no search ran to tell"
        )
    table.add_row(f"{t} _count", _yes(res.count), count_note)
    table.add_row(f"{t} _include", _yes(res.include), "")
    flags = [
        f"versioning={res.versioning or '-'}",
        *(
            name
            for name, on in (
                ("updateCreate", res.update_create),
                ("conditionalCreate", res.conditional_create),
                ("conditionalUpdate", res.conditional_update),
            )
            if on
        ),
    ]
    table.add_row(f"{t} update with If-Match", _yes(res.update_if_match), escape(", ".join(flags)))
    table.add_row(f"{t} $export", _yes(res.export), "type level")
    note = f"search on {res.created_param}" if res.strategy is SyncStrategy.CREATED_DATE else ""
    table.add_row(f"{t} sync strategy", f"[bold]{res.strategy.value}[/]", note)


def report_table(report: CompatibilityReport) -> Table:
    """One table: capability, supported yes/no, note."""
    table = Table(title=f"source {report.source}", title_justify="left")
    table.add_column("capability")
    table.add_column("supported")
    table.add_column("note", overflow="fold")
    # Notes quote servers (OperationOutcome text, URLs): never let them pass as rich markup.
    table.add_row("reachable", _yes(report.reachable), escape(report.problem or report.base_url))
    if report.search is not None:
        table.add_row("authenticated search", _yes(report.search.ok), escape(report.search.detail))
    if not report.reachable:
        return table
    version_note = "" if report.fhir_r4 else "the bridge expects R4 (4.0.x)"
    table.add_row("FHIR version", escape(report.fhir_version or "?"), version_note)
    software = " ".join(p for p in (report.software_name, report.software_version) if p)
    table.add_row("server software", escape(software or "?"), "")
    token = report.smart_token_endpoint
    table.add_row("SMART configuration", _yes(token is not None), escape(token or ""))
    table.add_row("$export (system)", _yes(report.system_export), "")
    hook = {True: "rest-hook declared", None: "rest-hook not declared", False: ""}[report.rest_hook]
    table.add_row("subscriptions", _yes(report.subscriptions), hook)
    for res in report.resources:
        _resource_rows(table, res, report.search.resource_type if report.search else None)
    return table


def summary(report: CompatibilityReport) -> str:
    """One line per source: the verdict and the strategies."""
    if not report.reachable:
        return f"{report.source}: FAILED: unreachable: {report.problem}"
    search = report.search
    if search is None or not search.ok:
        detail = search.detail if search else "not tried"
        if search is not None and search.status in (401, 403):
            return f"{report.source}: FAILED: credentials rejected (HTTP {search.status}): {detail}"
        return f"{report.source}: FAILED: authenticated search failed: {detail}"
    by_strategy: dict[str, list[str]] = {}
    for res in report.resources:
        by_strategy.setdefault(res.strategy.value, []).append(res.resource_type)
    strategies = "; ".join(f"{s} ({', '.join(types)})" for s, types in by_strategy.items())
    return f"{report.source}: OK: reachable, auth ok; sync strategy: {strategies}"


async def _check_all(sources: list[SourceConfig]) -> list[CompatibilityReport]:
    return list(await asyncio.gather(*(check_source(s) for s in sources)))


@sources_app.command()
def check(
    name: Annotated[str | None, typer.Argument(help="only this source")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check each source: reachable, credentials accepted, capabilities and sync strategy."""
    out, err = Console(), Console(stderr=True)
    try:
        settings, sources = _load(config, name)
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG")
    if not sources:
        err.print("error: no sources are configured", highlight=False)
        raise typer.Exit(2)
    try:
        reports = asyncio.run(_check_all(sources))
    except ConfigError as exc:  # a secret named in the settings is missing
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for report in reports:
        out.print(report_table(report))
        out.print(summary(report), highlight=False, markup=False, soft_wrap=True)
        out.print()
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


async def _subscribe(source: SourceConfig, endpoint: str) -> list[SubscribeResult]:
    async with client_for(source) as client:
        return await subscribe(source, client, endpoint)


@sources_app.command("subscribe")
def subscribe_command(
    name: Annotated[str, typer.Argument(help="the source to subscribe to")],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="the bridge's public base URL (default: the source's subscription.endpoint_base)"
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create an R4 rest-hook Subscription per resource type on the source, delivering to
    {endpoint}/subscriptions/NAME with the shared secret; existing ones are kept."""
    out, err = Console(), Console(stderr=True)
    try:
        settings, [source] = _load(config, name)
        if source.subscription is None:
            raise ConfigError(f"source {name}: add 'subscription: {{secret_env: ...}}' first")
        base = endpoint or (
            str(source.subscription.endpoint_base) if source.subscription.endpoint_base else None
        )
        if not base or not base.startswith(("http://", "https://")):
            raise ConfigError("give --endpoint http(s)://... (the bridge's public base URL)")
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG")
    target = endpoint_for(base, source.name)
    try:
        results = asyncio.run(_subscribe(source, target))
    except ConfigError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except FhirRequestError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for r in results:
        verb = "created" if r.created else "exists "
        out.print(
            f"{verb} Subscription/{r.subscription_id} {r.criteria} status={r.status} -> {target}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def status_line(entry: dict[str, Any]) -> str:
    """One line per source from GET /sources: sync outcome and circuit breaker."""
    circuit = entry.get("circuit") or {}
    state = circuit.get("state", "?")
    last_ok = {True: "ok", False: "FAILING", None: "not run yet"}.get(entry.get("last_ok"), "?")
    line = f"{entry.get('name')}: last sync {last_ok}; circuit {state}"
    if state != "closed":
        line += (
            f" ({circuit.get('consecutive_failures')} consecutive failures, last "
            f"{circuit.get('last_failure')}; probe in {circuit.get('retry_in')} s)"
        )
    if entry.get("last_error"):
        line += f"; last error: {entry['last_error']}"
    return line


@sources_app.command("status")
def status_command(
    api: Annotated[
        str | None,
        typer.Option(help="the running bridge's API base URL (default: from the settings)"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="FHIR_BRIDGE_API_KEY", help="sent as X-API-Key if given"),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Ask the running bridge how each source is doing: last sync and circuit breaker.

    Exit status 1 when a source's last sync failed or its breaker is not closed.
    """
    out, err = Console(), Console(stderr=True)
    if api is None:
        try:
            settings = load_settings(_config_path(config))
        except ConfigError as exc:
            err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        api = f"http://{settings.api.host}:{settings.api.port}"
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        answer = httpx.get(f"{api.rstrip('/')}/sources", headers=headers, timeout=10.0)
        answer.raise_for_status()
        entries = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        err.print(f"error: cannot read {api}/sources: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    failing = False
    for entry in entries:
        out.print(status_line(entry), highlight=False, markup=False, soft_wrap=True)
        circuit = entry.get("circuit") or {}
        failing |= entry.get("last_ok") is False or circuit.get("state", "closed") != "closed"
    if failing:
        raise typer.Exit(1)
