"""SMART Backend Services and `sources check` against a real SEKMET server."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from fhir_bridge.cli_sources import sources_app
from fhir_bridge.config import DEFAULT_RESOURCE_TYPES, SmartAuth, SourceConfig
from fhir_bridge.errors import FatalFhirError
from fhir_bridge.fhir.auth import SmartBackendAuth
from fhir_bridge.fhir.capabilities import SyncStrategy
from fhir_bridge.sources import check_source, client_for

pytestmark = pytest.mark.integration


def write_key_pair(folder: Path, name: str, algorithm: str) -> tuple[Path, Path]:
    """Generate a key pair for RS384 or ES384; return (private PEM path, public PEM path)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Private key files: registered RSA and EC keys, a restricted client's, and a stranger's."""
    folder = tmp_path_factory.mktemp("smart-keys")
    rsa_priv, rsa_pub = write_key_pair(folder, "rsa", "RS384")
    ec_priv, ec_pub = write_key_pair(folder, "ec", "ES384")
    narrow_priv, narrow_pub = write_key_pair(folder, "narrow", "RS384")
    stranger, _ = write_key_pair(folder, "stranger", "RS384")
    return {
        "rsa": rsa_priv,
        "rsa.pub": rsa_pub,
        "ec": ec_priv,
        "ec.pub": ec_pub,
        "narrow": narrow_priv,
        "narrow.pub": narrow_pub,
        "stranger": stranger,
    }


@pytest.fixture(scope="module")
def smart_url(sekmet_factory, keys) -> str:
    """A SEKMET that accepts SMART Backend Services clients only."""
    clients = [
        {
            "client_id": "fhir-bridge",
            "public_key_path": str(keys["rsa.pub"]),
            "scopes": "system/*.*",
        },
        {
            "client_id": "fhir-bridge-es",
            "public_key_path": str(keys["ec.pub"]),
            "scopes": "system/*.*",
        },
        {
            "client_id": "narrow",
            "public_key_path": str(keys["narrow.pub"]),
            "scopes": "system/Observation.read",
        },
    ]
    server = sekmet_factory(
        extra_settings={
            "server_auth": {"types": ["smart"], "smart_clients": clients, "token_lifetime": 3600}
        }
    )
    return server.base_url


def smart_source(url: str, key: Path, client_id: str = "fhir-bridge", **auth) -> SourceConfig:
    options = {"type": "smart", "client_id": client_id, "private_key_path": key} | auth
    return SourceConfig(name="sekmet-smart", base_url=url, auth=SmartAuth(**options))


async def test_smart_rs384_write_and_search(smart_url, keys):
    """RS384: a token is fetched via discovery, a Patient is created and found by search."""
    source = smart_source(smart_url, keys["rsa"], scope="system/*.*")
    async with client_for(source) as client:
        created = await client.create({"resourceType": "Patient", "active": True})
        assert created.resource_id
        found = [
            r
            async for page in client.search("Patient", {"_id": created.resource_id})
            for r in page.resources
        ]
        again = [p async for p in client.search("Patient", {"_count": "1"})]  # token reused
    assert [r["id"] for r in found] == [created.resource_id]
    assert again and again[0].resources
    assert isinstance(client._auth, SmartBackendAuth)
    assert client._auth.token_url == smart_url.removesuffix("/fhir") + "/auth/token"


async def test_smart_es384_search(smart_url, keys):
    """ES384 assertions are accepted too."""
    source = smart_source(smart_url, keys["ec"], "fhir-bridge-es", algorithm="ES384")
    async with client_for(source) as client:
        pages = [p async for p in client.search("Patient", {"_count": "5"})]
    assert pages and pages[0].number == 1


async def test_smart_wrong_key_is_fatal(smart_url, keys):
    """A key the server does not know: FatalFhirError with SEKMET's invalid_client reason."""
    source = smart_source(smart_url, keys["stranger"])
    async with client_for(source) as client:
        with pytest.raises(FatalFhirError) as info:
            await client.read("Patient", "anything")
    message = str(info.value)
    assert info.value.status == 401
    assert "invalid_client" in message and "verification failed" in message
    assert "private key" in message  # the hint
    assert keys["stranger"].read_text().splitlines()[1] not in message


async def test_smart_disallowed_scope_is_fatal(smart_url, keys):
    """Asking for scopes the client may not have: FatalFhirError with invalid_scope."""
    source = smart_source(smart_url, keys["narrow"], "narrow", scope="system/*.read")
    async with client_for(source) as client:
        with pytest.raises(FatalFhirError, match="invalid_scope") as info:
            await client.read("Patient", "anything")
    assert info.value.status == 400


async def test_check_source_over_smart(smart_url, keys):
    """check_source on the SMART server: reachable, authenticated, token endpoint advertised."""
    report = await check_source(smart_source(smart_url, keys["rsa"]))
    assert report.ok, report
    assert report.smart_token_endpoint == smart_url.removesuffix("/fhir") + "/auth/token"
    assert {r.strategy for r in report.resources} == {SyncStrategy.INCREMENTAL}


# -- `sources check` on a bearer-protected SEKMET --------------------------------------------


@pytest.fixture(scope="module")
def bearer_url(sekmet_factory) -> str:
    """A SEKMET that wants `Authorization: Bearer t0ken`."""
    return sekmet_factory(auth="bearer", token="t0ken").base_url


@pytest.fixture
def runner():
    """A CliRunner; structlog's configuration (set by the command) is reset afterwards."""
    yield CliRunner()
    structlog.reset_defaults()


def bearer_config(tmp_path: Path, url: str, token: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        f"sources:\n  - name: sekmet\n    base_url: {url}\n"
        f"    auth: {{type: bearer, token: {token}}}\n"
    )
    return path


def test_sources_check_bearer_ok(bearer_url, runner, tmp_path):
    """`sources check` with the right token: reachable, auth ok, the strategy line, exit 0."""
    config = bearer_config(tmp_path, bearer_url, "t0ken")
    result = runner.invoke(sources_app, ["check", "-c", str(config)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "source sekmet" in result.output
    assert "SEKMET FHIR R4 Tester 0.1.0" in result.output
    types = ", ".join(DEFAULT_RESOURCE_TYPES)
    line = f"sekmet: OK: reachable, auth ok; sync strategy: incremental _lastUpdated ({types})"
    assert line in result.output


def test_sources_check_bearer_wrong_token(bearer_url, runner, tmp_path):
    """`sources check` with a wrong token: exit 1 and a line that says the credentials failed."""
    config = bearer_config(tmp_path, bearer_url, "not-the-t0ken")
    result = runner.invoke(sources_app, ["check", "sekmet", "-c", str(config)])
    assert result.exit_code == 1
    assert "sekmet: FAILED: credentials rejected (HTTP 401)" in result.output
    assert "not-the-t0ken" not in result.output
