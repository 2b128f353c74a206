"""Garbage-collector settings for the bridge's long-running processes, from measurements.

A sync or ingest allocates hundreds of thousands of short-lived containers per page (decoded
JSON, the R4B models of the parse), nearly all freed by reference counting. With CPython's
defaults (a young collection every 700 allocations) a first sync of 10,218 resources ran
about 640 collections, four of them full ones walking the whole heap (every imported module,
R4B model class, compiled rule): 0.6 s of the 2 s its main process spent (bench sync10k,
`gc.callbacks`). The API server had the same full walks at ~100 ms each: its p99.

`settle()` does two things, once the process has built what it keeps for its lifetime:
`gc.freeze()` moves those objects out of the collector's sight (full collections no longer
walk them), and the young generation's threshold goes from 700 to `YOUNG` so collections
are rarer; at 10,000, 0.6 s -> 0.15 s on that sync. A young collection is counted in
container objects allocated and not yet freed, so each page of a sync (~15,000 containers of
decoded JSON, alive while it is ingested) set one off, which walked the whole page: 25 young
and 3 middle collections per 10k first load, ~0.2 s on a slow day. At 50,000 a page no
longer does: 1-4 young collections, 0.03-0.07 s. What garbage forms cycles waits longer
(at most that many objects: ~5 MB; the mapping engine makes none, see `mapping.engine._Scope`).
`FHIR_BRIDGE_GC_TUNING=0` leaves the collector as Python sets it.
"""

from __future__ import annotations

import gc
import os

YOUNG = 50_000
ENV = "FHIR_BRIDGE_GC_TUNING"


def settle() -> bool:
    """Collect, freeze what survives, and raise the young threshold; False when switched off.

    Call it after start-up (settings, rules, profiles, the store and the app are built),
    not per request or per run: a frozen object is never collected, even once unreachable.
    """
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(YOUNG, young), middle, old)
    return True
