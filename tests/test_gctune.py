"""fhir_bridge.gctune: the collector settings of long-running processes (in child processes:
they change the whole interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fhir_bridge import gctune

CODE = """
import gc, json
from fhir_bridge import gctune
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
settled = gctune.settle()
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"settled": settled, "before": before, "after": after}))
"""


def _child(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != gctune.ENV}
    if setting is not None:
        env[gctune.ENV] = setting
    done = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_settle_freezes_the_heap_and_raises_the_young_threshold():
    """What start-up built is frozen; young collections come every YOUNG allocations; the
    older generations keep Python's settings."""
    got = _child(None)
    assert got["settled"] is True
    assert got["before"]["frozen"] == 0 and got["after"]["frozen"] > 1000
    assert got["after"]["threshold"][0] == gctune.YOUNG
    assert got["after"]["threshold"][1:] == got["before"]["threshold"][1:]


@pytest.mark.parametrize("setting", ["0", "off"])
def test_switched_off_by_the_environment(setting):
    """FHIR_BRIDGE_GC_TUNING=0 leaves the collector alone."""
    got = _child(setting)
    assert got["settled"] is False
    assert got["after"] == got["before"]
