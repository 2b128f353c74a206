"""Access control: the authorization matrix over every route of the app, the audit trail,
coordinators' identity and queues, and the secure defaults (headers, 413, 429, CORS)."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm
from starlette.routing import Route
from typer.testing import CliRunner

from fhir_bridge.api import create_app
from fhir_bridge.api.auth import OWN_SECRET, POLICY, PUBLIC, hash_key, policy_for, verify_key
from fhir_bridge.api.security import TokenBucket
from fhir_bridge.cli_auth import auth_app
from fhir_bridge.config import AuthSettings
from fhir_bridge.errors import ConfigError
from fhir_bridge.runtime import Bridge
from tests.api.sample import sample_bridge
from tests.utils import sample

ISS = "https://idp.test/realms/care"
AUD = "fhir-bridge"
API_KEY = "fbk_test-service-account-key"
PATIENT = sample("Patient")[0]
SUBJECTS = {"coordinator": "dana", "integration-engineer": "eve", "admin": "ada"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """The issuer's signing key and a stranger's key (for bad signatures)."""
    return {
        "good": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "bad": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks_file(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issuer's public key as a JWKS file."""
    jwk = json.loads(RSAAlgorithm.to_jwk(keys["good"].public_key()))
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return path


def auth_settings(jwks_file: Path, **changes: Any) -> AuthSettings:
    """Auth on: one issuer from the JWKS file, one integration-engineer API key."""
    fields: dict[str, Any] = {
        "issuers": [
            {
                "issuer": ISS,
                "audience": AUD,
                "jwks_file": jwks_file,
                "queues_claim": "queues",
            }
        ],
        "api_keys": [
            {
                "name": "reporting-job",
                "hash": hash_key(API_KEY, iterations=1000),
                "roles": ["integration-engineer"],
            }
        ],
        "rate_limit_per_minute": 0,
    }
    return AuthSettings(**(fields | changes))


def token(keys: dict[str, Any], sub: str, roles: Any, **claims: Any) -> str:
    """A signed access token; `claims` override iss, aud, exp or add queues."""
    key = claims.pop("key", keys["good"])
    body = {
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "exp": int(time.time()) + 300,
        "iat": int(time.time()),
        "roles": roles,
    }
    return jwt.encode(body | claims, key, algorithm="RS256", headers={"kid": "k1"})


