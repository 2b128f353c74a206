"""Who is calling and what they may do: bearer JWTs from configured issuers, hashed API keys,
and the role table every route is checked against.

The table (`POLICY`) is data: a route without an entry is refused to everyone (403), and
`tests/api/test_authz.py` fails for it, so a new route cannot ship without a decision.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import HTTPException, Request
from jwt import PyJWK, PyJWKClient, PyJWKSet

from fhir_bridge.config import AuthSettings, IssuerConfig
from fhir_bridge.errors import ConfigError
from fhir_bridge.logging import get_logger

log = get_logger("auth")

COORDINATOR = "coordinator"
ENGINEER = "integration-engineer"
ADMIN = "admin"
ROLES = (COORDINATOR, ENGINEER, ADMIN)
API_KEY_HEADER = "X-API-Key"

PUBLIC: frozenset[str] = frozenset()  # no credentials needed
OWN_SECRET = frozenset({"shared-secret"})  # no bearer/API key: the route checks its own secret
_READ_TASKS = frozenset({COORDINATOR, ENGINEER, ADMIN})
_WORK_TASKS = frozenset({COORDINATOR, ADMIN})
_PATIENTS = frozenset({COORDINATOR, ADMIN})
_OPERATE = frozenset({ENGINEER, ADMIN})
_ADMIN = frozenset({ADMIN})

# (method, route path template) -> roles allowed; PUBLIC needs no credentials.
POLICY: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,  # probes: no dependencies, no data
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,  # the API's shape is not a secret
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # The web UI's files hold no data: it calls the API below with the user's credentials.
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{asset}"): PUBLIC,
    ("GET", "/me"): _READ_TASKS,
    # EHR rest-hook notifications: X-Bridge-Secret, checked by the route (routes/subscriptions)
    ("POST", "/subscriptions/{source}"): OWN_SECRET,
    ("PUT", "/subscriptions/{source}"): OWN_SECRET,
    ("POST", "/subscriptions/{source}/{resource_type}/{resource_id}"): OWN_SECRET,
    ("PUT", "/subscriptions/{source}/{resource_type}/{resource_id}"): OWN_SECRET,
    ("GET", "/subscriptions"): _OPERATE,
    ("GET", "/metrics"): _OPERATE,
    ("GET", "/queues"): _READ_TASKS,
    ("GET", "/queues/{queue}/tasks"): _READ_TASKS,
    ("GET", "/tasks"): _READ_TASKS,
    ("GET", "/tasks/{task_id}"): _READ_TASKS,
    ("POST", "/tasks/bulk-assign"): _WORK_TASKS,
    ("POST", "/tasks/{task_id}/claim"): _WORK_TASKS,
    ("POST", "/tasks/{task_id}/release"): _WORK_TASKS,
    ("POST", "/tasks/{task_id}/assign"): _WORK_TASKS,
    ("POST", "/tasks/{task_id}/comments"): _WORK_TASKS,
    ("POST", "/tasks/{task_id}/status"): _WORK_TASKS,
    ("GET", "/patients"): _PATIENTS,
    ("GET", "/patients/{source}/{patient_id}/history"): _PATIENTS,
    ("GET", "/patients/links"): _ADMIN,
    ("POST", "/patients/links"): _ADMIN,
    ("DELETE", "/patients/links"): _ADMIN,
    ("GET", "/sources"): _OPERATE,
    ("GET", "/quarantine"): _OPERATE,
    ("GET", "/outbox"): _OPERATE,
    ("GET", "/outbox/{entry_id}"): _OPERATE,
    ("POST", "/outbox/{entry_id}/retry"): _ADMIN,
    ("POST", "/outbox/{entry_id}/discard"): _ADMIN,
    ("GET", "/audit"): _ADMIN,
    # Family contacts and coordinators' sharing flags (routes/family.py, docs/family.md)
    ("GET", "/family/contacts"): _PATIENTS,
    ("POST", "/family/sharing"): _WORK_TASKS,
    # The daily huddle and outcome figures: task data, as the queues are (routes/huddle.py,
    # routes/outcomes.py); no patient data beyond task ids and patient references.
    ("GET", "/huddle"): _READ_TASKS,
    ("GET", "/outcomes"): _READ_TASKS,
    ("GET", "/outcomes.csv"): _READ_TASKS,
}


def policy_for(method: str, path: str) -> frozenset[str] | None:
    """The roles allowed on a route (HEAD as GET); None when the table has no entry."""
    return POLICY.get(("GET" if method == "HEAD" else method, path))


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token's subject or an API key's name, with roles."""

    subject: str
    roles: frozenset[str]
    via: str  # "jwt", "api-key", "anonymous" (public route) or "disabled" (auth off)
    queues: frozenset[str] | None = None  # coordinators restricted to these queues

    @property
    def is_admin(self) -> bool:
        """Admins act on behalf of anyone, in every queue."""
        return ADMIN in self.roles

    def may_work(self, queue: str) -> bool:
        """True when the principal's queue restriction (if any) allows `queue`."""
        return self.is_admin or self.queues is None or queue in self.queues


