"""Typed settings from `config/bridge.yaml`, overridable by `FHIR_BRIDGE_*` environment variables.

Precedence (highest first): environment (`FHIR_BRIDGE_API__PORT=9000`, nested keys joined by
`__`), then the YAML file, then defaults. Relative paths in the file are resolved against the
file's own folder, so the bridge behaves the same whatever the working directory.

A wrong file never ends in a traceback: `load_settings` raises `ConfigError` naming the file,
the key path and what was expected.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fhir_bridge.errors import ConfigError

DEFAULT_CONFIG = Path("config/bridge.yaml")
CONFIG_ENV = "FHIR_BRIDGE_CONFIG"

# The resource types a coordinator's work comes from (DESIGN.md, duty-to-FHIR table).
DEFAULT_RESOURCE_TYPES = (
    "Patient",
    "CarePlan",
    "Appointment",
    "MedicationStatement",
    "CoverageEligibilityRequest",
    "Coverage",
    "RelatedPerson",  # family contacts, and the Consents saying they may be told (issue 9)
    "Consent",
    "CoverageEligibilityResponse",  # payers' prior-authorization decisions, for families
)

_SECRET_KEYS = frozenset(
    {"token", "password", "secret", "client_secret", "private_key", "redis_url", "webhook"}
)  # "webhook": its url may carry a token in the query


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Strict):
    """No authentication (a sandbox or a server behind a trusted gateway)."""

    type: Literal["none"] = "none"


def _secret(inline: SecretStr | None, env: str | None, what: str) -> str:
    """A secret given inline or through an environment variable (exactly one is set)."""
    if inline is not None:
        return inline.get_secret_value()
    assert env is not None  # noqa: S101  (guaranteed by the model validators)
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"environment variable {env} ({what}) is not set")
    return value


def _exactly_one(a: object, b: object, names: str) -> None:
    if (a is None) == (b is None):
        raise ValueError(f"give exactly one of {names}")


class BearerAuth(_Strict):
    """A static bearer token, given inline or (better) through an environment variable."""

    type: Literal["bearer"]
    token: SecretStr | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> BearerAuth:
        _exactly_one(self.token, self.token_env, "'token' or 'token_env'")
        return self

    def resolve_token(self) -> str:
        """The token value, read from the environment when `token_env` is set."""
        return _secret(self.token, self.token_env, "bearer token")


class BasicAuth(_Strict):
    """HTTP Basic: a user name and a password (inline or, better, from the environment)."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        _exactly_one(self.password, self.password_env, "'password' or 'password_env'")
        return self

    def resolve_password(self) -> str:
        """The password, read from the environment when `password_env` is set."""
        return _secret(self.password, self.password_env, "basic auth password")


class SmartAuth(_Strict):
    """SMART Backend Services: client_credentials with a signed JWT (private_key_jwt).

    The token endpoint is read from `[base]/.well-known/smart-configuration` unless given.
    """

    type: Literal["smart"]
    client_id: str = Field(min_length=1)
    private_key_path: Path | None = None
    private_key_env: str | None = Field(default=None, description="env var holding the PEM key")
    algorithm: Literal["RS384", "ES384"] = "RS384"
    key_id: str | None = Field(default=None, description="`kid` header of the client assertion")
    scope: str = "system/*.read system/Task.write"
    token_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _one_key(self) -> SmartAuth:
        names = "'private_key_path' or 'private_key_env'"
        _exactly_one(self.private_key_path, self.private_key_env, names)
        return self

    def resolve_private_key(self) -> str:
        """The PEM private key, from the file or the environment variable."""
        if self.private_key_path is not None:
            try:
                return self.private_key_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read SMART private key {self.private_key_path}: {exc.strerror}"
                ) from None
        return _secret(None, self.private_key_env, "SMART private key")


AuthConfig = Annotated[NoAuth | BearerAuth | BasicAuth | SmartAuth, Field(discriminator="type")]


class CircuitBreakerConfig(_Strict):
    """When to stop sending requests to a source that keeps failing, and when to try again."""

    failure_threshold: int = Field(
        default=5, ge=1, description="consecutive temporary failures that open the breaker"
    )
    reset_timeout: float = Field(
        default=30.0, ge=0, description="seconds open before one probe request is let through"
    )


