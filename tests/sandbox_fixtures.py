"""Pytest fixtures that run real SEKMET FHIR servers on 127.0.0.1 (import them in conftest.py).

    from tests.sandbox_fixtures import sekmet_factory, sekmet_url  # noqa: F401

``sekmet_factory(**kwargs)`` starts one more server (keyword arguments as for
:class:`fhir_bridge.sandbox.Sekmet`, e.g. ``auth="bearer"`` or ``extra_settings={...}``) and
returns the started :class:`Sekmet`; every server it started is stopped at the end of the session.
``sekmet_url`` is one empty in-memory server shared by the whole session.
``seeded_server(sekmet_factory)`` starts a fresh server holding the packaged sample data.

SEKMET is installed into its own venv on first use (see ``fhir_bridge.sandbox.default_venv``). If
that or starting the server fails, the requesting test errors with the reason: nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_bridge.sandbox import Sekmet, ensure_installed, seed_sample

SekmetFactory = Callable[..., Sekmet]


@pytest.fixture(scope="session")
def sekmet_factory() -> Iterator[SekmetFactory]:
    """Start extra SEKMET servers on demand; all of them are stopped when the session ends."""
    servers: list[Sekmet] = []
    install_errors: dict[Path, str] = {}  # venv -> why installing failed (tried once per session)

    def start(**kwargs: Any) -> Sekmet:
        server = Sekmet(**kwargs)
        problem = install_errors.get(server.venv)
        if problem is None:
            try:
                ensure_installed(server.venv)
            except Exception as exc:
                problem = install_errors[server.venv] = f"installing it failed: {exc}"
        if problem is None:
            servers.append(server)
            try:
                server.start()
            except Exception as exc:
                server.stop()
                problem = f"starting it failed: {exc}"
        if problem is not None:
            pytest.fail(
                f"SEKMET FHIR server (venv {server.venv}) is not available: {problem}",
                pytrace=False,
            )
        return server

    yield start
    errors: list[str] = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(f"{server!r}: {exc}")
    if errors:
        pytest.fail("stopping SEKMET failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def sekmet_url(sekmet_factory: SekmetFactory) -> str:
    """Base URL of one empty in-memory SEKMET server shared by the whole test session."""
    return sekmet_factory().base_url


def seeded_server(factory: SekmetFactory, **kwargs: Any) -> str:
    """Start a fresh server with ``factory`` (kwargs as for ``Sekmet``), seed the packaged sample
    data into it and return its base URL."""
    server = factory(**kwargs)
    token = server.token if server.auth == "bearer" else None
    problem = None
    try:
        seed_sample(server.base_url, token=token)
    except Exception as exc:
        problem = f"seeding the sample data into {server.base_url} failed: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    return server.base_url