ANONYMOUS = Principal("anonymous", frozenset(), "anonymous")
UNRESTRICTED = Principal("anonymous", frozenset(ROLES), "disabled")


def unauthorized(reason: str, error: str = "invalid_token") -> HTTPException:
    """401 with the `WWW-Authenticate` challenge RFC 6750 asks for."""
    challenge = f'Bearer realm="fhir_bridge", error="{error}", error_description="{reason}"'
    if error == "missing":
        challenge = 'Bearer realm="fhir_bridge"'
    return HTTPException(401, reason, headers={"WWW-Authenticate": challenge})


def forbidden(reason: str) -> HTTPException:
    """403: a known caller without the right."""
    return HTTPException(403, reason)


# -- API keys ------------------------------------------------------------------------------

# Two stored forms. `sha256$<hex>` for the keys `new_key` makes: 256 random bits cannot be
# guessed from a fast hash, and a fast hash keeps an unknown key cheap to refuse (a slow one
# per request would let anyone burn the API's CPU with made-up keys). `pbkdf2_sha256$...` for
# a key a person chose, which may be guessable: each refused key then costs one PBKDF2 run
# per such entry, so prefer generated keys.
_SHA256 = "sha256"
_PBKDF2 = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256


def hash_key(key: str, iterations: int | None = None, salt: bytes | None = None) -> str:
    """The stored form of an API key: `sha256$<hex>` without `iterations`, else
    `pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>`."""
    if iterations is None:
        return f"{_SHA256}${hashlib.sha256(key.encode()).hexdigest()}"
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt, iterations)
    return f"{_PBKDF2}${iterations}${salt.hex()}${digest.hex()}"


def new_key() -> str:
    """A fresh random API key (256 bits) to hand to a service account."""
    return "fbk_" + secrets.token_urlsafe(32)


def verify_key(key: str, stored: str) -> bool:
    """True when `key` hashes to `stored` (compared in constant time)."""
    try:
        scheme, _, rest = stored.partition("$")
        if scheme == _SHA256:
            found = hashlib.sha256(key.encode()).digest()
            return hmac.compare_digest(found, bytes.fromhex(rest))
        if scheme != _PBKDF2:
            return False
        rounds, salt, digest = rest.split("$")
        found = hashlib.pbkdf2_hmac("sha256", key.encode(), bytes.fromhex(salt), int(rounds))
        return hmac.compare_digest(found, bytes.fromhex(digest))
    except ValueError:
        return False


def is_slow_hash(stored: str) -> bool:
    """True for a PBKDF2 entry (checked after every fast one)."""
    return stored.startswith(_PBKDF2 + "$")


# -- tokens --------------------------------------------------------------------------------


