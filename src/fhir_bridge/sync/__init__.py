"""Sync room: pull resources from FHIR servers into the store, incrementally."""

from fhir_bridge.sync.engine import SourceReport, TypeReport, sync_source, sync_type
from fhir_bridge.sync.ingest import Ingestor, IngestResult, content_hash

__all__ = [
    "IngestResult",
    "Ingestor",
    "SourceReport",
    "TypeReport",
    "content_hash",
    "sync_source",
    "sync_type",
]
