"""A real FHIR R4 server (SEKMET) and sample data, for integration tests and the demo."""

from __future__ import annotations

from .seed import (
    TYPE_ORDER,
    load_ndjson,
    sample_data_dir,
    sample_files,
    seed,
    seed_sample,
)
from .sekmet import (
    SEKMET_REQUIREMENT,
    SEKMET_VERSION,
    Sekmet,
    default_venv,
    ensure_installed,
    free_port,
)

__all__ = [
    "SEKMET_REQUIREMENT",
    "SEKMET_VERSION",
    "TYPE_ORDER",
    "Sekmet",
    "default_venv",
    "ensure_installed",
    "free_port",
    "load_ndjson",
    "sample_data_dir",
    "sample_files",
    "seed",
    "seed_sample",
]
