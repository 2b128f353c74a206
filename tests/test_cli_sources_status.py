"""Tests for `fhir-bridge sources status`: the running bridge's sources and circuit breakers."""

from __future__ import annotations

import httpx
import respx
from typer.testing import CliRunner

from fhir_bridge.cli import app

API = "http://bridge.test:8080"
runner = CliRunner()


def source(name: str, last_ok: bool | None, state: str, **circuit: object) -> dict[str, object]:
    return {
        "name": name,
        "last_ok": last_ok,
        "last_error": None if last_ok else f"GET Patient on source {name}: HTTP 503",
        "circuit": {"state": state, **circuit},
    }


def test_status_shows_an_open_breaker_and_exits_1():
    """An open breaker is shown with its failures and probe time; exit status 1."""
    entries = [
        source("good", True, "closed"),
        source(
            "flaky", False, "open", consecutive_failures=5, last_failure="HTTP 503", retry_in=12.5
        ),
    ]
    with respx.mock:
        route = respx.get(f"{API}/sources").mock(return_value=httpx.Response(200, json=entries))
        result = runner.invoke(app, ["sources", "status", "--api", API, "--api-key", "k1"])
    assert result.exit_code == 1, result.output
    assert route.calls.last.request.headers["X-API-Key"] == "k1"
    lines = result.output.splitlines()
    assert lines[0] == "good: last sync ok; circuit closed"
    assert lines[1].startswith("flaky: last sync FAILING; circuit open (5 consecutive failures")
    assert "probe in 12.5 s" in lines[1] and "HTTP 503" in lines[1]


def test_status_all_healthy_exits_0():
    """Every source fine: exit status 0."""
    with respx.mock:
        respx.get(f"{API}/sources").mock(
            return_value=httpx.Response(200, json=[source("good", True, "closed")])
        )
        result = runner.invoke(app, ["sources", "status", "--api", API])
    assert result.exit_code == 0, result.output


def test_status_unreachable_api_exits_2():
    """No bridge answering: a clear error and exit status 2."""
    with respx.mock:
        respx.get(f"{API}/sources").mock(side_effect=httpx.ConnectError("refused"))
        result = runner.invoke(app, ["sources", "status", "--api", API])
    assert result.exit_code == 2
    assert "cannot read" in result.output
