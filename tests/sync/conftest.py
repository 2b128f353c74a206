"""Fixtures shared by the sync tests: the default rules and profiles, loaded once a module."""

from __future__ import annotations

import pytest

from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.validate.profiles import ProfileSet
from tests.utils import ROOT


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    """The default mapping rules."""
    return RuleSet.load(ROOT / "mappings")


@pytest.fixture(scope="module")
def profile_set() -> ProfileSet:
    """The bridge's profiles."""
    return ProfileSet.load(ROOT / "profiles")
