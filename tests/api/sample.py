"""A bridge whose store holds the packaged sample, loaded under one or more source names."""

from __future__ import annotations

from fhir_bridge.config import Settings, SourceConfig
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore, Store
from fhir_bridge.sync.engine import dependency_order
from tests.utils import NOW, ROOT, sample


def sample_bridge(*names: str, store: Store | None = None, **settings: object) -> Bridge:
    """A bridge at NOW with the whole sample ingested as a first sync of each source in `names`
    (into `store`, an in-memory SQLite store by default)."""
    sources = tuple(
        SourceConfig(name=name, base_url=f"http://127.0.0.1:9/{name}") for name in names
    )
    settings.setdefault("auth", {"enabled": False})  # tests/api/test_authz.py turns it on
    config = Settings(
        sources=sources, mappings_dir=ROOT / "mappings", profiles_dir=ROOT / "profiles", **settings
    )
    bridge = Bridge(
        config, store=store if store is not None else SqliteStore(":memory:"), clock=lambda: NOW
    )
    for source in sources:
        for rtype in dependency_order(source.resource_types, bridge.rules):
            bridge.ingestor.ingest(source.name, sample(rtype), rtype, initial=True)
    return bridge
