"""Benchmarks: print figures and their ratios to anchors measured in the same run; assert nothing.

    make bench            # or: .venv/bin/python bench/run.py [--repeat N]

1. ingest: the bridge's ingest path (R4B parse + store + all rules + task upsert on SQLite)
   over the packaged sample NDJSON, next to the bare `fhir.resources.R4B` parse of the same lines.
2. sync: a full sync of the sample population from a real SEKMET, next to raw httpx paging of
   the same searches (same page size, same sort), which is the floor any client pays.

Results are also written to bench/results/<timestamp>.json so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fhir.resources.R4B import get_fhir_model_class

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES, Settings, SourceConfig, StorageConfig
from fhir_bridge.logging import configure_logging
from fhir_bridge.mapping import RuleSet
from fhir_bridge.runtime import Bridge
from fhir_bridge.sandbox import Sekmet, sample_data_dir, seed_sample
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import Ingestor, ProfilePolicy
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.profiles import ProfileSet

ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 100
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # the sample population's reference date


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of `repeat` calls of `fn`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_lines(types: list[str]) -> dict[str, list[str]]:
    """The sample NDJSON lines of `types`, in that order."""
    return {t: (sample_data_dir() / f"{t}.ndjson").read_text().splitlines() for t in types}


def bench_ingest(repeat: int) -> dict[str, Any]:
    """Bare parse vs the whole ingest path, resources per second, on the same lines.

    The ingest path is what sync runs per page: R4B parse, core bindings and the five bridge
    profiles, content hash, store, every default rule, task upsert; on a fresh SQLite file
    each round, types in dependency order, as a source's first load.
    """
    rules = RuleSet.load(ROOT / "mappings")
    profile_set = ProfileSet.load(ROOT / "profiles")
    profiles = tuple(p.url for p in profile_set.profiles)
    lines = load_lines(dependency_order(DEFAULT_RESOURCE_TYPES, rules))
    count = sum(len(v) for v in lines.values())

    def bare() -> None:
        for rtype, rows in lines.items():
            model = get_fhir_model_class(rtype)
            for row in rows:
                model.model_validate(json.loads(row))

    evaluations = 0

    def ingest() -> None:
        nonlocal evaluations
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "b.db")
            ingestor = Ingestor(
                store,
                rules,
                TaskService(store, lambda: NOW, []),
                lambda: NOW,
                profile_set=profile_set,
                policies={"bench": ProfilePolicy(profiles, quarantine=True)},
            )
            for rtype, rows in lines.items():
                ingestor.ingest("bench", [json.loads(r) for r in rows], rtype, initial=True)
            store.close()
        evaluations = sum(len(rules.for_type(t)) * len(rows) for t, rows in lines.items())

    t_bare = median_time(bare, repeat)
    t_ingest = median_time(ingest, repeat)
    return {
        "resources": count,
        "bare_parse_per_s": count / t_bare,
        "ingest_per_s": count / t_ingest,
        "rule_evaluations_per_s": evaluations / t_ingest,
        "ingest_vs_bare": t_bare / t_ingest,
    }


async def raw_paging(url: str) -> int:
    """Page through every type with plain httpx, as cheaply as a client can."""
    seen = 0
    async with httpx.AsyncClient(timeout=60) as client:
        for rtype in DEFAULT_RESOURCE_TYPES:
            next_url: str | None = f"{url}/{rtype}?_count={PAGE_SIZE}&_sort=_lastUpdated"
            while next_url:
                bundle = (await client.get(next_url)).json()
                seen += len(bundle.get("entry", []))
                next_url = next(
                    (lnk["url"] for lnk in bundle.get("link", []) if lnk["relation"] == "next"),
                    None,
                )
    return seen


def bench_sync(repeat: int) -> dict[str, Any]:
    """Full sync of the sample population vs raw paging, against one SEKMET."""
    with Sekmet() as ehr:
        url = ehr.start()
        seed_sample(url)
        received = asyncio.run(raw_paging(url))

        def sync_once() -> float:
            """Seconds for one full sync into a fresh store (start-up not counted)."""
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(
                    sources=(SourceConfig(name="bench", base_url=url, page_size=PAGE_SIZE),),
                    storage=StorageConfig(path=Path(tmp) / "b.db"),
                    mappings_dir=ROOT / "mappings",
                    profiles_dir=ROOT / "profiles",
                )
                bridge = Bridge(settings, clock=lambda: NOW)
                start = time.perf_counter()
                asyncio.run(bridge.sync_once(full=True))
                elapsed = time.perf_counter() - start
                bridge.close()
                return elapsed

        t_raw = median_time(lambda: asyncio.run(raw_paging(url)), repeat)
        t_sync = statistics.median(sync_once() for _ in range(repeat))
    return {
        "resources": received,
        "raw_paging_s": t_raw,
        "bridge_sync_s": t_sync,
        "sync_vs_raw": t_sync / t_raw,
        "bridge_per_s": received / t_sync,
    }


def main() -> None:
    """Run the benchmarks, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging("ERROR")
    results = {"ingest": bench_ingest(args.repeat), "sync": bench_sync(args.repeat)}
    i, s = results["ingest"], results["sync"]
    rows = [
        ("ingest: bare R4B parse", f"{i['bare_parse_per_s']:,.0f} resources/s", ""),
        ("ingest: rule evaluations", f"{i['rule_evaluations_per_s']:,.0f} /s", ""),
        (
            "ingest: parse+store+rules+tasks",
            f"{i['ingest_per_s']:,.0f} resources/s",
            f"{i['ingest_vs_bare']:.2f}x of bare parse rate",
        ),
        ("sync: raw httpx paging", f"{s['raw_paging_s'] * 1000:,.0f} ms", f"{s['resources']} res."),
        (
            "sync: bridge full sync",
            f"{s['bridge_sync_s'] * 1000:,.0f} ms",
            f"{s['sync_vs_raw']:.2f}x raw paging time",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    sys.stdout.write(
        f"median of {args.repeat} runs, sample population ({i['resources']} resources)\n"
    )
    for name, figure, ratio in rows:
        sys.stdout.write(f"  {name:<{width}}  {figure:>22}  {ratio}\n")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    sys.stdout.write(f"written bench/results/{stamp}.json\n")


if __name__ == "__main__":
    main()
