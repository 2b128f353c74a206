"""Shared fixtures: the real SEKMET servers (tests/sandbox_fixtures.py) and small helpers."""

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from fhir_bridge import gctune
from fhir_bridge.store.sqlite import SqliteStore
from tests.sandbox_fixtures import sekmet_factory, sekmet_url  # noqa: F401

# The CLI commands the tests invoke in this process would freeze the test process's heap
# (gctune.settle) again and again; tests/test_gctune.py runs it in child processes instead.
os.environ.setdefault(gctune.ENV, "0")


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    """An empty in-memory store, closed after the test."""
    db = SqliteStore(":memory:")
    yield db
    db.close()


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Undo any `configure_logging` a test (or a CLI it invokes) made, so tests that check
    log output do not depend on which tests ran before them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx_level = logging.getLogger("httpx").level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)
