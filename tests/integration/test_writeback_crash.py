"""A delivery killed between the server's 201 for the mirror Task and the bridge's bookkeeping,
then retried by a fresh process, against a real SEKMET server: still exactly one Task.

The kill point is made deterministic by a test seam in writeback/delivery.py: with
FHIR_BRIDGE_TEST_KILL_AFTER_CREATE naming a file, the delivering process writes that file and
SIGKILLs itself right after a conditional create answered 201 and before it records the
mirror or marks the outbox entry delivered. Nothing sets the variable outside this test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxStatus
from fhir_bridge.writeback.delivery import CRASH_AFTER_CREATE_ENV
from tests.integration.test_end_to_end import SYSTEM, make_bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import ROOT

pytestmark = pytest.mark.integration

_TIMEOUT = 120  # seconds one helper process may take


def _write_config(path: Path, url: str, db: Path) -> Path:
    """A bridge.yaml (JSON is YAML) for the helper: the same source and store as the parent."""
    config = {
        "auth": {"enabled": False},
        "sources": [{"name": "sekmet", "base_url": url, "page_size": 50}],
        "storage": {"path": str(db)},
        "writeback": {"interval": 0.1},
        "mappings_dir": str(ROOT / "mappings"),
        "profiles_dir": str(ROOT / "profiles"),
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _deliver(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one `deliver_once` in a fresh process (bounded by _TIMEOUT)."""
    environ = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_CREATE_ENV} | env
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.crash_deliver", str(config)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )


def _mirrors(url: str, task_id: str) -> list[dict[str, Any]]:
    """The FHIR Tasks on the server that carry this task's identifier."""
    bundle = httpx.get(f"{url}/Task", params={"identifier": f"{SYSTEM}|{task_id}"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_kill_after_201_before_bookkeeping_makes_no_second_task(sekmet_factory, tmp_path):
    """SIGKILL after the mirror's 201 and before the bridge recorded it; a new process delivers
    again: one Task with the identifier, in progress, recorded, the entry delivered once."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        await bridge.sync_once()
        task = bridge.store.list_tasks(rule_id="prior-authorization", limit=1).items[0]
        bridge.tasks.claim(task.id, "bob")
        (entry,) = bridge.store.list_outbox(status=OutboxStatus.PENDING)
        assert (entry.task_id, entry.action) == (task.id, MIRROR_ACTION)
    finally:
        bridge.close()
    config = _write_config(tmp_path / "bridge.yaml", url, tmp_path / "bridge.db")
    marker = tmp_path / "killed-after-create"

    crashed = _deliver(config, **{CRASH_AFTER_CREATE_ENV: str(marker)})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert marker.read_text(encoding="utf-8") == "created\n"
    assert len(_mirrors(url, task.id)) == 1  # the server has it ...
    bridge = make_bridge(url, tmp_path)
    try:
        assert bridge.store.get_task(task.id).mirror_id is None  # ... the bridge does not
        (pending,) = bridge.store.list_outbox(task_id=task.id)
        assert (pending.status, pending.attempts) == (OutboxStatus.PENDING, 0)
    finally:
        bridge.close()

    retried = _deliver(config)
    assert retried.returncode == 0, retried.stderr
    stats = json.loads(retried.stdout.strip().splitlines()[-1])
    assert (stats["delivered"], stats["dead"], stats["retried"]) == (1, 0, 0)
    (mirror,) = _mirrors(url, task.id)
    assert mirror["status"] == "in-progress"
    assert mirror["owner"]["identifier"]["value"] == "bob"
    bridge = make_bridge(url, tmp_path)
    try:
        assert bridge.store.get_task(task.id).mirror_id == mirror["id"]
        (done,) = bridge.store.list_outbox(task_id=task.id)
        assert (done.status, done.attempts) == (OutboxStatus.DELIVERED, 1)
    finally:
        bridge.close()
