"""Build FHIR clients from source settings: the one place config meets `fhir/`."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from fhir_bridge import config
from fhir_bridge.config import SourceConfig
from fhir_bridge.errors import ConfigError
from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.fhir.auth import BasicAuth, SmartBackendAuth, bearer_auth
from fhir_bridge.fhir.capabilities import CompatibilityReport, check_server
from fhir_bridge.fhir.client import RequestObserver
from fhir_bridge.fhir.limits import CircuitBreaker, CircuitState, SourceGuard, TokenBucket

CHECK_RETRY = RetryPolicy(attempts=2, max_wait=5.0)  # a check should answer soon, not in minutes


def auth_for(
    source: SourceConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.Auth | None:
    """The ``httpx.Auth`` for `source`'s auth settings (``None`` for ``type: none``).

    :raises ConfigError: a secret is missing or unusable (the message never contains it).
    """
    auth = source.auth
    try:
        if isinstance(auth, config.BearerAuth):
            return bearer_auth(auth.resolve_token())
        if isinstance(auth, config.BasicAuth):
            return BasicAuth(auth.username, auth.resolve_password())
        if isinstance(auth, config.SmartAuth):
            return SmartBackendAuth(
                client_id=auth.client_id,
                private_key=auth.resolve_private_key(),
                fhir_base_url=source.url,
                algorithm=auth.algorithm,
                scope=auth.scope,
                key_id=auth.key_id,
                token_url=str(auth.token_url) if auth.token_url is not None else None,
                timeout=source.timeout,
                transport=transport,
            )
    except ValueError as exc:  # our auth classes' messages name the problem, not the secret
        raise ConfigError(f"source {source.name}: auth: {exc}") from None
    return None


def guard_for(
    source: SourceConfig, *, on_change: Callable[[str, CircuitState], None] | None = None
) -> SourceGuard:
    """A fresh rate limit and circuit breaker for `source`, from its settings."""
    settings = source.circuit_breaker
    breaker = CircuitBreaker(
        source.name,
        failure_threshold=settings.failure_threshold,
        reset_timeout=settings.reset_timeout,
        on_change=on_change,
    )
    bucket = (
        TokenBucket(source.rate_per_second, source.burst)
        if source.rate_per_second is not None
        else None
    )
    return SourceGuard(breaker=breaker, bucket=bucket)


def client_for(
    source: SourceConfig,
    *,
    retry: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    observer: RequestObserver | None = None,
    guard: SourceGuard | None = None,
) -> FhirClient:
    """An (unopened) FHIR client for `source`, with its auth, limits and retry policy.

    :param retry: overrides the policy from the settings (``sources check`` retries less).
    :param transport: replaces the network (FHIR and token calls), for tests.
    :param observer: told about every request and retry (the bridge's metrics).
    :param guard: the source's shared rate limit and circuit breaker (none: unguarded).
    """
    return FhirClient(
        source.url,
        auth=auth_for(source, transport=transport),
        timeout=source.timeout,
        max_connections=source.max_connections,
        retry=retry
        or RetryPolicy(
            attempts=source.retry_attempts,
            max_wait=source.retry_max_wait,
            max_total_wait=source.retry_max_total_wait,
        ),
        transport=transport,
        source=source.name,
        observer=observer,
        limiter=guard.bucket if guard is not None else None,
        breaker=guard.breaker if guard is not None else None,
    )


async def check_source(
    source: SourceConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> CompatibilityReport:
    """Probe `source`: CapabilityStatement, SMART configuration and one authenticated search."""
    return await check_server(
        client_for(source, retry=CHECK_RETRY, transport=transport),
        source.url,
        source.resource_types,
        source=source.name,
        timeout=source.timeout,
        transport=transport,
    )
