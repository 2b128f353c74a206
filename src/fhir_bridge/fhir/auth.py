"""Authentication for FHIR servers, as ``httpx.Auth`` objects handed to :class:`FhirClient`.

- :class:`BearerAuth`: a static bearer token.
- :class:`BasicAuth`: HTTP Basic.
- :class:`SmartBackendAuth`: SMART Backend Services (client_credentials with a signed JWT,
  ``private_key_jwt``); the access token is cached, refreshed before it expires and once more
  when the FHIR server answers 401.

None of them shows a credential in ``repr``, in a log line or in an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Final, Literal

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fhir_bridge.errors import FatalFhirError, MalformedResponse, TemporaryFhirError
from fhir_bridge.fhir.client import tls_context

log = structlog.get_logger(__name__)

#: Pass as ``auth=`` for servers that need no credentials (reads better than a bare ``None``).
NO_AUTH: Final = None

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SmartAlgorithm = Literal["RS384", "ES384"]

# SMART allows exp up to 5 minutes ahead; a server whose clock is a little behind ours would
# reject exactly 300 s, so stay well inside.
ASSERTION_LIFETIME = 240
REFRESH_MARGIN = 60.0  # use a token until this many seconds before it expires
DEFAULT_TOKEN_LIFETIME = 300  # when a server leaves out expires_in (SHOULD, not SHALL)
_TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_ERROR_CHARS = 300
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_HINTS = {
    "invalid_client": "wrong client_id, or the server does not hold the public key of this "
    "private key (check algorithm and kid too)",
    "invalid_scope": "the client is not allowed the requested scope",
    "unauthorized_client": "the client may not use client_credentials",
    "invalid_grant": "the server rejected the client assertion (clock skew? reused jti?)",
}
_DEFAULT_HINT = "check client_id, private key and scope"


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


class BasicAuth(httpx.Auth):
    """HTTP Basic authentication; ``repr`` shows the user name, never the password."""

    def __init__(self, username: str, password: str) -> None:
        if not username or ":" in username:
            raise ValueError("basic auth user name must be non-empty and must not contain ':'")
        if not password:
            raise ValueError("basic auth password must not be empty")
        self._username = username
        credentials = f"{username}:{password}".encode()
        self._header = "Basic " + base64.b64encode(credentials).decode("ascii")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the basic header to ``request``."""
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return f"BasicAuth(username={self._username!r}, password='***')"


