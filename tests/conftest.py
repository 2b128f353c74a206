"""Shared fixtures: the real SEKMET servers (tests/sandbox_fixtures.py) and small helpers."""

from collections.abc import Iterator

import pytest

from fhir_bridge.store.sqlite import SqliteStore
from tests.sandbox_fixtures import sekmet_factory, sekmet_url  # noqa: F401


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    """An empty in-memory store, closed after the test."""
    db = SqliteStore(":memory:")
    yield db
    db.close()
