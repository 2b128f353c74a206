"""Tests for fhir_bridge.fhir.auth: bearer, basic and SMART Backend Services (and client_for)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from fhir_bridge import config
from fhir_bridge.errors import ConfigError, FatalFhirError, MalformedResponse, TemporaryFhirError
from fhir_bridge.fhir import FhirClient, RetryPolicy, bearer_auth
from fhir_bridge.fhir.auth import (
    ASSERTION_TYPE,
    NO_AUTH,
    BasicAuth,
    BearerAuth,
    SmartBackendAuth,
)
from fhir_bridge.sources import client_for

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/oauth2/token"
CLIENT_ID = "fhir-bridge"
PATIENT = {"resourceType": "Patient", "id": "1"}
T0 = 1_800_000_000.0


def pem_pair(algorithm: str) -> tuple[str, str]:
    """A fresh (private PEM, public PEM) pair for RS384 or ES384."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    """One RSA key pair for the module (generating one takes a moment)."""
    return pem_pair("RS384")


@pytest.fixture(scope="module")
def ec_keys() -> tuple[str, str]:
    """One EC P-384 key pair for the module."""
    return pem_pair("ES384")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SleepRecorder:
    """Stands in for asyncio.sleep and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class TokenServer:
    """A token endpoint that hands out tok-1, tok-2, ... and keeps the forms it received."""

    def __init__(self, expires_in: object = 3600) -> None:
        self.expires_in = expires_in
        self.forms: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        body = {"access_token": f"tok-{len(self.forms)}", "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    @property
    def assertions(self) -> list[str]:
        return [f["client_assertion"] for f in self.forms]


@pytest.fixture
def tokens() -> TokenServer:
    return TokenServer()


@pytest.fixture
def api(tokens):
    """Working discovery, token endpoint and Patient/1; each test breaks one thing."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{BASE}/.well-known/smart-configuration", name="discovery").respond(
            200, json={"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"]}
        )
        mock.post(TOKEN_URL, name="token").mock(side_effect=tokens)
        mock.get(f"{BASE}/Patient/1", name="patient").respond(200, json=PATIENT)
        yield mock


def smart(keys: tuple[str, str], clock: Clock | None = None, **kwargs) -> SmartBackendAuth:
    options = {
        "client_id": CLIENT_ID,
        "private_key": keys[0],
        "fhir_base_url": BASE,
        "scope": "system/*.read",
        "clock": clock or Clock(),
    }
    return SmartBackendAuth(**(options | kwargs))


def bearer_of(request: httpx.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


# -- static credentials -------------------------------------------------------------------


async def test_bearer_token_is_sent():
    """bearer_auth adds Authorization: Bearer <token> to every request."""
    with respx.mock(base_url=BASE) as api:
        route = api.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
        async with FhirClient(BASE, auth=bearer_auth("s3cr3t-token")) as client:
            await client.read("Patient", "1")
    assert route.calls.last.request.headers["Authorization"] == "Bearer s3cr3t-token"


def test_bearer_repr_hides_token():
    """Neither repr() nor str() of the auth object shows the token."""
    auth = bearer_auth("s3cr3t-token")
    assert "s3cr3t" not in repr(auth)
    assert "s3cr3t" not in str(auth)


@pytest.mark.parametrize("token", ["", " padded "])
def test_bearer_rejects_bad_token(token):
    """An empty or padded token is a configuration mistake caught at once."""
    with pytest.raises(ValueError, match="bearer token"):
        bearer_auth(token)


async def test_no_auth_sends_no_authorization():
    """NO_AUTH leaves the Authorization header out."""
    with respx.mock(base_url=BASE) as api:
        route = api.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
        async with FhirClient(BASE, auth=NO_AUTH) as client:
            await client.read("Patient", "1")
    assert "Authorization" not in route.calls.last.request.headers


async def test_basic_auth_header(api):
    """BasicAuth sends base64(user:password) in the Authorization header."""
    async with FhirClient(BASE, auth=BasicAuth("bridge", "pa:ss w0rd")) as client:
        await client.read("Patient", "1")
    header = api["patient"].calls.last.request.headers["Authorization"]
    assert header == "Basic " + base64.b64encode(b"bridge:pa:ss w0rd").decode()


def test_basic_repr_hides_password():
    """repr() of BasicAuth shows the user name but never the password."""
    auth = BasicAuth("bridge", "hunter2-secret")
    assert "bridge" in repr(auth)
    assert "hunter2" not in repr(auth)
    assert "hunter2" not in str(auth)


@pytest.mark.parametrize(("user", "password"), [("", "pw"), ("a:b", "pw"), ("bridge", "")])
def test_basic_rejects_bad_credentials(user, password):
    """An empty or colon-bearing user name, or an empty password, is refused at once."""
    with pytest.raises(ValueError, match="basic auth"):
        BasicAuth(user, password)


# -- SMART: token cache, refresh, re-auth ----------------------------------------------------


async def test_token_fetched_once_and_cached(api, tokens, rsa_keys):
    """Discovery and the token request happen once; later requests reuse the cached token."""
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        for _ in range(3):
            await client.read("Patient", "1")
    assert api["discovery"].call_count == 1
    assert api["token"].call_count == 1
    assert [bearer_of(c.request) for c in api["patient"].calls] == ["tok-1"] * 3


async def test_concurrent_requests_share_one_token_fetch(api, tokens, rsa_keys):
    """Requests started together wait for a single token request instead of each making one."""

    async def slow_token_endpoint(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the other requests run into the token fetch meanwhile
        return tokens(request)

    api["token"].side_effect = slow_token_endpoint
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        await asyncio.gather(*(client.read("Patient", "1") for _ in range(5)))
    assert api["token"].call_count == 1
    assert {bearer_of(c.request) for c in api["patient"].calls} == {"tok-1"}


async def test_token_refreshed_60_seconds_before_expiry(api, rsa_keys):
    """A token is used until 60 s before expires_in runs out, then a new one is fetched."""
    clock = Clock()
    async with FhirClient(BASE, auth=smart(rsa_keys, clock)) as client:
        await client.read("Patient", "1")
        clock.now = T0 + 3600 - 61
        await client.read("Patient", "1")
        assert api["token"].call_count == 1
        clock.now = T0 + 3600 - 60
        await client.read("Patient", "1")
    assert api["token"].call_count == 2
    assert [bearer_of(c.request) for c in api["patient"].calls] == ["tok-1", "tok-1", "tok-2"]
    assert api["discovery"].call_count == 1  # the endpoint is remembered


@pytest.mark.parametrize(("expires_in", "kept"), [(30, 15), ("120", 60), (None, 240)])
async def test_short_string_or_missing_expires_in(api, tokens, rsa_keys, expires_in, kept):
    """Short lifetimes keep half, numeric strings are read, a missing expires_in means 300 s."""
    tokens.expires_in = expires_in
    clock = Clock()
    async with FhirClient(BASE, auth=smart(rsa_keys, clock)) as client:
        await client.read("Patient", "1")
        clock.now = T0 + kept - 1
        await client.read("Patient", "1")
        assert api["token"].call_count == 1
        clock.now = T0 + kept
        await client.read("Patient", "1")
    assert api["token"].call_count == 2


async def test_401_reauthenticates_once_without_spending_a_retry(api, rsa_keys):
    """A 401 gets a fresh token and one more try, even when the retry policy allows no retry."""
    api["patient"].side_effect = [httpx.Response(401), httpx.Response(200, json=PATIENT)]
    slept = SleepRecorder()
    auth = smart(rsa_keys)
    async with FhirClient(BASE, auth=auth, retry=RetryPolicy(attempts=1), sleep=slept) as client:
        assert await client.read("Patient", "1") == PATIENT
    assert [bearer_of(c.request) for c in api["patient"].calls] == ["tok-1", "tok-2"]
    assert api["token"].call_count == 2
    assert slept.calls == []


async def test_second_401_is_fatal(api, rsa_keys):
    """If the fresh token is refused too, the request fails with a FatalFhirError 401."""
    api["patient"].respond(401)
    async with FhirClient(BASE, auth=smart(rsa_keys), retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(FatalFhirError) as info:
            await client.read("Patient", "1")
    assert info.value.status == 401
    assert api["patient"].call_count == 2
    assert api["token"].call_count == 2


# -- SMART: token endpoint errors ----------------------------------------------------------


async def test_token_endpoint_401_is_fatal_with_oauth_text_and_no_secret(api, rsa_keys):
    """A refused client assertion is fatal; the message has the OAuth error but no secret."""
    seen: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        assertion = parse_qs(request.content.decode())["client_assertion"][0]
        seen.append(assertion)
        description = f"client_assertion verification failed for {assertion}"  # a chatty server
        return httpx.Response(
            401, json={"error": "invalid_client", "error_description": description}
        )

    api["token"].side_effect = refuse
    with capture_logs() as logs:
        async with FhirClient(BASE, auth=smart(rsa_keys), retry=RetryPolicy(attempts=3)) as client:
            with pytest.raises(FatalFhirError) as info:
                await client.read("Patient", "1")
    message = str(info.value)
    assert "invalid_client" in message
    assert "client_assertion verification failed" in message
    assert "'fhir-bridge'" in message and TOKEN_URL in message
    assert "private key" in message  # the hint says what to check
    assert len(seen) == 1  # fatal: not retried
    assert "***" in message
    assert all(part not in message for part in seen[0].split("."))
    assert rsa_keys[0].splitlines()[1] not in message
    assert seen[0] not in json.dumps(logs, default=str)
    assert api["patient"].call_count == 0
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("status", "error", "hint"),
    [
        (400, "invalid_scope", "not allowed the requested scope"),
        (403, "unauthorized_client", "may not use client_credentials"),
        (400, None, "check client_id, private key and scope"),
        (404, None, "is token_url right?"),
    ],
)
async def test_token_endpoint_refusals_are_fatal(api, rsa_keys, status, error, hint):
    """400/401/403 (and other 4xx) from the token endpoint are fatal, with a hint."""
    body = {"error": error} if error else {"unexpected": True}
    api["token"].side_effect = None
    api["token"].respond(status, json=body)
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        with pytest.raises(FatalFhirError, match="refused") as info:
            await client.read("Patient", "1")
    assert hint in str(info.value)
    assert info.value.status == status
    if error:
        assert error in str(info.value)


async def test_token_endpoint_503_is_temporary_and_retried(api, tokens, rsa_keys):
    """A 503 from the token endpoint is a TemporaryFhirError that the retry policy retries."""
    api["token"].side_effect = [httpx.Response(503, headers={"Retry-After": "2"}), tokens]
    slept = SleepRecorder()
    async with FhirClient(BASE, auth=smart(rsa_keys), sleep=slept) as client:
        assert await client.read("Patient", "1") == PATIENT
    assert slept.calls == [2.0]
    assert bearer_of(api["patient"].calls.last.request) == "tok-1"


async def test_token_endpoint_network_error_is_temporary(api, rsa_keys):
    """A connection failure to the token endpoint is a TemporaryFhirError naming the endpoint."""
    api["token"].side_effect = httpx.ConnectError("refused")
    async with FhirClient(BASE, auth=smart(rsa_keys), retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(TemporaryFhirError, match="ConnectError") as info:
            await client.read("Patient", "1")
    assert TOKEN_URL in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 60},
        {"access_token": "x", "token_type": "mac"},
        ["not", "an", "object"],
    ],
)
async def test_unusable_token_response_is_malformed(api, rsa_keys, body):
    """A 200 without a bearer access_token is a MalformedResponse."""
    api["token"].side_effect = None
    api["token"].respond(200, json=body)
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        with pytest.raises(MalformedResponse, match="SMART token response"):
            await client.read("Patient", "1")


# -- SMART: discovery ----------------------------------------------------------------------


async def test_token_endpoint_discovered_from_smart_configuration(api, rsa_keys):
    """Without token_url the endpoint comes from .well-known/smart-configuration."""
    auth = smart(rsa_keys)
    async with FhirClient(BASE, auth=auth) as client:
        await client.read("Patient", "1")
    assert api["discovery"].call_count == 1
    assert api["token"].call_count == 1
    assert auth.token_url == TOKEN_URL


async def test_discovery_falls_back_to_capability_statement(api, rsa_keys):
    """A server without smart-configuration can name the endpoint in its CapabilityStatement."""
    api["discovery"].respond(404)
    api.get(f"{BASE}/metadata").respond(
        200,
        json={
            "resourceType": "CapabilityStatement",
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "extension": [
                            {
                                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                                "extension": [{"url": "token", "valueUri": TOKEN_URL}],
                            }
                        ]
                    },
                }
            ],
        },
    )
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        assert await client.read("Patient", "1") == PATIENT
    assert api["token"].call_count == 1


async def test_no_token_endpoint_anywhere_is_fatal(api, rsa_keys):
    """No smart-configuration and no oauth-uris: a FatalFhirError that says to set token_url."""
    api["discovery"].respond(404)
    api.get(f"{BASE}/metadata").respond(200, json={"resourceType": "CapabilityStatement"})
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        with pytest.raises(FatalFhirError, match="set token_url"):
            await client.read("Patient", "1")
    assert api["token"].call_count == 0


async def test_discovery_5xx_is_temporary(api, rsa_keys):
    """A 502 from smart-configuration is temporary (retried), not 'no endpoint'."""
    api["discovery"].respond(502)
    async with FhirClient(BASE, auth=smart(rsa_keys), retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(TemporaryFhirError, match="discovery"):
            await client.read("Patient", "1")


async def test_configured_token_url_skips_discovery(api, rsa_keys):
    """A configured token_url is used as is; discovery is never called."""
    async with FhirClient(BASE, auth=smart(rsa_keys, token_url=TOKEN_URL)) as client:
        await client.read("Patient", "1")
    assert api["discovery"].call_count == 0
    assert api["token"].call_count == 1


# -- SMART: the client assertion -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
async def test_assertion_verifies_and_has_required_claims(
    api, tokens, rsa_keys, ec_keys, algorithm
):
    """The assertion verifies with the public key; iss=sub=client_id, aud, exp<=5 min, jti."""
    keys = rsa_keys if algorithm == "RS384" else ec_keys
    clock = Clock()
    auth = smart(keys, clock, algorithm=algorithm, key_id="key-2026")
    async with FhirClient(BASE, auth=auth) as client:
        await client.read("Patient", "1")
        auth.invalidate()
        await client.read("Patient", "1")
    form = tokens.forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == "system/*.read"
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == algorithm
    assert header["kid"] == "key-2026"
    claims = jwt.decode(
        assertion,
        keys[1],
        algorithms=[algorithm],
        audience=TOKEN_URL,
        options={"verify_exp": False, "require": ["iss", "sub", "aud", "exp", "jti"]},
    )
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert T0 < claims["exp"] <= T0 + 300
    jtis = [jwt.decode(a, options={"verify_signature": False})["jti"] for a in tokens.assertions]
    assert len(jtis) == 2 and len(set(jtis)) == 2


async def test_assertion_has_no_kid_unless_configured(api, tokens, rsa_keys):
    """Without key_id the header carries no kid."""
    async with FhirClient(BASE, auth=smart(rsa_keys)) as client:
        await client.read("Patient", "1")
    assert "kid" not in jwt.get_unverified_header(tokens.assertions[0])


def test_assertion_signed_with_another_key_does_not_verify(rsa_keys):
    """A different key pair's public key rejects the assertion (the signature is real)."""
    other_public = pem_pair("RS384")[1]
    assertion = smart(rsa_keys, Clock(T0)).client_assertion(TOKEN_URL)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            assertion,
            other_public,
            algorithms=["RS384"],
            audience=TOKEN_URL,
            options={"verify_exp": False},
        )