# What the bridge may write to a source when no `write_policy.allowed_types` is given: its own
# Task mirror, the Provenance of each write, Communication, and the five coordinator types.
DEFAULT_WRITE_TYPES = (
    "Task",
    "Provenance",
    "Communication",
    "CarePlan",
    "Appointment",
    "MedicationStatement",
    "CoverageEligibilityRequest",
    "Coverage",
)


class WritePolicyConfig(_Strict):
    """What the bridge may write to one source; a write outside it is refused before any call.

    `allowed_fields` and `allowed_values` restrict only the types and paths they name.
    """

    mode: Literal["live", "dry-run"] = Field(
        default="live", description="dry-run: log what would be written, write nothing"
    )
    allowed_types: tuple[str, ...] = DEFAULT_WRITE_TYPES
    allowed_fields: dict[str, tuple[str, ...]] | None = Field(
        default=None,
        description="per resource type, the element paths it may write (a.b); absent: any",
    )
    allowed_values: dict[str, tuple[str, ...]] | None = Field(
        default=None,
        description="per `Type.path`, the only values it may be set to",
    )

    @field_validator("allowed_types")
    @classmethod
    def _types_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from fhir_bridge.validate.parse import is_known_type

        unknown = [t for t in value if not is_known_type(t)]
        if unknown:
            raise ValueError(f"not FHIR R4 resource types: {', '.join(unknown)}")
        return value

    @field_validator("allowed_fields")
    @classmethod
    def _fields_shaped(
        cls, value: dict[str, tuple[str, ...]] | None
    ) -> dict[str, tuple[str, ...]] | None:
        from fhir_bridge.validate.parse import is_known_type

        for rtype, paths in (value or {}).items():
            if not is_known_type(rtype):
                raise ValueError(f"{rtype!r} is not a FHIR R4 resource type")
            bad = [p for p in paths if not _PLAIN_PATH.match(p)]
            if bad:
                raise ValueError(
                    f"{rtype}: element paths are dotted names (participant.status), "
                    f"not {', '.join(map(repr, bad))}"
                )
        return value

    @field_validator("allowed_values")
    @classmethod
    def _values_shaped(
        cls, value: dict[str, tuple[str, ...]] | None
    ) -> dict[str, tuple[str, ...]] | None:
        from fhir_bridge.validate.parse import is_known_type

        for key, values in (value or {}).items():
            rtype, _, path = key.partition(".")
            if not path or not is_known_type(rtype) or not _PLAIN_PATH.match(path):
                raise ValueError(
                    f"{key!r}: keys are a resource type and an element path (Appointment.status)"
                )
            if not values:
                raise ValueError(f"{key}: list at least one allowed value")
        return value

    @model_validator(mode="after")
    def _restricted_types_allowed(self) -> WritePolicyConfig:
        named = {
            *(self.allowed_fields or {}),
            *(k.partition(".")[0] for k in self.allowed_values or {}),
        }
        outside = sorted(named - set(self.allowed_types))
        if outside:
            raise ValueError(
                f"allowed_fields/allowed_values name types not in allowed_types: "
                f"{', '.join(outside)}"
            )
        return self


