"""Build FHIR clients from source settings: the one place config meets `fhir/`."""

from __future__ import annotations

from fhir_bridge.config import BearerAuth, SourceConfig
from fhir_bridge.fhir import FhirClient, RetryPolicy, bearer_auth


def client_for(source: SourceConfig) -> FhirClient:
    """An (unopened) FHIR client for `source`, with its auth, limits and retry policy."""
    auth = bearer_auth(source.auth.resolve_token()) if isinstance(source.auth, BearerAuth) else None
    return FhirClient(
        source.url,
        auth=auth,
        timeout=source.timeout,
        max_connections=source.max_connections,
        retry=RetryPolicy(attempts=source.retry_attempts, max_wait=source.retry_max_wait),
        source=source.name,
    )