@pytest.mark.parametrize(
    ("which", "algorithm", "match"),
    [
        ("rsa", "ES384", "ES384 needs an EC private key"),
        ("ec", "RS384", "RS384 needs an RSA private key"),
        ("garbage", "RS384", "not an unencrypted PEM private key"),
    ],
)
def test_unusable_keys_are_refused(rsa_keys, ec_keys, which, algorithm, match):
    """A key that does not fit the algorithm, or is no key, fails at once without echoing it."""
    pem = {"rsa": rsa_keys[0], "ec": ec_keys[0], "garbage": "-----BEGIN NONSENSE-----"}[which]
    with pytest.raises(ValueError, match=match) as info:
        SmartBackendAuth(
            client_id=CLIENT_ID, private_key=pem, fhir_base_url=BASE, algorithm=algorithm
        )
    assert "NONSENSE" not in str(info.value)
    assert pem.splitlines()[min(1, len(pem.splitlines()) - 1)] not in str(info.value)


def test_smart_needs_a_base_url_or_token_url(rsa_keys):
    """Without either URL there is no way to find the token endpoint."""
    with pytest.raises(ValueError, match="fhir_base_url"):
        SmartBackendAuth(client_id=CLIENT_ID, private_key=rsa_keys[0])


def test_smart_refuses_synchronous_clients(rsa_keys):
    """A sync httpx.Client cannot use SMART auth (a token fetch would block)."""
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(f"{BASE}/Patient/1").respond(200, json=PATIENT)
        with httpx.Client(auth=smart(rsa_keys)) as client, pytest.raises(RuntimeError):
            client.get(f"{BASE}/Patient/1")
    assert not route.called