_PLAIN_PATH = re.compile(r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$")


class SubscriptionConfig(_Strict):
    """Rest-hook notifications from the source (polling keeps running as the safety net)."""

    secret_env: str = Field(
        min_length=1, description="env var holding the shared secret sent as X-Bridge-Secret"
    )
    endpoint_base: HttpUrl | None = Field(
        default=None,
        description="the bridge's public base URL; the Subscription endpoint is "
        "{endpoint_base}/subscriptions/{source}",
    )

    def resolve_secret(self) -> str:
        """The shared secret, read from the environment."""
        return _secret(None, self.secret_env, "subscription secret")


class SourceConfig(_Strict):
    """One FHIR server the bridge pulls from and writes back to."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    base_url: HttpUrl
    auth: AuthConfig = NoAuth()
    resource_types: tuple[str, ...] = DEFAULT_RESOURCE_TYPES
    page_size: int = Field(default=100, ge=1, le=1000)
    sync_strategy: Literal["auto", "last-updated", "created", "full"] = Field(
        default="auto",
        description=(
            "how changes are found: auto (from /metadata), last-updated, created "
            "(misses edits), full (re-pull every run); see fhir_bridge.sync.strategy"
        ),
    )
    poll_interval: float = Field(default=60.0, gt=0, description="seconds between sync runs")
    overlap: float = Field(
        default=300.0, ge=0, description="seconds re-read before the cursor, for late commits"
    )
    timeout: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=5, ge=1, le=100)
    retry_attempts: int = Field(default=5, ge=1, le=20)
    retry_max_wait: float = Field(default=60.0, gt=0)
    retry_max_total_wait: float = Field(
        default=300.0, gt=0, description="cap on all retry waits of one request together"
    )
    rate_per_second: float | None = Field(
        default=None, gt=0, description="token-bucket rate limit on requests; none: unlimited"
    )
    burst: int = Field(default=1, ge=1, description="requests allowed at once by the bucket")
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    reconcile_interval: float = Field(
        default=0.0,
        ge=0,
        description="seconds between id reconciliations that detect deletions; 0: off",
    )
    subscription: SubscriptionConfig | None = None
    writeback: bool = True
    write_policy: WritePolicyConfig = WritePolicyConfig()
    profiles: tuple[str, ...] = Field(
        default=(),
        description="StructureDefinition urls (or file names in profiles_dir) to enforce",
    )
    on_profile_violation: Literal["quarantine", "warn"] = "quarantine"

    @field_validator("resource_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from fhir_bridge.validate.parse import is_known_type

        unknown = [t for t in value if not is_known_type(t)]
        if unknown:
            raise ValueError(f"not FHIR R4 resource types: {', '.join(unknown)}")
        if not value:
            raise ValueError("list at least one resource type")
        return value

    @property
    def url(self) -> str:
        """The base URL as a string without a trailing slash."""
        return str(self.base_url).rstrip("/")


class StorageConfig(_Strict):
    """Where the bridge keeps resources, tasks, cursors, quarantine and outbox."""

    engine: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("../var/fhir-bridge.db")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://, rediss:// (TLS), unix://, "
        "redis+sentinel://[:password@]host:port[,host:port]/service[/db] or "
        "redis+cluster://host:port[,host:port]",
    )
    key_prefix: str = Field(default="fhir-bridge", pattern=r"^[A-Za-z0-9:_.-]{1,64}$")
    outbox_visibility_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Redis: seconds an outbox entry a write-back worker took stays its own "
        "without an acknowledgement before another worker takes it over (XAUTOCLAIM)",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        from fhir_bridge.store.redis_url import parse_redis_url  # late: store imports config

        parse_redis_url(value)  # ValueError names the problem, never the password
        return value


Role = Literal["coordinator", "integration-engineer", "admin"]


class IssuerConfig(_Strict):
    """A trusted token issuer: its `iss`, the audience tokens must name, and its keys."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: HttpUrl | None = None
    roles_claim: str = Field(default="roles", description="claim holding the caller's roles")
    queues_claim: str | None = Field(
        default=None, description="claim listing the queues a coordinator may work (optional)"
    )
    algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES384")

    @model_validator(mode="after")
    def _one_jwks(self) -> IssuerConfig:
        _exactly_one(self.jwks_file, self.jwks_url, "'jwks_file' or 'jwks_url'")
        return self


class ApiKeyConfig(_Strict):
    """A service account's API key, stored only as a salted hash (`fhir-bridge auth hash-key`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
    hash: SecretStr = Field(
        description="sha256$<hex> (generated keys) or pbkdf2_sha256$<rounds>$<salt>$<digest>"
    )
    roles: tuple[Role, ...] = Field(min_length=1)
    queues: tuple[str, ...] | None = Field(
        default=None, description="coordinators only: the queues this key may work; none: all"
    )


class AuthSettings(_Strict):
    """Who may call the API. On by default: a deployment must configure it or turn it off."""

    enabled: bool = True
    issuers: tuple[IssuerConfig, ...] = ()
    api_keys: tuple[ApiKeyConfig, ...] = ()
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="requests per minute per key or client address; 0: off"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="larger bodies get 413")
    cors_origins: tuple[str, ...] = Field(default=(), description="browser origins allowed")

    def check_configured(self) -> None:
        """Refuse an enabled configuration that nobody could ever pass.

        :raises ConfigError: saying how to configure or disable authentication.
        """
        if self.enabled and not self.issuers and not self.api_keys:
            raise ConfigError(
                "auth is enabled but no issuers or api_keys are configured, so every request "
                "would be refused: add an issuer (issuer, audience, jwks_file or jwks_url) or "
                "an API key (`fhir-bridge auth hash-key`) under `auth:`, or set "
                "`auth: {enabled: false}` for a local demo (FHIR_BRIDGE_AUTH__ENABLED=false)"
            )


class ApiConfig(_Strict):
    """The coordinator API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # API processes of `fhir-bridge serve` (uvicorn workers sharing the port); `run` and
    # `demo` serve from their own single process whatever this says.
    workers: int = Field(default=1, ge=1, le=64, description="API processes of `serve`")
    # Who the web UI acts as when auth is off (the demo): GET /me answers it.
    demo_user: str = Field(
        default="demo-coordinator", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$"
    )


class WritebackConfig(_Strict):
    """Delivery of coordinators' changes to the FHIR servers."""

    interval: float = Field(default=2.0, gt=0, description="seconds between outbox scans")
    max_attempts: int = Field(default=10, ge=1)
    max_backoff: float = Field(default=300.0, gt=0)
    identifier_system: str = "urn:fhir-bridge:task"


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP token (RFC 9110)
# Headers the webhook sets itself, and ones that carry credentials (use `*_env` for those).
_WEBHOOK_OWN_HEADERS = frozenset(
    {
        "authorization",
        "content-length",
        "content-type",
        "cookie",
        "host",
        "idempotency-key",
        "proxy-authorization",
        "transfer-encoding",
        "user-agent",
        "x-fhir-bridge-event",
        "x-fhir-bridge-signature",
    }
)


class FamilyWebhookConfig(_Strict):
    """An optional POST of each family message to a hospital's own messaging system, through
    the outbox (docs/family.md "Webhook"). Off while `url` is not set."""

    url: HttpUrl | None = Field(  # not in repr: a receiver may take a token in the query
        default=None, repr=False, description="http(s) URL the messages are POSTed to"
    )
    secret_env: str | None = Field(
        default=None,
        min_length=1,
        description="env var holding the HMAC-SHA256 key of X-Fhir-Bridge-Signature",
    )
    bearer_token_env: str | None = Field(
        default=None, min_length=1, description="env var holding a token sent as Authorization"
    )
    timeout: float = Field(default=10.0, gt=0, le=120, description="seconds per POST")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra headers sent as they are (nothing secret)"
    )
    max_attempts: int | None = Field(
        default=None, ge=1, description="tries before parking as dead; default writeback's"
    )

    @property
    def enabled(self) -> bool:
        """Whether completed family tasks queue a webhook entry."""
        return self.url is not None

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and (value.username or value.password):
            raise ValueError("no user or password in the URL: use secret_env / bearer_token_env")
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _WEBHOOK_OWN_HEADERS:
                raise ValueError(
                    f"header {name} is set by the bridge or carries a credential "
                    "(use bearer_token_env)"
                )
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of header {name} holds a line break")
        return value

    @model_validator(mode="after")
    def _signed(self) -> FamilyWebhookConfig:
        if self.url is not None and self.secret_env is None:
            raise ValueError("a webhook url needs secret_env (the messages are signed)")
        return self

    def resolve_secret(self) -> bytes:
        """The signing key, read from the environment.

        :raises ConfigError: the variable is not set (named; its value never is).
        """
        return _secret(None, self.secret_env, "family webhook secret").encode("utf-8")

    def resolve_bearer_token(self) -> str | None:
        """The Authorization token, when `bearer_token_env` is set."""
        if self.bearer_token_env is None:
            return None
        return _secret(None, self.bearer_token_env, "family webhook bearer token")


