"""The profile walk's shortcuts (count bounds and bound codes settled before the full checks)
report exactly what the full checks report, on the sample, the HL7 examples and broken copies."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.validate import profiles
from fhir_bridge.validate.profiles import ProfileSet
from tests.utils import ROOT


def _resources() -> list[dict[str, Any]]:
    found = [
        json.loads(line)
        for path in sorted(sample_data_dir().glob("*.ndjson"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    found += [json.loads(p.read_text()) for p in sorted((ROOT / "tests/data/hl7").rglob("*.json"))]
    return [r for r in found if isinstance(r, dict)]


def _broken(resource: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    """A copy with three random elements replaced, emptied, removed or doubled."""
    broken = copy.deepcopy(resource)
    for _ in range(3):
        parent: Any = broken
        key: Any = None
        node: Any = broken
        while isinstance(node, dict | list) and node:
            key = rnd.choice(list(node)) if isinstance(node, dict) else rnd.randrange(len(node))
            parent, node = node, node[key]
            if rnd.random() < 0.3:
                break
        if key is None:
            continue
        roll = rnd.random()
        if roll < 0.3:
            parent[key] = "bogus"
        elif roll < 0.5:
            parent[key] = None
        elif roll < 0.7 and isinstance(parent, dict):
            del parent[key]
        elif roll < 0.85:
            parent[key] = [node, node]
        else:
            parent[key] = {"x": 1}
    return broken


def _without_shortcuts(tree: profiles._Tree) -> None:
    """Make every node of a plan run its full checks."""
    tree.typed = True  # forces the full count checks
    tree.codes = tree.leaf = None  # forces the full value checks
    for sub in tree.subs:
        _without_shortcuts(sub)


@pytest.fixture(scope="module")
def profile_sets() -> tuple[ProfileSet, ProfileSet, tuple[str, ...]]:
    """The bridge profiles twice: as shipped, and with every shortcut of the walk off."""
    fast = ProfileSet.load(ROOT / "profiles")
    full = ProfileSet.load(ROOT / "profiles")
    names = tuple(p.url for p in fast.profiles)
    for rtype in profiles.CORE_BINDINGS:
        for core, wanted in ((True, names), (True, ()), (False, names)):
            full._check({"resourceType": rtype}, wanted, core)  # plants the plans
    for plan in full._plans.values():
        _without_shortcuts(plan)
    return fast, full, names


def test_shortcuts_report_what_the_full_checks_report(profile_sets):
    """Same issues, same order, for valid and broken resources, core and profile checks."""
    fast, full, names = profile_sets
    rnd = random.Random(7)
    resources = _resources()
    cases = resources + [_broken(r, rnd) for r in resources for _ in range(2)]
    flagged = 0
    for resource in cases:
        expected = full.check_all(resource, names)
        assert fast.check_all(resource, names) == expected
        assert fast.check_core(resource) == full.check_core(resource)
        assert fast.check(resource, names) == full.check(resource, names)
        flagged += bool(expected)
    assert flagged > len(resources) // 2  # the broken copies exercise the checks
