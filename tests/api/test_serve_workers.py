"""`fhir-bridge serve --workers N` (and `api.workers`): several API processes on one port,
each with its own bridge over the shared store."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from fhir_bridge import cli, gctune
from fhir_bridge.api.main import app_from_environment
from fhir_bridge.config import CONFIG_ENV, ApiConfig
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.ingest import content_hash
from tests.utils import settings_file

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, port: int = 8080, extra: str = "") -> Path:
    """Settings with auth off over a SQLite file holding Patient p1 of source ehr."""
    path = settings_file(
        tmp_path,
        f"auth: {{enabled: false}}\nlog_level: WARNING\n"
        f"api: {{host: 127.0.0.1, port: {port}{extra}}}\n",
    )
    store = SqliteStore(tmp_path / "b.db")
    body = {"resourceType": "Patient", "id": "p1"}
    store.put_resource("ehr", body, content_hash(body))
    store.close()
    return path


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """`serve` and the app factory freeze the collector's view of startup objects and raise its
    young threshold (gctune.settle); give this test process its collector back."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_app_factory_freezes_startup_objects(tmp_path, monkeypatch):
    """After the factory, the objects built at startup are out of the collector's sight."""
    monkeypatch.setenv(CONFIG_ENV, str(write_config(tmp_path)))
    monkeypatch.setenv(gctune.ENV, "1")  # tests/conftest.py switches it off
    gc.unfreeze()
    app = app_from_environment()
    assert gc.get_freeze_count() > 10_000
    app.state.bridge.close()


def test_api_workers_default_one_and_bounded():
    """`api.workers` is 1 unless set, and must be 1-64."""
    assert ApiConfig().workers == 1
    assert ApiConfig(workers=4).workers == 4
    for wrong in (0, 65):
        with pytest.raises(ValidationError):
            ApiConfig(workers=wrong)


@pytest.fixture
def uvicorn_calls(monkeypatch) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """uvicorn.run as `serve` calls it (recorded, not run); the single-process path stubbed."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: calls.append((a, k)))

    async def served(bridge: Any) -> None:
        """The single-process server, returning at once."""
        calls.append((("single",), {}))

    monkeypatch.setattr(cli, "_serve", served)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return calls


def test_workers_option_starts_uvicorn_workers_on_the_factory(tmp_path, uvicorn_calls):
    """--workers 3: uvicorn runs the app factory in 3 processes; they read the same file."""
    config = write_config(tmp_path, port=9123)
    done = runner.invoke(cli.app, ["-c", str(config), "serve", "--workers", "3"])
    assert done.exit_code == 0, done.output
    ((args, kwargs),) = uvicorn_calls
    assert args == ("fhir_bridge.api.main:app_from_environment",)
    assert kwargs["factory"] is True and kwargs["workers"] == 3
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", 9123)
    assert os.environ[CONFIG_ENV] == str(config.resolve())


def test_api_workers_setting_is_the_default(tmp_path, uvicorn_calls):
    """`api.workers: 2` without the option: two processes; `--workers 1` overrides it."""
    config = write_config(tmp_path, extra=", workers: 2")
    assert runner.invoke(cli.app, ["-c", str(config), "serve"]).exit_code == 0
    assert uvicorn_calls[-1][1]["workers"] == 2
    assert runner.invoke(cli.app, ["-c", str(config), "serve", "--workers", "1"]).exit_code == 0
    assert uvicorn_calls[-1] == (("single",), {})


def test_workers_option_refuses_zero(tmp_path, uvicorn_calls):
    """--workers 0 is a usage error; nothing starts."""
    config = write_config(tmp_path)
    done = runner.invoke(cli.app, ["-c", str(config), "serve", "--workers", "0"])
    assert done.exit_code == 2 and not uvicorn_calls


def test_app_factory_reads_the_config_file_and_closes_its_store(tmp_path, monkeypatch):
    """The factory builds a bridge from $FHIR_BRIDGE_CONFIG; stopping the app closes it."""
    monkeypatch.setenv(CONFIG_ENV, str(write_config(tmp_path)))
    app = app_from_environment()
    with TestClient(app) as client:
        assert client.get("/patients/ehr/p1/history").status_code == 200
    store = app.state.bridge.store
    with pytest.raises(Exception, match="closed"):
        store.get_task("t1")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts worker processes in /proc")
def test_two_workers_serve_and_share_one_sqlite_store(tmp_path):
    """`serve --workers 2`: two processes answer on one port, both write the audit trail of
    the same SQLite file, and SIGTERM stops them all."""
    port = _free_port()
    config = write_config(tmp_path, port=port)
    command = [str(Path(sys.executable).with_name("fhir-bridge")), "-c", str(config), "serve"]
    proc = subprocess.Popen([*command, "--workers", "2"])
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while len(_children(proc.pid)) < 2 or not _answers(url):
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=url) as client:
            for _ in range(30):
                assert client.get("/patients/ehr/p1/history").status_code == 200
        workers = _children(proc.pid)
        assert len(workers) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    deadline = time.monotonic() + 15  # the supervisor waited for them; /proc may lag a little
    while [pid for pid in workers if _alive(pid)]:
        assert time.monotonic() < deadline, "a worker outlived `serve`"
        time.sleep(0.2)
    store = SqliteStore(tmp_path / "b.db")
    records, _ = store.list_audit(limit=100)
    store.close()
    assert len([r for r in records if r.subtype == "patient-history"]) == 30


def _alive(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()  # a zombie is gone
    except OSError:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