class FamilyConfig(_Strict):
    """Family messages (docs/family.md)."""

    webhook: FamilyWebhookConfig = FamilyWebhookConfig()


class PatientsConfig(_Strict):
    """Cross-source patient identity for the consolidated history."""

    trusted_identifier_systems: tuple[str, ...] = Field(
        default=(),
        description="identifier systems (e.g. an MRN system shared by the EHRs) whose equal "
        "system|value on two Patient records makes them one patient; none: no automatic links",
    )


class IngestConfig(_Strict):
    """How resources are checked on their way in."""

    parse_workers: Literal["auto"] | Annotated[int, Field(ge=0, le=64)] = Field(
        default="auto",
        description="worker processes for the R4B parse and profile checks of big jobs; "
        "0: in-process; auto: one per CPU beyond the first (none on one or two CPUs)",
    )
    parse_pool_min: int = Field(
        default=2000,
        ge=0,
        description="resources in a search or file ingest before the parse pool is used",
    )


class Settings(BaseSettings):
    """All settings of one bridge installation."""

    model_config = SettingsConfigDict(
        env_prefix="FHIR_BRIDGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    sources: tuple[SourceConfig, ...] = ()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    auth: AuthSettings = AuthSettings()
    writeback: WritebackConfig = WritebackConfig()
    patients: PatientsConfig = PatientsConfig()
    ingest: IngestConfig = IngestConfig()
    family: FamilyConfig = FamilyConfig()
    mappings_dir: Path = Path("../mappings")
    mappings_reload_interval: float = Field(
        default=2.0, ge=0, description="seconds between checks for changed mapping files; 0: off"
    )
    reevaluate_interval: float = Field(
        default=3600.0,
        ge=0,
        description="seconds between re-runs of every rule (time-based); 0: off",
    )
    profiles_dir: Path = Path("../profiles")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    config_file: Path | None = None

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs by load_settings).
        return (env_settings, init_settings)

    def source(self, name: str) -> SourceConfig:
        """The source called `name` (KeyError if none)."""
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top, got {type(data).__name__}"
        )
    return data


