"""API fixtures: a bridge holding the sample data of one source, and a client for its app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.runtime import Bridge
from tests.api.sample import sample_bridge


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """A bridge whose store holds the whole sample of source "ehr", as a first sync at NOW."""
    b = sample_bridge("ehr")
    yield b
    b.close()


@pytest.fixture
def api(bridge: Bridge) -> TestClient:
    """A test client for the bridge's app."""
    return TestClient(create_app(bridge))