def load_signing_key(
    pem: str, algorithm: SmartAlgorithm
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Parse a PEM private key and check that it fits ``algorithm``.

    :raises ValueError: not an unencrypted PEM private key, or the wrong kind for the algorithm.
    """
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        # The library's text could quote the input; say only what is wrong.
        raise ValueError("SMART private key is not an unencrypted PEM private key") from None
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("SMART algorithm RS384 needs an RSA private key")
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise ValueError("SMART algorithm ES384 needs an EC private key on curve P-384")
    return key


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: trade a signed JWT for an access token and send that as Bearer.

    Async clients only. The token endpoint comes from ``token_url`` or else from
    ``{fhir_base_url}/.well-known/smart-configuration`` (falling back to the CapabilityStatement's
    ``oauth-uris`` extension, which servers implementing SMART v1 publish instead).

    :param client_id: the registered client id (``iss`` and ``sub`` of the assertion).
    :param private_key: the PEM private key the assertion is signed with.
    :param fhir_base_url: the FHIR base, for discovery; needed unless ``token_url`` is given.
    :param algorithm: ``RS384`` (RSA key) or ``ES384`` (EC P-384 key).
    :param scope: the scopes to request, space separated.
    :param key_id: the ``kid`` header, if the server needs it to pick the key.
    :param clock: seconds since the epoch; tests pass a fake.
    :param timeout: seconds for each call to the discovery and token endpoints.
    :param transport: replaces the network for the token calls, for tests.
    :raises ValueError: a bad key, an empty client id or neither URL.
    """

    def __init__(
        self,
        *,
        client_id: str,
        private_key: str,
        fhir_base_url: str | None = None,
        algorithm: SmartAlgorithm = "RS384",
        scope: str = "system/*.read",
        key_id: str | None = None,
        token_url: str | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("SMART client_id must not be empty")
        if fhir_base_url is None and token_url is None:
            raise ValueError("SmartBackendAuth needs fhir_base_url (for discovery) or token_url")
        self._key = load_signing_key(private_key, algorithm)
        self.client_id = client_id
        self.algorithm = algorithm
        self.scope = scope
        self.key_id = key_id
        self.token_url = token_url
        self._base = fhir_base_url.rstrip("/") if fhir_base_url else None
        self._clock = clock
        self._timeout = timeout
        self._transport = transport
        self._token: str | None = None
        self._valid_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"SmartBackendAuth(client_id={self.client_id!r}, algorithm={self.algorithm!r}, "
            f"token_url={self.token_url!r})"
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Refuse synchronous clients: fetching a token would block an event loop."""
        raise RuntimeError("SmartBackendAuth works with httpx.AsyncClient only")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Send ``request`` with a token; on a 401, get a fresh token and send it once more."""
        token = await self.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # The server may have revoked the token or restarted with new signing keys. This retry
        # happens inside the auth flow, so it does not count against the client's retry policy.
        log.info("smart_token_rejected", client_id=self.client_id)
        self.invalidate(token)
        request.headers["Authorization"] = f"Bearer {await self.access_token()}"
        yield request

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given)."""
        if token is None or token == self._token:
            self._token, self._valid_until = None, 0.0

    async def access_token(self) -> str:
        """The cached access token, or a new one when it is missing or about to expire.

        :raises FatalFhirError: the token endpoint refused us (wrong key, client or scope).
        :raises TemporaryFhirError: the token endpoint is down or unreachable.
        """
        async with self._get_lock():  # concurrent requests wait for one token fetch
            if self._token is None or self._clock() >= self._valid_until:
                await self._fetch_token()
            assert self._token is not None  # noqa: S101 - set by _fetch_token or it raised
            return self._token

    def _get_lock(self) -> asyncio.Lock:
        # A lock is bound to the event loop it first waits in; `asyncio.run` per sync needs anew.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def client_assertion(self, token_url: str) -> str:
        """A freshly signed client assertion JWT for ``token_url`` (a secret: never log it)."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),  # servers reject a jti they have seen
        }
        headers = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    async def _fetch_token(self) -> None:
        async with httpx.AsyncClient(
            timeout=self._timeout,
            transport=self._transport,
            follow_redirects=False,
            verify=tls_context(),
        ) as http:
            token_url = self.token_url or await self._discover(http)
            self.token_url = token_url
            requested = self._clock()
            assertion = self.client_assertion(token_url)
            form = {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            response = await _call(http, "POST", token_url, "token request", data=form)
        if response.status_code != 200:
            raise self._token_error(response, token_url, assertion)
        token, lifetime = _parse_token(response, token_url)
        self._token = token
        # Short-lived tokens: keep them for half their life rather than not at all.
        self._valid_until = requested + lifetime - min(REFRESH_MARGIN, lifetime / 2)
        log.info(
            "smart_token_fetched",
            client_id=self.client_id,
            token_host=httpx.URL(token_url).host,
            expires_in=lifetime,
        )

    def _token_error(
        self, response: httpx.Response, token_url: str, assertion: str
    ) -> FatalFhirError | TemporaryFhirError:
        status = response.status_code
        path = httpx.URL(token_url).path
        where = f"SMART token request for client {self.client_id!r} at {token_url}"
        if status in _TEMPORARY_STATUSES or status >= 500:
            return TemporaryFhirError(
                f"{where}: HTTP {status}",
                status=status,
                retry_after=_retry_after(response),
                url=path,
            )
        error, description = _oauth_error(response)
        hint = _HINTS.get(error or "", _DEFAULT_HINT)
        if status not in (400, 401, 403):
            hint = "is token_url right?"
        detail = _redact(": ".join(p for p in (error, description) if p), assertion, self._token)
        return FatalFhirError(
            f"{where} was refused (HTTP {status}; {hint})",
            status=status,
            outcome=detail or None,
            url=path,
        )

    async def _discover(self, http: httpx.AsyncClient) -> str:
        base = self._base
        assert base is not None  # noqa: S101 - checked in __init__
        response = await _call(http, "GET", f"{base}/.well-known/smart-configuration", "discovery")
        _raise_if_temporary(response, "discovery")
        found = _token_endpoint_from_smart(_json(response)) if response.status_code == 200 else None
        if found is None:  # a SMART v1 server names it in its CapabilityStatement instead
            response = await _call(http, "GET", f"{base}/metadata", "discovery")
            _raise_if_temporary(response, "discovery")
            found = _token_endpoint_from_metadata(_json(response))
        if found is None:
            raise FatalFhirError(
                f"SMART discovery: {base} publishes no token endpoint in "
                "/.well-known/smart-configuration nor in its CapabilityStatement; set token_url",
                url=httpx.URL(base).path,
            )
        log.info("smart_token_endpoint_discovered", token_host=httpx.URL(found).host)
        return found


async def _call(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    what: str,
    *,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    """One request to a discovery or token endpoint; network errors and 5xx are temporary."""
    try:
        response = await http.request(
            method, url, data=data, headers={"Accept": "application/json"}
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # Name the class only: the text of some httpx errors quotes the request.
        error = TemporaryFhirError if isinstance(exc, httpx.TransportError) else FatalFhirError
        raise error(f"SMART {what} at {url}: {type(exc).__name__}", url=url) from None
    return response


def _raise_if_temporary(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status in _TEMPORARY_STATUSES or status >= 500:
        raise TemporaryFhirError(
            f"SMART {what} at {response.request.url}: HTTP {status}",
            status=status,
            retry_after=_retry_after(response),
            url=response.request.url.path,
        )


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _token_endpoint_from_smart(body: Any) -> str | None:
    endpoint = body.get("token_endpoint") if isinstance(body, dict) else None
    return endpoint if isinstance(endpoint, str) and endpoint else None


def _token_endpoint_from_metadata(body: Any) -> str | None:
    """The ``token`` URI of the oauth-uris extension in ``rest[].security``."""
    rests = body.get("rest") if isinstance(body, dict) else None
    for rest in rests if isinstance(rests, list) else []:
        security = rest.get("security") if isinstance(rest, dict) else None
        exts = security.get("extension") if isinstance(security, dict) else None
        for ext in exts if isinstance(exts, list) else []:
            if not isinstance(ext, dict) or ext.get("url") != _OAUTH_URIS:
                continue
            for sub in ext.get("extension") or []:
                if isinstance(sub, dict) and sub.get("url") == "token":
                    uri = sub.get("valueUri")
                    if isinstance(uri, str) and uri:
                        return uri
    return None


def _oauth_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """``error`` and ``error_description`` of an OAuth error body (RFC 6749 5.2), if any."""
    body = _json(response)
    if not isinstance(body, dict):
        return None, None
    error, description = body.get("error"), body.get("error_description")
    return (
        error if isinstance(error, str) and error else None,
        description if isinstance(description, str) and description else None,
    )


def _redact(text: str, *secrets_: str | None) -> str:
    """``text`` without the secrets (or any long piece of a JWT), then shortened.

    Servers sometimes quote what they received; redact before cutting, or a cut could leave a
    prefix of a secret behind.
    """
    for secret in secrets_:
        if not secret:
            continue
        text = text.replace(secret, "***")
        for piece in secret.split("."):
            if len(piece) >= 8:
                text = text.replace(piece, "***")
    return text[:_MAX_ERROR_CHARS]


def _parse_token(response: httpx.Response, token_url: str) -> tuple[str, float]:
    """Access token and lifetime in seconds from a token response."""
    body = _json(response)
    path = httpx.URL(token_url).path
    if not isinstance(body, dict):
        raise MalformedResponse(
            f"SMART token response from {token_url} is not a JSON object", status=200, url=path
        )
    token, token_type = body.get("access_token"), body.get("token_type", "bearer")
    if not isinstance(token, str) or not token:
        raise MalformedResponse(
            f"SMART token response from {token_url} has no access_token", status=200, url=path
        )
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise MalformedResponse(
            f"SMART token response from {token_url} is not a bearer token", status=200, url=path
        )
    expires_in = body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    try:
        lifetime = float(expires_in)  # some servers send "3600"
    except (TypeError, ValueError):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, max(lifetime, 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
