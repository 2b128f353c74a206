"""Authentication for FHIR servers, as ``httpx.Auth`` objects handed to :class:`FhirClient`.

Only static bearer tokens exist today. SMART Backend Services (a signed JWT exchanged for a
short-lived token, refreshed on expiry or on a 401) will be another ``httpx.Auth`` subclass in this
module, so :class:`~fhir_bridge.fhir.client.FhirClient` will not need to change.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import httpx

#: Pass as ``auth=`` for servers that need no credentials (reads better than a bare ``None``).
NO_AUTH: Final = None


class BearerAuth(httpx.Auth):
    """Send a fixed ``Authorization: Bearer <token>`` header; the token never shows in ``repr``."""

    def __init__(self, token: str) -> None:
        if not token or token != token.strip():
            raise ValueError("bearer token must be a non-empty string without surrounding spaces")
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the bearer header to ``request``."""
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token='***')"


def bearer_auth(token: str) -> httpx.Auth:
    """Authenticate every request with a static bearer token.

    :param token: the access token, without the ``Bearer`` prefix.
    :raises ValueError: if the token is empty or has surrounding whitespace.
    """
    return BearerAuth(token)
