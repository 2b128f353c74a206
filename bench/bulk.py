"""Bulk file ingest benchmark: resources/s and peak RSS for 20,000 and 100,000 resources.

    .venv/bin/python bench/bulk.py [--sizes 20000 100000]

The packaged sample population is copied with rewritten ids (and references, so each copy is a
consistent population of its own) into NDJSON folders of the given sizes. Each size is ingested
with the real Ingestor (R4B parse, profiles, store, rules, task upsert) on a fresh SQLite file in
a child process of its own, so each peak RSS (`peak_rss_kb`) belongs to one size only.
Reading is streamed, so the peak RSS should not grow with the input size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_bridge.config import Settings, StorageConfig
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.sandbox import sample_files
from fhir_bridge.sync.files import ingest_files

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # the sample population's reference date


def _rewrite(node: Any, suffix: str) -> Any:
    """A copy of `node` whose `Type/id` references end in `suffix`."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, suffix) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and "/" in ref and not ref.startswith(("http", "#", "urn:")):
            out["reference"] = ref + suffix
        return out
    if isinstance(node, list):
        return [_rewrite(v, suffix) for v in node]
    return node


def generate(folder: Path, size: int, tag: str = "b") -> int:
    """Write at least `size` resources as one NDJSON file per type into `folder`.

    Ids and references of copy k end in `-<tag><k>`: folders written with different tags hold
    disjoint populations that can be ingested into one store.
    """
    folder.mkdir(parents=True, exist_ok=True)
    per_type = {
        p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in sample_files()
    }
    copies = -(-size // sum(len(v) for v in per_type.values()))
    written = 0
    for rtype, items in per_type.items():
        with (folder / f"{rtype}.ndjson").open("w", encoding="utf-8") as handle:
            for k in range(copies):
                suffix = f"-{tag}{k}"
                for item in items:
                    copy = _rewrite(item, suffix) | {"id": f"{item['id']}{suffix}"}
                    handle.write(json.dumps(copy, separators=(",", ":")) + "\n")
                    written += 1
    return written


def storage_for(target: str, prefix: str | None) -> StorageConfig:
    """A SQLite file at `target`, or the Redis at `target` (redis://...) under `prefix`."""
    if target.startswith(("redis://", "rediss://", "unix://")):
        return StorageConfig(engine="redis", redis_url=target, key_prefix=prefix or "bench")
    return StorageConfig(path=Path(target))


def peak_rss_kb() -> int:
    """This process's peak resident set in KiB: Linux's VmHWM, not `ru_maxrss`.

    A child started by a big parent (`make bench` runs this after its other parts) reports in
    `ru_maxrss` the parent's size when it forked, carried across exec: `make bench` printed
    the bench process's own ~250-350 MB for every size. VmHWM belongs to the memory the child
    itself mapped after exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux, elsewhere


def child(folder: Path, target: str, prefix: str | None = None) -> None:
    """Ingest `folder` into the store at `target`; print one JSON line of figures."""
    configure_logging("WARNING")
    settings = Settings(
        storage=storage_for(target, prefix),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, clock=lambda: NOW)
    try:
        started = time.time()
        start = time.perf_counter()
        report = ingest_files(bridge.ingestor, "bench", [folder])
        seconds = time.perf_counter() - start
        ended = time.time()
    finally:
        bridge.close()
    peak_kb = peak_rss_kb()
    r = report.result
    print(
        json.dumps(
            {
                "resources": r.received,
                "stored": r.stored,
                "quarantined": r.quarantined,
                "tasks_created": r.tasks_created,
                "seconds": round(seconds, 2),
                "per_second": round(r.received / seconds),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "started": started,
                "ended": ended,
            }
        )
    )


def run_child(folder: Path, target: str, prefix: str | None = None) -> subprocess.Popen[str]:
    """Start a child process ingesting `folder` into `target` (see `child`)."""
    cmd = [sys.executable, __file__, "--child", str(folder), target]
    if prefix:
        cmd += ["--prefix", prefix]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The figures a child printed; its stderr in the error if it failed."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bulk child failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def measure(sizes: list[int], tmp: Path) -> list[dict[str, Any]]:
    """Generate each size under `tmp` and ingest it into a fresh SQLite file in a child process.

    Each figure also names its NDJSON `folder`, `written` resources and `ndjson_mb`.
    """
    figures = []
    for size in sizes:
        folder = tmp / f"ndjson-{size}"
        written = generate(folder, size)
        result = child_result(run_child(folder, str(tmp / f"{size}.db")))
        result |= {
            "size": size,
            "written": written,
            "folder": str(folder),
            "ndjson_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1),
        }
        figures.append(result)
    return figures


def main() -> None:
    """Generate each size, ingest it in a child process, print the figures and the RSS ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.prefix)
        return
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        figures = measure(args.sizes, Path(tmp))
    for result in figures:
        print(
            f"bulk ingest {result['written']:>7} resources ({result['ndjson_mb']:6.1f} MB NDJSON): "
            f"{result['per_second']:>5} resources/s, {result['seconds']:>6.1f} s, "
            f"peak RSS {result['peak_rss_mb']:6.1f} MB, "
            f"{result['quarantined']} quarantined, {result['tasks_created']} tasks"
        )
    if len(figures) >= 2:
        ratio = figures[-1]["peak_rss_mb"] / figures[0]["peak_rss_mb"]
        size_ratio = figures[-1]["resources"] / figures[0]["resources"]
        print(f"peak RSS ratio {ratio:.2f} for {size_ratio:.1f}x the input (1.0 = flat)")


if __name__ == "__main__":
    main()
