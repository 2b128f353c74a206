"""A real sync (SEKMET, the sample population) with the parse pool forced on stores what the
in-process sync stores, makes the same tasks, and leaves no process behind."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fhir_bridge.config import Settings, SourceConfig, StorageConfig
from fhir_bridge.runtime import Bridge
from tests.sandbox_fixtures import seeded_server
from tests.sync.test_parse_pool import _alive, _wait_gone
from tests.utils import NOW, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the packaged sample population."""
    return seeded_server(sekmet_factory)


def _bridge(url: str, path: Path, workers: int) -> Bridge:
    settings = Settings(
        auth={"enabled": False},
        sources=(SourceConfig(name="sekmet", base_url=url, page_size=100),),
        storage=StorageConfig(path=path),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
        ingest={"parse_workers": workers, "parse_pool_min": 1},  # every search pays
    )
    return Bridge(settings, clock=lambda: NOW)


def _snapshot(bridge: Bridge) -> tuple[object, ...]:
    store = bridge.store
    hashes = {
        rtype: store.resource_hashes("sekmet", rtype, [r.id for r in store.iter_resources(rtype)])
        for rtype in store.resource_counts("sekmet")
    }
    tasks = sorted((t.id, t.status, t.due, t.title) for t in store.iter_tasks())
    return hashes, tasks, store.list_quarantine("sekmet")[1]


async def test_sync_with_the_pool_matches_the_in_process_sync(seeded_url, tmp_path):
    """Same resources, hashes, tasks and quarantine; the pool did pages; close stops it."""
    snapshots, totals = [], []
    for workers in (0, 2):
        bridge = _bridge(seeded_url, tmp_path / f"w{workers}.db", workers)
        try:
            [report] = await bridge.sync_once()
            assert report.ok, [t.error for t in report.types]
            pool = bridge.ingestor.pool
            assert pool is not None
            if workers:
                assert pool.pages_checked > 0
                pids = pool.pids()
                assert pids and all(_alive(p) for p in pids)
            else:
                assert pool.pids() == []
            snapshots.append(_snapshot(bridge))
            totals.append((report.totals.received, report.totals.stored, report.totals.quarantined))
        finally:
            bridge.close()
        if workers:
            assert _wait_gone(pids) == []
    assert totals[0] == totals[1] and totals[0][0] > 700
    assert snapshots[0] == snapshots[1]


async def test_first_load_starts_the_pool_however_small_its_searches(seeded_url, tmp_path):
    """A first load is a big job: the workers start at its beginning, not when one search's
    total first passes parse_pool_min (here never)."""
    bridge = _bridge(seeded_url, tmp_path / "first.db", 1)
    pool = bridge.ingestor.pool
    assert pool is not None
    pool.min_resources = 10**9
    try:
        [report] = await bridge.sync_once()
        assert report.ok, [t.error for t in report.types]
        deadline = time.monotonic() + 60
        while not pool.pids() and time.monotonic() < deadline:  # not started by us: polled
            await asyncio.sleep(0.05)
        assert pool.pids()
    finally:
        bridge.close()
