"""What the store-reading subcommands share (`outbox`, `patients`): the --config option, an
error line with an exit status, and the configured store opened and closed around the work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fhir_bridge.config import load_settings
from fhir_bridge.errors import ConfigError, StoreError
from fhir_bridge.logging import configure_logging
from fhir_bridge.store import Store, open_store

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="settings file (default $FHIR_BRIDGE_CONFIG or config/bridge.yaml)"
    ),
]
_err = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print `error: message` on stderr; the Exit to raise with `code`."""
    _err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def configured_store(config: Path | None) -> Iterator[Store]:
    """The store of this command's --config, else the parent command's (exit 2 when the
    settings or the store cannot be read); closed afterwards."""
    if config is None:
        from fhir_bridge import cli  # late: cli imports the subcommands to mount them

        config = cli._State.config
    try:
        settings = load_settings(config)
        configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG")
        store = open_store(settings.storage)
    except (ConfigError, StoreError) as exc:
        raise fail(str(exc), 2) from None
    try:
        yield store
    finally:
        store.close()