class _Issuer:
    """One trusted issuer and where its signing keys come from."""

    def __init__(self, config: IssuerConfig) -> None:
        self.config = config
        self._client: PyJWKClient | None = None
        self._keys: PyJWKSet | None = None
        if config.jwks_url is not None:
            self._client = PyJWKClient(str(config.jwks_url), lifespan=300, timeout=10)
        elif config.jwks_file is not None:
            try:
                self._keys = PyJWKSet.from_json(config.jwks_file.read_text(encoding="utf-8"))
            except (OSError, jwt.PyJWTError, ValueError) as exc:
                raise ConfigError(f"auth: cannot read JWKS {config.jwks_file}: {exc}") from None

    @property
    def fetches(self) -> bool:
        """True when keys come from a URL (a lookup may wait on the network)."""
        return self._client is not None

    def key_for(self, token: str) -> PyJWK:
        """The JWK that signed `token` (by `kid`; the only key when the token names none)."""
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token)
        assert self._keys is not None  # noqa: S101  (one of the two is set in __init__)
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(self._keys.keys) == 1:
            return self._keys.keys[0]
        return self._keys[str(kid)]


def _claim_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


class Authenticator:
    """Turns a request's credentials into a `Principal`, or raises 401."""

    def __init__(self, settings: AuthSettings) -> None:
        settings.check_configured()
        self.settings = settings
        self.issuers = {i.issuer: _Issuer(i) for i in settings.issuers} if settings.enabled else {}
        self._verified: dict[str, str] = {}  # sha256(key) -> key name, after one full check
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """False when the configuration turned authentication off (a local demo)."""
        return self.settings.enabled

    def principal(self, request: Request) -> Principal:
        """The caller of `request`.

        :raises HTTPException: 401 when credentials are missing, malformed, expired, signed by
            an unknown key or issued by an issuer not configured.
        """
        key = request.headers.get(API_KEY_HEADER)
        if key:
            return self._from_key(key)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("a bearer token or an X-API-Key is required", "missing")
        return self._from_token(token.strip())

    def may_block(self, request: Request) -> bool:
        """Whether `principal(request)` may wait: on a JWKS URL (PyJWKClient fetches it when
        its cache misses) or on the deliberately slow first check of an API key."""
        key = request.headers.get(API_KEY_HEADER)
        if key:
            fingerprint = hashlib.sha256(key.encode()).hexdigest()
            with self._lock:
                return fingerprint not in self._verified
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False  # refused at once
        try:
            claims = jwt.decode(token.strip(), options={"verify_signature": False})
        except jwt.PyJWTError:
            return False  # refused at once
        issuer = self.issuers.get(str(claims.get("iss")))
        return issuer is not None and issuer.fetches

    def _from_key(self, key: str) -> Principal:
        fingerprint = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            name = self._verified.get(fingerprint)
        if name is None:
            name = self._match_key(key)
            if name is None:
                raise unauthorized("unknown API key")
            with self._lock:
                self._verified[fingerprint] = name
        account = next(k for k in self.settings.api_keys if k.name == name)
        queues = frozenset(account.queues) if account.queues is not None else None
        return Principal(name, frozenset(account.roles), "api-key", queues)

    def _match_key(self, key: str) -> str | None:
        """The name of the configured key `key` is: every fast entry is compared (so timing
        does not tell which matched), slow PBKDF2 entries only when no fast one did."""
        entries = [(k.name, k.hash.get_secret_value()) for k in self.settings.api_keys]
        fast = [name for name, h in entries if not is_slow_hash(h) and verify_key(key, h)]
        if fast:
            return fast[0]
        return next((n for n, h in entries if is_slow_hash(h) and verify_key(key, h)), None)

    def _from_token(self, token: str) -> Principal:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise unauthorized("malformed token") from None
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise unauthorized("token from an issuer this bridge does not trust")
        config = issuer.config
        try:
            claims = jwt.decode(
                token,
                issuer.key_for(token),
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except (jwt.PyJWTError, KeyError) as exc:
            log.info("token_refused", issuer=config.issuer, reason=type(exc).__name__)
            raise unauthorized("token refused: bad signature, audience or claims") from None
        roles = frozenset(r for r in _claim_list(claims.get(config.roles_claim)) if r in ROLES)
        queues = None
        if config.queues_claim is not None and config.queues_claim in claims:
            queues = frozenset(_claim_list(claims[config.queues_claim]))
        return Principal(str(claims["sub"]), roles, "jwt", queues)