# -- secrets stay secret -------------------------------------------------------------------


async def test_smart_secrets_stay_out_of_repr_and_logs(api, tokens, rsa_keys):
    """Token, key and assertion never show in repr(), str() or any log line."""
    api["patient"].side_effect = [httpx.Response(401), httpx.Response(200, json=PATIENT)]
    auth = smart(rsa_keys)
    with capture_logs() as logs:
        async with FhirClient(BASE, auth=auth) as client:
            await client.read("Patient", "1")
    secrets = ["tok-1", "tok-2", *tokens.assertions, rsa_keys[0].splitlines()[1]]
    shown = repr(auth) + str(auth) + json.dumps(logs, default=str)
    assert {e["event"] for e in logs} >= {"smart_token_fetched", "smart_token_rejected"}
    assert CLIENT_ID in repr(auth)
    for secret in secrets:
        assert secret not in shown


# -- client_for: the auth each config model gets ---------------------------------------------


def source(auth: object) -> config.SourceConfig:
    return config.SourceConfig(name="ehr", base_url=BASE, auth=auth)


def test_client_for_builds_each_auth(rsa_keys, tmp_path: Path, monkeypatch):
    """NoAuth, BearerAuth, BasicAuth and SmartAuth become the matching httpx.Auth."""
    key_file = tmp_path / "client.pem"
    key_file.write_text(rsa_keys[0])
    monkeypatch.setenv("EHR_PASSWORD", "pw-from-env")
    cases = {
        "none": (config.NoAuth(), type(None)),
        "bearer": (config.BearerAuth(type="bearer", token="t0ken"), BearerAuth),
        "basic": (
            config.BasicAuth(type="basic", username="u", password_env="EHR_PASSWORD"),
            BasicAuth,
        ),
        "smart": (
            config.SmartAuth(
                type="smart",
                client_id=CLIENT_ID,
                private_key_path=key_file,
                key_id="k1",
                token_url=TOKEN_URL,
            ),
            SmartBackendAuth,
        ),
    }
    for name, (auth_config, expected) in cases.items():
        client = client_for(source(auth_config))
        assert isinstance(client._auth, expected), name
    smart_auth = client_for(source(cases["smart"][0]))._auth
    assert isinstance(smart_auth, SmartBackendAuth)
    assert (smart_auth.client_id, smart_auth.key_id, smart_auth.token_url) == (
        CLIENT_ID,
        "k1",
        TOKEN_URL,
    )


async def test_client_for_smart_talks_to_the_token_endpoint(api, tokens, rsa_keys, monkeypatch):
    """A SmartAuth source (key from the environment) fetches a token and sends it."""
    monkeypatch.setenv("EHR_KEY", rsa_keys[0])
    auth = config.SmartAuth(
        type="smart", client_id=CLIENT_ID, private_key_env="EHR_KEY", algorithm="RS384"
    )
    async with client_for(source(auth)) as client:
        await client.read("Patient", "1")
    assert bearer_of(api["patient"].calls.last.request) == "tok-1"
    assert tokens.forms[0]["scope"] == "system/*.read system/Task.write"


def test_client_for_turns_an_unusable_key_into_config_error(ec_keys, monkeypatch):
    """An EC key configured for RS384 is a ConfigError naming the source, not the key."""
    monkeypatch.setenv("EHR_KEY", ec_keys[0])
    auth = config.SmartAuth(type="smart", client_id=CLIENT_ID, private_key_env="EHR_KEY")
    with pytest.raises(ConfigError, match="source ehr: auth: SMART algorithm RS384") as info:
        client_for(source(auth))
    assert ec_keys[0].splitlines()[1] not in str(info.value)
