"""`fhir-bridge migrate` and `fhir-bridge worker`: the scale-out commands.

Exit status: 0 on success, 2 for a bad argument or a storage problem (unreachable Redis, a
non-empty target, counts that differ after the copy).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fhir_bridge import gctune
from fhir_bridge.config import Settings, load_settings
from fhir_bridge.errors import ConfigError, StoreError
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.leases import lease_manager
from fhir_bridge.store.migrate import migrate as migrate_store
from fhir_bridge.store.redis import RedisStore, _safe_url
from fhir_bridge.store.redis_url import parse_redis_url
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.worker import ROLES, Role, Worker, WorkerOptions, open_with_retry

worker_app = typer.Typer(no_args_is_help=True, add_completion=False)
_out = Console()
_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


def _sqlite_path(value: str) -> Path:
    """The file of a ``sqlite:PATH`` (or ``sqlite:///PATH``) argument; it must exist."""
    if not value.startswith("sqlite:"):
        raise _fail(f"--from must be sqlite:PATH, not {value!r}")
    raw = value.removeprefix("sqlite:")
    raw = raw.removeprefix("//") if raw.startswith("///") else raw
    path = Path(raw)
    if not path.is_file():
        raise _fail(f"no SQLite store at {path}")
    return path


@worker_app.command("migrate")
def migrate(
    from_: Annotated[str, typer.Option("--from", help="the embedded store to copy: sqlite:PATH")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="the Redis to copy into: redis://HOST:PORT/DB (or rediss, sentinel, cluster)",
        ),
    ],
    prefix: Annotated[
        str, typer.Option("--prefix", help="key prefix of the installation in Redis")
    ] = "fhir-bridge",
    force: Annotated[
        bool, typer.Option("--force", help="delete everything under the target prefix first")
    ] = False,
) -> None:
    """Move an embedded (SQLite) installation to Redis: resources, cursors, quarantine, tasks
    with their history, the outbox, the audit trail and link decisions. Stop the bridge first."""
    path = _sqlite_path(from_)
    try:
        parse_redis_url(to)  # plain, TLS, unix, Sentinel or Cluster
    except ValueError as exc:
        raise _fail(f"--to: {exc}") from None
    try:
        source = SqliteStore(path)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    try:
        try:
            target = RedisStore(to, key_prefix=prefix)
        except (StoreError, ValueError) as exc:
            raise _fail(str(exc)) from None
        try:
            copied = migrate_store(
                source,
                target,
                force=force,
                progress=lambda what, n: _err.print(f"  {what}: {n}", highlight=False),
            )
        except StoreError as exc:
            raise _fail(str(exc)) from None
        finally:
            target.close()
    finally:
        source.close()
    _out.print(f"migrated {path} to {_safe_url(to)} under {{{prefix}}}:", highlight=False)
    for line in copied.lines():
        _out.print(f"  {line}", highlight=False, soft_wrap=True)
    _out.print("verified: the target holds the same counts", highlight=False)


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="settings file (default $FHIR_BRIDGE_CONFIG or config/bridge.yaml)"
    ),
]


@worker_app.command("worker")
def worker(
    role: Annotated[
        str, typer.Option("--role", help="sync, writeback or all", case_sensitive=False)
    ] = "all",
    lease_ttl: Annotated[
        float,
        typer.Option("--lease-ttl", min=1.0, help="seconds before a dead worker's work moves"),
    ] = 30.0,
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="name of this worker in leases and logs (default: random)"),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run a worker: leased sync of every (source, type) and/or leased outbox delivery.
    Start as many as you like, on any machine, against one Redis."""
    if role not in ROLES:
        raise _fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    if config is None:
        from fhir_bridge import cli  # late: cli imports this module to mount it

        config = cli._State.config
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    configure_logging(settings.log_level)
    asyncio.run(_run_worker(settings, role, WorkerOptions(lease_ttl=lease_ttl), owner))


async def _run_worker(
    settings: Settings, role: Role, options: WorkerOptions, owner: str | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bridge = await open_with_retry(lambda: Bridge(settings), stop, options.max_backoff)
    if bridge is None:
        return
    gctune.settle()
    try:
        await Worker(bridge, lease_manager(bridge.store, owner), role, options).run(stop)
    finally:
        bridge.close()
