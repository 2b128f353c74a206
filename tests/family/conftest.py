"""Family fixtures: the sample bridge of tests/api (one source "ehr", first sync at NOW)."""

from __future__ import annotations

from tests.api.conftest import api, bridge  # noqa: F401 (the same fixtures, shared)
