"""Shared fixtures: the real SEKMET servers (tests/sandbox_fixtures.py) and small helpers."""

from tests.sandbox_fixtures import sekmet_factory, sekmet_url  # noqa: F401