def _describe(error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see README 'Configuration')"
    elif error["type"] == "missing":
        msg = "required key is missing"
    # Never echo anything under `auth` or a secret-named key: it may be a credential.
    secret = any(str(p) in _SECRET_KEYS or p == "auth" for p in error["loc"])
    shown = ""
    value = error.get("input")
    if not secret and isinstance(value, str | int | float | bool) and error["type"] != "missing":
        shown = f" (got {value!r})"
    return f"{loc}: {msg}{shown}"


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def load_settings(path: Path | str | None = None) -> Settings:
    """Read, validate and resolve the settings file.

    :param path: the YAML file; default `$FHIR_BRIDGE_CONFIG`, else `config/bridge.yaml`.
    :raises ConfigError: naming the file, each wrong key path and what was expected.
    """
    file = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    data = _read_yaml(file)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{file}: invalid configuration:\n{lines}") from None
    base = file.resolve().parent
    storage = settings.storage.model_copy(update={"path": _resolve(settings.storage.path, base)})
    sources = tuple(
        s.model_copy(
            update={
                "auth": s.auth.model_copy(
                    update={"private_key_path": _resolve(s.auth.private_key_path, base)}
                )
            }
        )
        if isinstance(s.auth, SmartAuth) and s.auth.private_key_path is not None
        else s
        for s in settings.sources
    )
    issuers = tuple(
        i.model_copy(update={"jwks_file": _resolve(i.jwks_file, base)})
        if i.jwks_file is not None
        else i
        for i in settings.auth.issuers
    )
    return settings.model_copy(
        update={
            "auth": settings.auth.model_copy(update={"issuers": issuers}),
            "storage": storage,
            "sources": sources,
            "mappings_dir": _resolve(settings.mappings_dir, base),
            "profiles_dir": _resolve(settings.profiles_dir, base),
            "config_file": file.resolve(),
        }
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process, loaded once (tests call `get_settings.cache_clear()`)."""
    return load_settings()
