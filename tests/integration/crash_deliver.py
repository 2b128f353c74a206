"""Helper process for test_writeback_crash: build a Bridge from a config file and run one
outbox scan (`deliver_once`), printing its stats as JSON.

Run as `python -m tests.integration.crash_deliver CONFIG` from the repository root. The clock
is pinned to tests.utils.NOW, as the parent's bridge was when it queued the entries. With
FHIR_BRIDGE_TEST_KILL_AFTER_CREATE set, delivery.py kills this process right after the
server created a mirror Task and before the bridge recorded it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from fhir_bridge.config import load_settings
from fhir_bridge.runtime import Bridge
from tests.utils import NOW


def main(config: str) -> None:
    """One outbox scan of the bridge configured by `config`."""
    bridge = Bridge(load_settings(config), clock=lambda: NOW)
    try:
        stats = asyncio.run(bridge.deliver_once())
    finally:
        bridge.close()
    sys.stdout.write(json.dumps(dataclasses.asdict(stats)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
