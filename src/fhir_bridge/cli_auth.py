"""`fhir-bridge auth hash-key`: make an API key for a service account and the hash to store.

Only the hash goes into the settings file (`auth.api_keys[].hash`); the key itself is shown
once and never stored by the bridge.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fhir_bridge.api.auth import DEFAULT_ITERATIONS, hash_key, new_key

auth_app = typer.Typer(no_args_is_help=True, add_completion=False)


@auth_app.callback()
def _auth() -> None:
    """API access: hash API keys for `auth.api_keys`."""


@auth_app.command("hash-key")
def hash_key_command(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="hash a key read from standard input instead")
    ] = False,
    iterations: Annotated[
        int, typer.Option(min=100_000, help="PBKDF2-HMAC-SHA256 rounds for a key from stdin")
    ] = DEFAULT_ITERATIONS,
) -> None:
    """Print a new random API key and its hash (or only the hash of a key given on stdin).

    A generated key (256 random bits) is stored as its SHA-256; a key you chose yourself
    (`--stdin`) may be guessable, so it is stored with salted PBKDF2.
    """
    if stdin:
        key = sys.stdin.readline().strip()
        if not key:
            typer.echo("no key on standard input", err=True)
            raise typer.Exit(2)
        typer.echo(hash_key(key, iterations))
        return
    key = new_key()
    typer.echo(f"key:  {key}    (give this to the service account; it is not stored)")
    typer.echo(f"hash: {hash_key(key)}    (put this in auth.api_keys[].hash)")