def bearer(value: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def secured(jwks_file: Path) -> Iterator[Bridge]:
    """The sample bridge with auth on."""
    b = sample_bridge("ehr", auth=auth_settings(jwks_file))
    yield b
    b.close()


@pytest.fixture
def app_client(secured: Bridge) -> TestClient:
    """A client of the secured app (a route's own 500 is an answer here: past auth)."""
    return TestClient(create_app(secured), raise_server_exceptions=False)


def role_headers(keys: dict[str, Any], role: str) -> dict[str, str]:
    """A valid token for one role, its subject from SUBJECTS."""
    return bearer(token(keys, SUBJECTS[role], [role]))


def first_task(bridge: Bridge, queue: str = "scheduling") -> Any:
    """The first open task of a queue in the store."""
    return next(t for t in bridge.store.iter_tasks(queue=queue) if t.status.value == "open")


# -- the matrix ------------------------------------------------------------------------------


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, HEAD and OPTIONS aside."""
    found = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        # FastAPI keeps included routers as one entry that lists its routes' contexts.
        leaves = (
            route.effective_route_contexts()
            if hasattr(route, "effective_route_contexts")
            else [route]
        )
        for leaf in leaves:
            assert isinstance(leaf, Route) or hasattr(leaf, "path_format"), leaf
            for method in sorted(leaf.methods or ()):
                if method not in {"HEAD", "OPTIONS"}:
                    found.append((method, leaf.path))
    return found


def concrete(path: str, bridge: Bridge) -> str:
    """A path template filled with ids the sample holds."""
    values = {
        "task_id": first_task(bridge).id,
        "queue": "scheduling",
        "source": "ehr",
        "patient_id": PATIENT["id"],
        "entry_id": "1",
        "resource_type": "Patient",
        "resource_id": PATIENT["id"],
        "asset": "app.js",
    }
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)


def body_for(path: str, subject: str, bridge: Bridge) -> dict[str, Any]:
    """A valid body for a POST route, acting as `subject`."""
    return {
        "coordinator": subject,
        "assignee": subject,
        "text": "called, left a message",
        "status": "completed",
        "ids": [first_task(bridge).id],
        "reason": "duplicate",
    }


def call(client: TestClient, bridge: Bridge, method: str, path: str, headers: dict, subject: str):
    """One request to a route, with a body for POSTs."""
    url = concrete(path, bridge)
    if method == "POST":
        return client.post(url, headers=headers, json=body_for(path, subject, bridge))
    return client.request(method, url, headers=headers)


def test_every_route_has_a_policy(app_client: TestClient):
    """A route missing from the role table fails here (and is refused to everyone at run time)."""
    served = routes(app_client)
    assert len(served) >= 25
    assert [r for r in served if policy_for(*r) is None] == []
    assert policy_for("HEAD", "/healthz") == PUBLIC


@pytest.mark.parametrize("role", ["coordinator", "integration-engineer", "admin", "api-key"])
def test_matrix_roles(role: str, app_client: TestClient, secured: Bridge, keys):
    """Each role gets past auth exactly on the routes the table grants it, else 403."""
    if role == "api-key":
        headers, subject, roles = {"X-API-Key": API_KEY}, "reporting-job", {"integration-engineer"}
    else:
        headers, subject, roles = role_headers(keys, role), SUBJECTS[role], {role}
    wrong = []
    for method, path in routes(app_client):
        allowed = POLICY[(method, path)]
        status = call(app_client, secured, method, path, headers, subject).status_code
        if allowed is OWN_SECRET:  # the route answers 401 itself without its secret
            if status == 403:
                wrong.append((method, path, status))
            continue
        expected_ok = allowed is PUBLIC or bool(allowed & roles)
        if expected_ok == (status in {401, 403}) or (not expected_ok and status != 403):
            wrong.append((method, path, status))
    assert wrong == []


@pytest.mark.parametrize(
    "case", ["none", "wrong-issuer", "expired", "bad-signature", "wrong-audience", "bad-key"]
)
def test_matrix_bad_credentials(case: str, app_client: TestClient, secured: Bridge, keys):
    """Without valid credentials every protected route is 401 with a challenge; public ones
    still answer."""
    admin = ["admin"]
    headers = {
        "none": {},
        "wrong-issuer": bearer(token(keys, "ada", admin, iss="https://evil.test")),
        "expired": bearer(token(keys, "ada", admin, exp=int(time.time()) - 3600)),
        "bad-signature": bearer(token(keys, "ada", admin, key=keys["bad"])),
        "wrong-audience": bearer(token(keys, "ada", admin, aud="someone-else")),
        "bad-key": {"X-API-Key": "fbk_guessed"},
    }[case]
    wrong = []
    for method, path in routes(app_client):
        answer = call(app_client, secured, method, path, headers, "ada")
        if POLICY[(method, path)] is OWN_SECRET:
            if answer.status_code == 403 or "Bearer" in answer.headers.get("WWW-Authenticate", ""):
                wrong.append((method, path, answer.status_code))
        elif POLICY[(method, path)] is PUBLIC:
            if answer.status_code in {401, 403}:
                wrong.append((method, path, answer.status_code))
        elif answer.status_code != 401 or "Bearer" not in answer.headers.get(
            "WWW-Authenticate", ""
        ):
            wrong.append((method, path, answer.status_code))
    assert wrong == []


def test_me_answers_each_role_its_identity(app_client: TestClient, keys):
    """GET /me names the token's subject, its known roles and its queues claim, for all three
    roles; a caller with no known role is 403 there too."""
    for role, subject in SUBJECTS.items():
        me = app_client.get("/me", headers=role_headers(keys, role))
        assert me.status_code == 200
        assert me.json() == {
            "subject": subject,
            "roles": [role],
            "queues": None,
            "auth_enabled": True,
        }
    restricted = bearer(token(keys, "dana", ["coordinator", "pilot"], queues=["records"]))
    assert app_client.get("/me", headers=restricted).json()["queues"] == ["records"]
    nobody = app_client.get("/me", headers=bearer(token(keys, "x", ["superuser"])))
    assert nobody.status_code == 403


def test_ui_files_are_public_and_hold_no_data(app_client: TestClient):
    """The web UI's page and scripts answer without credentials (they hold no data); the page
    carries the strict CSP."""
    page = app_client.get("/ui/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert app_client.get("/ui/app.js").status_code == 200
    assert app_client.get("/queues").status_code == 401


def test_expired_token_says_so(app_client: TestClient, keys):
    """An expired token is 401 whose body and challenge name the reason."""
    answer = app_client.get(
        "/queues", headers=bearer(token(keys, "ada", ["admin"], exp=int(time.time()) - 3600))
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert "expired" in answer.json()["message"]


def test_roles_claim_as_string_and_unknown_roles(app_client: TestClient, keys):
    """A space-separated roles claim works; roles outside the table grant nothing."""
    as_text = app_client.get("/audit", headers=bearer(token(keys, "ada", "viewer admin")))
    assert as_text.status_code == 200
    unknown = app_client.get("/queues", headers=bearer(token(keys, "x", ["superuser"])))
    assert unknown.status_code == 403


def test_enabled_without_issuers_or_keys_refuses_to_start():
    """Auth on with nothing configured is a ConfigError telling how to configure or disable."""
    bridge = sample_bridge("ehr", auth=AuthSettings())
    try:
        with pytest.raises(ConfigError, match=r"enabled: false"):
            create_app(bridge)
    finally:
        bridge.close()


# -- coordinators: identity and queues -------------------------------------------------------


def test_coordinator_acts_only_as_themselves(app_client: TestClient, secured: Bridge, keys):
    """A coordinator naming someone else is 403; an admin may act on their behalf."""
    task = first_task(secured)
    dana = role_headers(keys, "coordinator")
    as_eli = app_client.post(f"/tasks/{task.id}/claim", headers=dana, json={"coordinator": "eli"})
    assert as_eli.status_code == 403
    assert secured.store.get_task(task.id).assignee is None
    on_behalf = app_client.post(
        f"/tasks/{task.id}/claim", headers=role_headers(keys, "admin"), json={"coordinator": "eli"}
    )
    assert on_behalf.status_code == 200
    assert on_behalf.json()["assignee"] == "eli"


def test_coordinator_restricted_to_their_queues(app_client: TestClient, secured: Bridge, keys):
    """With a queues claim a coordinator reads and works only those queues."""
    headers = bearer(token(keys, "dana", ["coordinator"], queues=["scheduling"]))
    assert app_client.get("/queues/scheduling/tasks", headers=headers).status_code == 200
    assert app_client.get("/queues/insurance/tasks", headers=headers).status_code == 403
    assert app_client.get("/tasks", headers=headers).status_code == 403
    assert app_client.get("/tasks?queue=scheduling", headers=headers).status_code == 200
    other = first_task(secured, "insurance")
    assert app_client.get(f"/tasks/{other.id}", headers=headers).status_code == 403
    claim = app_client.post(
        f"/tasks/{other.id}/claim", headers=headers, json={"coordinator": "dana"}
    )
    assert claim.status_code == 403
    assert secured.store.get_task(other.id).assignee is None
    mine = first_task(secured)
    ok = app_client.post(f"/tasks/{mine.id}/claim", headers=headers, json={"coordinator": "dana"})
    assert ok.status_code == 200


def test_huddle_and_family_flags_respect_queues_and_identity(app_client: TestClient, keys):
    """A coordinator restricted to scheduling sees only scheduling tasks on the huddle list;
    a coordinator may set a family flag only as themself (an admin for anyone)."""
    headers = bearer(token(keys, "dana", ["coordinator"], queues=["scheduling"]))
    body = app_client.get("/huddle", headers=headers).json()
    assert body["patients"]
    assert {t["queue"] for g in body["patients"] for t in g["tasks"]} == {"scheduling"}
    flag = {"source": "ehr", "patient": "Patient/x", "contact": "RelatedPerson/y"}
    flag |= {"authorized": True, "coordinator": "someone-else"}
    as_other = app_client.post("/family/sharing", headers=headers, json=flag)
    assert as_other.status_code == 403
    admin = app_client.post("/family/sharing", headers=role_headers(keys, "admin"), json=flag)
    assert admin.status_code == 404  # past the identity check: no such patient


def test_outcomes_respect_queues(app_client: TestClient, secured: Bridge, keys):
    """A coordinator restricted to insurance gets outcome figures over insurance tasks only
    (no task id or missed-appointment reference from other queues), 403 for another queue;
    an admin may scope to one queue or see all."""
    window = {"from": "2026-01-01", "to": "2026-11-26"}
    headers = bearer(token(keys, "dana", ["coordinator"], queues=["insurance"]))
    mine = app_client.get("/outcomes", params=window, headers=headers)
    assert mine.status_code == 200
    insurance = {t.id for t in secured.store.iter_tasks(queue="insurance")}
    every = {t.id: t.queue for t in secured.store.iter_tasks()}

    def task_ids(body: Any) -> set[str]:
        found: set[str] = set()
        stack = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key.endswith("task_ids"):
                        found |= set(value)
                    else:
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)
        return found

    body = mine.json()
    assert task_ids(body) <= insurance
    assert body["no_show_overall"]["missed"] > 0  # the counts are over every appointment ...
    assert body["no_show_overall"]["appointments"] == []  # ... but none is named to insurance
    assert {s["queue"] for s in body["sla"]} <= {"all", "insurance"}
    other = app_client.get("/outcomes", params=window | {"queue": "scheduling"}, headers=headers)
    assert other.status_code == 403
    csv_other = app_client.get("/outcomes.csv", params={"queue": "scheduling"}, headers=headers)
    assert csv_other.status_code == 403
    admin = role_headers(keys, "admin")
    everything = app_client.get("/outcomes", params=window, headers=admin).json()
    assert everything["no_show_overall"]["appointments"]
    scheduling_ids = task_ids(everything) - insurance
    assert scheduling_ids and {every[i] for i in scheduling_ids} - {"insurance"}
    one = app_client.get("/outcomes", params=window | {"queue": "scheduling"}, headers=admin)
    assert {every[i] for i in task_ids(one.json())} <= {"scheduling"}


# -- audit -----------------------------------------------------------------------------------


def audit_page(client: TestClient, keys, **params: Any) -> dict[str, Any]:
    """GET /audit as an admin."""
    answer = client.get("/audit", params=params, headers=role_headers(keys, "admin"))
    assert answer.status_code == 200
    return answer.json()


def test_history_read_is_audited_without_phi(app_client: TestClient, keys):
    """A history read leaves an AuditEvent naming who, which patient, when, from where; no name."""
    pid = PATIENT["id"]
    read = app_client.get(f"/patients/ehr/{pid}/history", headers=role_headers(keys, "coordinator"))
    assert read.status_code == 200
    [event] = audit_page(app_client, keys, patient=pid)["items"]
    assert event["resourceType"] == "AuditEvent"
    assert (event["action"], event["outcome"]) == ("R", "0")
    assert event["subtype"][0]["code"] == "patient-history"
    assert event["agent"][0]["who"]["identifier"]["value"] == "dana"
    assert event["agent"][0]["role"] == [{"text": "coordinator"}]
    assert event["agent"][0]["network"]["address"] == "testclient"
    assert event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
    assert event["recorded"].startswith("20")
    text = json.dumps(event)
    assert PATIENT["name"][0]["family"] not in text
    assert PATIENT.get("birthDate", "never-there") not in text


def test_task_changes_are_audited(app_client: TestClient, secured: Bridge, keys):
    """Claim, comment, status and bulk assign each leave a record with the task and patient;
    a refused change is recorded as a failure."""
    dana = role_headers(keys, "coordinator")
    task = first_task(secured)
    app_client.post(f"/tasks/{task.id}/claim", headers=dana, json={"coordinator": "dana"})
    app_client.post(
        f"/tasks/{task.id}/comments",
        headers=dana,
        json={"coordinator": "dana", "text": "Mrs Smith asked for a callback"},
    )
    app_client.post(
        f"/tasks/{task.id}/status",
        headers=dana,
        json={"coordinator": "dana", "status": "completed"},
    )
    refused = app_client.post(f"/tasks/{task.id}/release", headers=dana, json={"coordinator": "x"})
    assert refused.status_code == 403
    others = [t.id for t in list(secured.store.iter_tasks(queue="insurance"))[:2]]
    bulk = app_client.post(
        "/tasks/bulk-assign",
        headers=role_headers(keys, "admin"),
        json={"coordinator": "ada", "assignee": "dana", "ids": others},
    )
    assert bulk.status_code == 200
    events = audit_page(app_client, keys, task_id=task.id)["items"]
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in events] == [
        ("task-release", "4"),
        ("task-status", "0"),
        ("task-comment", "0"),
        ("task-claim", "0"),
    ]
    assert {e["entity"][0]["what"]["reference"] for e in events} == {task.patient}
    assert "callback" not in json.dumps(events)
    bulk_events = audit_page(app_client, keys, agent="ada")["items"]
    assert sorted(e["entity"][1]["what"]["identifier"]["value"] for e in bulk_events) == sorted(
        others
    )
    assert {e["subtype"][0]["code"] for e in bulk_events} == {"task-bulk-assign"}


def test_audit_pages_with_cursor(app_client: TestClient, keys):
    """GET /audit pages newest first through next_cursor."""
    headers = role_headers(keys, "coordinator")
    for _ in range(3):
        app_client.get(f"/patients/ehr/{PATIENT['id']}/history", headers=headers)
    first = audit_page(app_client, keys, limit=2)
    second = audit_page(app_client, keys, limit=2, cursor=first["next_cursor"])
    ids = [int(e["id"]) for e in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert second["next_cursor"] is None


def test_reads_of_task_lists_are_not_audited(app_client: TestClient, keys):
    """Listing queues and tasks writes no audit record (only history reads and changes do)."""
    app_client.get("/tasks", headers=role_headers(keys, "coordinator"))
    assert audit_page(app_client, keys)["items"] == []


# -- secure defaults -------------------------------------------------------------------------


def test_security_headers(app_client: TestClient):
    """JSON answers carry nosniff, no-referrer, frame DENY, a closed CSP and no-store; the docs
    page keeps its scripts."""
    answer = app_client.get("/healthz")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert answer.headers["Cache-Control"] == "no-store"
    docs = app_client.get("/docs")
    assert docs.status_code == 200 and "Content-Security-Policy" not in docs.headers
    assert docs.headers["X-Frame-Options"] == "DENY"


def test_cors_closed_by_default_and_open_when_configured(secured: Bridge, jwks_file: Path):
    """No CORS headers unless origins are configured; then only those origins."""
    preflight = {"Origin": "https://ui.test", "Access-Control-Request-Method": "GET"}
    closed = TestClient(create_app(secured)).options("/queues", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    b = sample_bridge("ehr", auth=auth_settings(jwks_file, cors_origins=["https://ui.test"]))
    try:
        client = TestClient(create_app(b))
        opened = client.options("/queues", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://ui.test"
        evil = client.options("/queues", headers={**preflight, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in evil.headers
    finally:
        b.close()


def test_body_too_large_is_413(jwks_file: Path, keys):
    """A body over max_body_bytes is refused with 413, declared or streamed."""
    b = sample_bridge("ehr", auth=auth_settings(jwks_file, max_body_bytes=512))
    try:
        client = TestClient(create_app(b))
        task = first_task(b)
        big = {"coordinator": "dana", "text": "x" * 2000}
        headers = role_headers(keys, "coordinator")
        answer = client.post(f"/tasks/{task.id}/comments", headers=headers, json=big)
        assert answer.status_code == 413
        assert answer.json()["error"] == "payload_too_large"
        streamed = client.post(
            f"/tasks/{task.id}/comments",
            headers={**headers, "Content-Type": "application/json"},
            content=iter([json.dumps(big).encode()[:400], json.dumps(big).encode()[400:]]),
        )
        assert streamed.status_code == 413
        assert b.store.task_history(task.id)[-1].action != "comment"
    finally:
        b.close()


def test_rate_limit_is_429_with_retry_after(jwks_file: Path, keys):
    """Past its per-minute budget a caller gets 429 and Retry-After; probes and other callers
    are not throttled."""
    b = sample_bridge("ehr", auth=auth_settings(jwks_file, rate_limit_per_minute=3))
    try:
        client = TestClient(create_app(b))
        headers = role_headers(keys, "admin")
        statuses = [client.get("/queues", headers=headers).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.get("/queues", headers=headers)
        assert limited.json()["error"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        assert client.get("/healthz").status_code == 200
        assert client.get("/queues", headers=role_headers(keys, "coordinator")).status_code == 200
    finally:
        b.close()


def test_token_bucket_refills():
    """A bucket refills at per_minute/60 tokens a second and says how long to wait."""
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])
    assert all(bucket.take("k") == 0 for _ in range(60))
    assert bucket.take("k") == pytest.approx(1.0)
    now[0] = 1.0
    assert bucket.take("k") == 0
    assert bucket.take("other") == 0


# -- API keys --------------------------------------------------------------------------------


def test_key_hash_round_trip():
    """A key verifies against its own hash only (both forms); a malformed hash verifies nothing."""
    for stored in (hash_key("s3cret", iterations=1000), hash_key("s3cret")):
        assert verify_key("s3cret", stored)
        assert not verify_key("s3cret!", stored)
    assert hash_key("s3cret", iterations=1000).startswith("pbkdf2_sha256$1000$")
    assert hash_key("s3cret").startswith("sha256$")
    assert not verify_key("s3cret", "sha256$zz")
    assert not verify_key("s3cret", "md5$abc")


def test_fast_and_slow_keys_both_authenticate(jwks_file: Path):
    """A generated key (sha256) and a chosen key (PBKDF2) each map to their own account."""
    keys_config = [
        {"name": "fast", "hash": hash_key("k-fast"), "roles": ["admin"]},
        {"name": "slow", "hash": hash_key("k-slow", iterations=1000), "roles": ["coordinator"]},
    ]
    b = sample_bridge("ehr", auth=auth_settings(jwks_file, api_keys=keys_config))
    try:
        client = TestClient(create_app(b))
        assert client.get("/audit", headers={"X-API-Key": "k-fast"}).status_code == 200
        assert client.get("/audit", headers={"X-API-Key": "k-slow"}).status_code == 403
        assert client.get("/tasks", headers={"X-API-Key": "k-slow"}).status_code == 200
        assert client.get("/tasks", headers={"X-API-Key": "k-other"}).status_code == 401
    finally:
        b.close()


def test_cli_hash_key_prints_a_key_and_its_hash():
    """`fhir-bridge auth hash-key` prints a new key and a hash that verifies it."""
    result = CliRunner().invoke(auth_app, ["hash-key"])
    assert result.exit_code == 0
    key = re.search(r"key:\s+(\S+)", result.output)
    stored = re.search(r"hash:\s+(\S+)", result.output)
    assert key and stored and verify_key(key.group(1), stored.group(1))
    assert stored.group(1).startswith("sha256$")
    piped = CliRunner().invoke(
        auth_app, ["hash-key", "--stdin", "--iterations", "100000"], input="abc\n"
    )
    assert piped.output.startswith("pbkdf2_sha256$100000$")
    assert verify_key("abc", piped.output.strip())


def test_jwks_from_url(keys, jwks_file: Path):
    """An issuer's keys can come from a JWKS URL (fetched once, then cached)."""
    served: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """Serve the JWKS file."""
            served.append(self.path)
            body = jwks_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/certs"
    issuer = {"issuer": ISS, "audience": AUD, "jwks_url": url}
    b = sample_bridge("ehr", auth=AuthSettings(issuers=[issuer]))
    try:
        client = TestClient(create_app(b))
        headers = role_headers(keys, "admin")
        assert client.get("/audit", headers=headers).status_code == 200
        assert client.get("/audit", headers=headers).status_code == 200
        forged = bearer(token(keys, "ada", ["admin"], key=keys["bad"]))
        assert client.get("/audit", headers=forged).status_code == 401
        assert served[0] == "/certs"
    finally:
        b.close()
        server.shutdown()
        server.server_close()


def test_auth_off_still_audits_with_the_named_coordinator():
    """With auth off (the demo) changes are still audited, the body's coordinator as agent and
    no roles claimed."""
    b = sample_bridge("ehr")
    try:
        client = TestClient(create_app(b))
        task = first_task(b)
        assert client.post(f"/tasks/{task.id}/claim", json={"coordinator": "dana"}).is_success
        [record], _ = b.store.list_audit()
        assert (record.agent, record.roles, record.task_id) == ("dana", (), task.id)
        assert (record.subtype, record.outcome, record.patient) == ("task-claim", "0", task.patient)
    finally:
        b.close()


def test_only_credentials_that_may_wait_leave_the_event_loop(jwks_file: Path, keys):
    """`authorize` checks on the event loop unless the check may wait: a first (slow) API key
    check, or a token from an issuer whose keys come from a URL."""
    from starlette.requests import Request

    from fhir_bridge.api.auth import Authenticator

    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "GET", "path": "/tasks", "headers": raw})

    by_url = {
        "issuer": "https://idp.example/url",
        "audience": AUD,
        "jwks_url": "https://idp.example/jwks",
    }
    auth = Authenticator(
        auth_settings(jwks_file, issuers=[auth_settings(jwks_file).issuers[0], by_url])
    )
    key = request({"X-API-Key": API_KEY})
    assert auth.may_block(key)  # the first check of a key is PBKDF2
    assert auth.principal(key).subject == "reporting-job"
    assert not auth.may_block(key)  # verified once: a dictionary lookup
    assert not auth.may_block(request(bearer(token(keys, "ann", ["coordinator"]))))  # JWKS file
    from_url = token(keys, "ann", ["coordinator"], iss="https://idp.example/url")
    assert auth.may_block(request(bearer(from_url)))
    assert not auth.may_block(request(bearer("not-a-jwt")))  # refused at once
    assert not auth.may_block(request({}))
