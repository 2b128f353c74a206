"""`fhir-bridge init DIR`: write a starter installation (config/, mappings/, profiles/) into DIR.

The starter is a copy of the defaults that ship with the bridge: `config/bridge.yaml` (its paths
are relative to its own folder, so `fhir-bridge -c DIR/config/bridge.yaml ...` works from any
working directory), the default mapping rules with `queues.yaml`, `conceptmaps/` and the golden
tests in `mappings/tests/`, and the profiles and value sets in `profiles/`.

Where the defaults come from (`defaults_root`):

- a wheel install carries them as package data in `fhir_bridge/defaults/` (see
  `[tool.hatch.build.targets.wheel.force-include]` in pyproject.toml);
- an editable install (`pip install -e .`, `make install`) reads the checkout's own `config/`,
  `mappings/` and `profiles/`, two folders above the package (`src/fhir_bridge`).

Exit status: 0 when written, 1 when a starter file already exists and `--force` was not given
(nothing is written then), 2 when the defaults cannot be found or the folder cannot be written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fhir_bridge.errors import FhirBridgeError

init_app = typer.Typer(no_args_is_help=True, add_completion=False)

DEFAULTS_PACKAGE_DIR = "defaults"
# What a starter holds, relative to the defaults root and to the target folder.
STARTER = ("config/bridge.yaml", "mappings", "profiles")
# Files that must be present for a folder to count as a complete set of defaults.
_MARKERS = ("config/bridge.yaml", "mappings/queues.yaml", "mappings/tests", "profiles")
_SKIP = frozenset({"__pycache__", ".DS_Store"})


class StarterExists(FhirBridgeError):
    """Starter files already exist in the target folder (and `--force` was not given)."""

    def __init__(self, existing: list[Path]) -> None:
        super().__init__(f"{len(existing)} starter file(s) exist")
        self.existing = existing


def _complete(root: Path) -> bool:
    return all((root / marker).exists() for marker in _MARKERS)


def defaults_root(package_dir: Path | None = None) -> Path:
    """The folder holding the default `config/`, `mappings/` and `profiles/`.

    :param package_dir: the `fhir_bridge` package folder (default: this module's folder).
    :raises FhirBridgeError: when neither the package data nor a source checkout has them.
    """
    package = (package_dir or Path(__file__).resolve().parent).resolve()
    candidates = (package / DEFAULTS_PACKAGE_DIR, package.parent.parent)
    for candidate in candidates:
        if _complete(candidate):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FhirBridgeError(
        f"cannot find the default config/, mappings/ and profiles/ (looked in {tried}); "
        "reinstall fhir-bridge from its wheel or from a source checkout"
    )


def starter_files(root: Path) -> list[Path]:
    """Every file of the starter, relative to `root`, sorted."""
    files: list[Path] = []
    for entry in STARTER:
        path = root / entry
        if path.is_file():
            files.append(Path(entry))
            continue
        for item in path.rglob("*"):
            rel = item.relative_to(root)
            if item.is_file() and not _SKIP.intersection(rel.parts):
                files.append(rel)
    return sorted(files)


def write_starter(folder: Path, *, force: bool = False, root: Path | None = None) -> list[Path]:
    """Copy the starter files into `folder`; the files written, relative to `folder`.

    :raises StarterExists: when a starter file already exists in `folder` and not `force`
        (`.existing` lists them); nothing is written then.
    """
    source = root or defaults_root()
    files = starter_files(source)
    existing = [rel for rel in files if (folder / rel).exists()]
    if existing and not force:
        raise StarterExists(existing)
    for rel in files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
    return files


@init_app.command()
def init(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="where to write config/, mappings/, profiles/")
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="overwrite starter files that exist (others are kept)"),
    ] = False,
) -> None:
    """Write a starter installation into DIR: config/bridge.yaml, mappings/ and profiles/."""
    out, err = Console(), Console(stderr=True)
    try:
        files = write_starter(folder, force=force)
    except StarterExists as exc:
        existing = exc.existing
        shown = ", ".join(str(p) for p in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        err.print(
            f"error: {folder} already holds a starter ({shown}{more}); nothing written. "
            "Use --force to overwrite those files (other files are kept).",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except FhirBridgeError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(
            f"error: cannot write into {folder}: {exc.strerror or exc}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    mappings = sum(1 for p in files if p.parts[0] == "mappings")
    tests = sum(1 for p in files if p.parts[:2] == ("mappings", "tests"))
    profiles = sum(1 for p in files if p.parts[0] == "profiles")
    config = folder / "config" / "bridge.yaml"
    out.print(
        f"wrote {len(files)} files into {folder}: config/bridge.yaml, "
        f"mappings/ ({mappings} files, {tests} of them golden tests), "
        f"profiles/ ({profiles} files)\n"
        f"next: set sources[].base_url and auth in {config}, then\n"
        f"  fhir-bridge -c {config} mappings check\n"
        f"  fhir-bridge -c {config} sources check\n"
        f"  fhir-bridge -c {config} run",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
