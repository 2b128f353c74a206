"""The family webhook (issue 9): a completed family task's recorded message is POSTed, signed,
once, through the outbox, to a real HTTP receiver on 127.0.0.1; refused, withdrawn or
unrecorded messages are parked, never sent."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
import respx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fhir_bridge.api import create_app
from fhir_bridge.cli_outbox import outbox_app
from fhir_bridge.config import (
    FamilyWebhookConfig,
    Settings,
    SourceConfig,
    StorageConfig,
    WritebackConfig,
    load_settings,
)
from fhir_bridge.errors import ConfigError, StoreError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.fhir.client import parse_retry_after
from fhir_bridge.patients.contacts import FACT_KIND, fact_key, flag_value
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.keys import Keys
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxEntry, OutboxStatus, Task, TaskStatus
from fhir_bridge.writeback.admin import describe
from fhir_bridge.writeback.delivery import Delivery
from fhir_bridge.writeback.webhook import (
    WEBHOOK_ACTION,
    FamilyWebhook,
    WebhookRefused,
    WebhookRetry,
    drafts,
    sign,
    verify,
)
from tests.api.sample import sample_bridge
from tests.logcapture import json_log_lines
from tests.sandbox_fixtures import seeded_server
from tests.store.conftest import REDIS_URL, delete_namespace
from tests.utils import NOW, ROOT, settings_file

SECRET_ENV = "FHIR_BRIDGE_TEST_WEBHOOK_SECRET"
SECRET = "s3cret-for-tests-only"
EHR = "http://ehr.test/fhir"
SYSTEM = "urn:fhir-bridge:task"
MONTE = "Patient/ae95b00c-2769-45b2-884f-316c7502c8ff"


# -- a real receiver -----------------------------------------------------------------------------


class Receiver:
    """An HTTP server on a free loopback port that records each POST and answers from a
    script of (status, headers), then 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/family-messages"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        """Each POST's JSON body, in arrival order."""
        return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver answering 200 unless a test scripts otherwise."""
    r = Receiver()
    yield r
    r.close()


# -- a fake EHR for the FHIR side (the Communication write itself is tested on SEKMET) -----------


class FakeEhr:
    """Just enough FHIR for the family write-back: creates (If-None-Exist on identifier),
    reads of stored focus resources, identifier searches. `refuse` answers POSTs of a type."""

    def __init__(self, bridge: Bridge, source: str) -> None:
        self.bridge, self.source = bridge, source
        self.made: dict[str, list[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.refuse: dict[str, int] = {}

    def _find(self, rtype: str, identifier: str) -> list[dict[str, Any]]:
        system, _, value = identifier.partition("|")
        return [
            r
            for r in self.made.get(rtype, [])
            if {"system": system, "value": value} in r.get("identifier", [])
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")[2:]
        rtype = parts[0]
        if request.method == "POST":
            if rtype in self.refuse:
                return httpx.Response(self.refuse[rtype], json={"resourceType": "OperationOutcome"})
            body = json.loads(request.content)
            match = request.headers.get("If-None-Exist", "").removeprefix("identifier=")
            if match and (found := self._find(rtype, match)):
                return httpx.Response(200, json=found[0])
            body |= {"id": f"{rtype.lower()}-{next(self.ids)}", "meta": {"versionId": "1"}}
            self.made.setdefault(rtype, []).append(body)
            return httpx.Response(201, json=body)
        if request.method == "PUT":
            body = json.loads(request.content) | {"meta": {"versionId": "2"}}
            kept = [r for r in self.made.get(rtype, []) if r["id"] != parts[1]]
            self.made[rtype] = [*kept, body]
            return httpx.Response(200, json=body)
        if request.method == "GET" and len(parts) == 2:
            stored = self.bridge.store.get_resource(self.source, rtype, parts[1])
            if stored is None:
                return httpx.Response(404, json={"resourceType": "OperationOutcome"})
            return httpx.Response(200, json=stored.body | {"meta": {"versionId": "1"}})
        if request.method == "GET" and rtype in self.refuse:
            return httpx.Response(self.refuse[rtype], json={"resourceType": "OperationOutcome"})
        if request.method == "GET":
            hits = self._find(rtype, request.url.params.get("identifier", ""))
            entries = [{"resource": r, "search": {"mode": "match"}} for r in hits]
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries}
            )
        return httpx.Response(405)


# -- the bridge ----------------------------------------------------------------------------------


def webhook_settings(url: str, **more: Any) -> dict[str, Any]:
    """`family.webhook` settings for `url`, signed with the test secret."""
    return {"webhook": {"url": url, "secret_env": SECRET_ENV} | more}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signing secret, in the environment as production has it."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """A factory of an empty store of each engine (Redis under a fresh prefix, deleted after)."""
    prefix = f"test-{uuid.uuid4().hex}"
    if request.param == "sqlite":
        yield lambda: SqliteStore(":memory:")
        return
    yield lambda: RedisStore(REDIS_URL, key_prefix=prefix)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    delete_namespace(client, Keys(prefix))
    client.close()


class Env:
    """A sample bridge with the webhook on, its fake EHR, and a movable delivery clock."""

    def __init__(self, receiver: Receiver | None, store: Any = None, **hook: Any) -> None:
        family = webhook_settings(receiver.url, **hook) if receiver else {}
        self.bridge = sample_bridge("ehr", store=store, family=family)
        self.ehr = FakeEhr(self.bridge, "ehr")
        self.now = NOW

    def deliver_all(self, scans: int = 6) -> None:
        """Scan the outbox until nothing is due (one entry per task per scan)."""
        for _ in range(scans):
            if not self.bridge.store.due_outbox(self.now):
                return
            self.scan()

    def scan(self) -> None:
        """One scan of the outbox, the FHIR side answered by the fake EHR."""

        async def go() -> None:
            client = FhirClient(EHR, transport=httpx.MockTransport(self.ehr), source="ehr")
            async with client:
                await Delivery(
                    self.bridge.store,
                    {"ehr": client},
                    self.bridge.settings.writeback,
                    lambda: self.now,
                    webhook=self.bridge.webhook,
                ).deliver_due()

        asyncio.run(go())

    def complete(self, task: Task, coordinator: str = "ann") -> list[OutboxEntry]:
        """Claim and complete a task; its outbox entries."""
        self.bridge.tasks.claim(task.id, coordinator)
        self.bridge.tasks.change_status(task.id, TaskStatus.COMPLETED, coordinator)
        return self.bridge.store.list_outbox(task_id=task.id)

    def family_task(self, patient: str | None = None) -> Task:
        """An open family task (of `patient` if given), its recipient a RelatedPerson unless
        a patient is named."""
        tasks = sorted(self.bridge.store.iter_tasks(queue="family"), key=lambda t: t.id)
        for task in tasks:
            if task.status is not TaskStatus.OPEN:
                continue
            if patient is None and any(lb.startswith("recipient:Related") for lb in task.labels):
                return task
            if patient is not None and task.patient == patient:
                return task
        raise AssertionError("no such family task in the sample")

    def entry(self, entry_id: int) -> OutboxEntry:
        """An outbox entry as stored now."""
        found = self.bridge.store.get_outbox(entry_id)
        assert found is not None
        return found

    def close(self) -> None:
        """Close the bridge's store."""
        self.bridge.close()


@pytest.fixture
def env(receiver: Receiver) -> Iterator[Env]:
    """The sample bridge on SQLite with the webhook pointing at `receiver`."""
    e = Env(receiver)
    yield e
    e.close()


def _webhook(entries: list[OutboxEntry]) -> OutboxEntry:
    """The one webhook entry among a task's entries."""
    [hook] = [e for e in entries if e.action == WEBHOOK_ACTION]
    return hook


# -- tests ---------------------------------------------------------------------------------------


def test_one_signed_post_per_completion_after_the_communication(receiver: Receiver, engine):
    """On either engine, completing a family task queues mirror, Communication, webhook (in
    that order); delivery POSTs once, signed, with the Communication's reference, the contact,
    the message and an Idempotency-Key stable per completion; no PHI reaches the logs."""
    env = Env(receiver, store=engine())
    try:
        task = env.family_task()
        entries = env.complete(task)
        assert [e.action for e in entries] == [
            MIRROR_ACTION,  # the claim
            MIRROR_ACTION,  # the completion, then its actions
            "create",
            WEBHOOK_ACTION,
        ]
        with json_log_lines() as logs:
            env.deliver_all()
        assert {e.status for e in env.bridge.store.list_outbox(task_id=task.id)} == {
            OutboxStatus.DELIVERED
        }
        [(headers, raw)] = receiver.posts
        communication, hook = entries[-2:]
        assert headers["idempotency-key"] == f"{task.id}-{hook.id}"
        assert headers["content-type"].startswith("application/json")
        assert headers["user-agent"].startswith("fhir-bridge/")
        assert headers["x-fhir-bridge-event"] == "family-message"
        signature = headers["x-fhir-bridge-signature"]
        assert signature.startswith(f"t={int(NOW.timestamp())},v1=")
        assert verify(SECRET.encode(), signature, raw, now=NOW.timestamp())
        assert not verify(b"another secret", signature, raw, now=NOW.timestamp())
        assert not verify(SECRET.encode(), signature, raw + b" ", now=NOW.timestamp())

        body = json.loads(raw)
        [made] = env.ehr.made["Communication"]
        recipient = next(lb for lb in task.labels if lb.startswith("recipient:"))[10:]
        assert body["event"] == "family-message"
        assert body["idempotency_key"] == headers["idempotency-key"]
        assert body["task"] == {"id": task.id, "kind": task.kind, "rule": task.rule_id}
        assert body["patient"] == {"source": "ehr", "reference": task.patient}
        assert body["about"] == task.focus
        assert body["message"]["text"] == task.description == made["payload"][0]["contentString"]
        assert body["recipient"]["reference"] == recipient == made["recipient"][0]["reference"]
        assert body["recipient"]["authorization"].startswith("Consent/")
        assert {"name", "relationship", "channel", "value", "language"} <= set(body["recipient"])
        assert body["completed"] == {"by": "ann", "at": NOW.isoformat()}
        assert body["communication"] == {
            "identifier": {"system": SYSTEM, "value": f"{task.id}-{communication.id}"},
            "reference": f"Communication/{made['id']}",
        }
        text = logs.text
        assert task.description and task.description not in text
        assert SECRET not in text and "x-fhir-bridge-signature" not in text.lower()
        posted = [line for line in logs.lines if line["event"] == "family_webhook_post"]
        assert [(p["entry_id"], p["status"]) for p in posted] == [(hook.id, 200)]

        env.now += timedelta(hours=1)
        env.deliver_all()
        assert len(receiver.posts) == 1  # delivered: never sent again
    finally:
        env.close()


def test_503_then_200_is_retried_after_retry_after_and_delivered_once(env: Env, receiver: Receiver):
    """A 503 with Retry-After: 120 parks nothing: the entry waits 120 s (not the 2 s backoff),
    then goes out again with the same key and body and is delivered."""
    receiver.script = [(503, {"Retry-After": "120"})]
    hook = _webhook(env.complete(env.family_task()))
    env.deliver_all()
    pending = env.entry(hook.id)
    assert (pending.status, pending.attempts) == (OutboxStatus.PENDING, 1)
    assert pending.next_attempt_at == NOW + timedelta(seconds=120)
    assert "503 Service Unavailable" in (pending.last_error or "")
    env.now += timedelta(seconds=119)
    env.deliver_all()
    assert len(receiver.posts) == 1
    env.now += timedelta(seconds=2)
    env.deliver_all()
    assert env.entry(hook.id).status is OutboxStatus.DELIVERED
    (first, body1), (second, body2) = receiver.posts
    assert first["idempotency-key"] == second["idempotency-key"]
    assert body1 == body2
    env.now += timedelta(hours=1)
    env.deliver_all()
    assert len(receiver.posts) == 2


def test_a_crash_after_the_post_resends_the_same_idempotency_key(
    env: Env, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    """When recording the 2xx fails (the process dies there), the entry is still pending and
    its redelivery carries the same Idempotency-Key: receivers dedupe on it."""
    hook = _webhook(env.complete(env.family_task()))
    for _ in range(3):  # two mirrors, then Communication
        env.scan()
    real = env.bridge.store.outbox_delivered

    def crash(entry_id: int, now: datetime) -> None:
        if entry_id == hook.id:
            raise StoreError("disk gone")
        real(entry_id, now)

    monkeypatch.setattr(env.bridge.store, "outbox_delivered", crash)
    with pytest.raises(StoreError):
        env.scan()
    monkeypatch.setattr(env.bridge.store, "outbox_delivered", real)
    env.deliver_all()
    assert env.entry(hook.id).status is OutboxStatus.DELIVERED
    keys = [h["idempotency-key"] for h, _ in receiver.posts]
    assert keys == [f"{hook.task_id}-{hook.id}"] * 2


def test_400_is_parked_dead_with_the_status_and_not_retried(env: Env, receiver: Receiver):
    """A 400 parks the entry as dead with the status (no receiver text); later scans send
    nothing; `outbox show`'s view names the action, the reason and the idempotency key."""
    receiver.script = [(400, {})]
    hook = _webhook(env.complete(env.family_task()))
    env.deliver_all()
    dead = env.entry(hook.id)
    assert dead.status is OutboxStatus.DEAD
    assert dead.last_error == "the webhook receiver answered 400 Bad Request"
    assert dead.detail is not None and dead.detail["status"] == 400
    env.now += timedelta(days=1)
    env.deliver_all()
    assert len(receiver.posts) == 1
    shown = describe(dead, payload=True)
    assert shown["action"] == "family-webhook"
    assert shown["idempotency_key"] == f"{hook.task_id}-{hook.id}"


def test_no_webhook_configured_queues_no_entry():
    """Without `family.webhook.url`, a completion queues the mirror and the Communication only."""
    env = Env(None)
    try:
        assert env.bridge.webhook is None
        entries = env.complete(env.family_task())
        assert [e.action for e in entries] == [MIRROR_ACTION, MIRROR_ACTION, "create"]
    finally:
        env.close()


def test_an_entry_left_when_the_webhook_is_turned_off_is_parked(env: Env, receiver: Receiver):
    """An entry queued while the webhook was on, delivered after it was turned off, is parked
    dead saying so (an operator discards or retries it), never dropped silently."""
    hook = _webhook(env.complete(env.family_task()))
    env.bridge.webhook = None
    env.deliver_all()
    parked = env.entry(hook.id)
    assert parked.status is OutboxStatus.DEAD
    assert parked.last_error == "the family webhook is not configured (family.webhook.url)"
    assert receiver.posts == []


def test_outbox_cli_shows_a_parked_webhook_entry(tmp_path, receiver: Receiver):
    """`fhir-bridge outbox list` names the action; `show` gives status, reason, HTTP status
    and the Idempotency-Key the receiver saw."""
    receiver.script = [(422, {})]
    env = Env(receiver, store=SqliteStore(tmp_path / "b.db"))
    try:
        hook = _webhook(env.complete(env.family_task()))
        env.deliver_all()
    finally:
        env.close()
    config = settings_file(tmp_path)
    listed = CliRunner().invoke(outbox_app, ["list", "-c", str(config), "--status", "dead"])
    assert listed.exit_code == 0, listed.output
    assert "family-webhook" in listed.output and "422" in listed.output
    shown = CliRunner().invoke(outbox_app, ["show", str(hook.id), "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.output)
    assert (got["action"], got["status"], got["detail"]["status"]) == (
        "family-webhook",
        "dead",
        422,
    )
    assert got["idempotency_key"] == receiver.posts[0][0]["idempotency-key"]
    assert got["last_error"] == "the webhook receiver answered 422 Unprocessable Entity"


def test_a_source_that_cannot_search_communications_gives_no_reference(
    env: Env, receiver: Receiver
):
    """A 400 on `Communication?identifier=` does not hold the message back: it is sent with
    the Communication's identifier and `"reference": null`."""
    task = env.family_task()
    entries = env.complete(task)
    for _ in range(3):  # two mirrors and the Communication
        env.scan()
    env.ehr.refuse["Communication"] = 400
    env.deliver_all()
    assert env.entry(entries[-1].id).status is OutboxStatus.DELIVERED
    [body] = receiver.bodies()
    assert body["communication"] == {
        "identifier": {"system": SYSTEM, "value": f"{task.id}-{entries[-2].id}"},
        "reference": None,
    }


def test_only_completed_family_tasks_queue_it(env: Env):
    """Cancelling a family task, or completing a task of another queue, queues no webhook."""
    family = env.family_task()
    env.bridge.tasks.change_status(family.id, TaskStatus.CANCELLED, "ann")
    other = next(t for t in env.bridge.store.iter_tasks(queue="scheduling") if t.is_active)
    env.bridge.tasks.change_status(other.id, TaskStatus.COMPLETED, "ann")
    actions = {e.action for e in env.bridge.store.list_outbox(limit=1000)}
    assert WEBHOOK_ACTION not in actions


def test_a_contact_no_longer_authorized_is_not_sent(env: Env, receiver: Receiver):
    """Monte's sister (a Patient.contact, authorized by a coordinator's flag) gets the first
    message, named by her `contact:` label; once the flag is withdrawn, the next completed
    message is recorded as a Communication but its webhook is parked, never POSTed."""
    api = TestClient(create_app(env.bridge))
    contact = f"{MONTE}/contact/0"
    body = {"source": "ehr", "patient": MONTE, "contact": contact, "authorized": True}
    assert api.post("/family/sharing", json=body | {"coordinator": "ann"}).status_code == 200
    first, second = [t for t in env.bridge.store.iter_tasks(queue="family") if t.patient == MONTE][
        :2
    ]
    assert "contact:" + contact in first.labels
    env.complete(first)
    env.deliver_all()
    [sent] = receiver.bodies()
    assert sent["recipient"]["reference"] == contact
    assert sent["recipient"]["fhir_recipient"] == MONTE

    withheld = flag_value(False, "bob", "2026-11-26T13:00")
    env.bridge.store.put_fact(FACT_KIND, fact_key("ehr", contact), withheld)
    entries = env.complete(second)
    env.deliver_all()
    assert len(receiver.posts) == 1
    assert [env.entry(e.id).status for e in entries] == [
        OutboxStatus.DELIVERED,
        OutboxStatus.DELIVERED,
        OutboxStatus.DELIVERED,
        OutboxStatus.DEAD,
    ]
    parked = env.entry(entries[-1].id)
    assert parked.last_error == (
        f"not sent: sharing with {contact} is no longer authorized "
        "(withheld by coordinator bob on 2026-11-26)"
    )


def test_a_message_never_recorded_is_not_sent(env: Env, receiver: Receiver):
    """When the EHR refuses the Communication (422, parked dead), the webhook is parked dead
    naming that entry instead of announcing a message the record does not hold; retrying
    both, in either order, records it and then sends it."""
    env.ehr.refuse["Communication"] = 422
    entries = env.complete(env.family_task())
    env.deliver_all()
    communication, hook = env.entry(entries[-2].id), env.entry(entries[-1].id)
    assert communication.status is OutboxStatus.DEAD
    assert hook.status is OutboxStatus.DEAD
    assert hook.last_error == (
        f"not sent: the message was never recorded (outbox entry {communication.id}, its "
        "Communication, is dead); retry that entry, then this one"
    )
    assert receiver.posts == []

    del env.ehr.refuse["Communication"]
    env.bridge.store.outbox_requeue(hook.id, env.now)
    env.bridge.store.outbox_requeue(communication.id, env.now)
    env.deliver_all()
    assert [env.entry(e.id).status for e in entries[-2:]] == [OutboxStatus.DELIVERED] * 2
    assert len(receiver.posts) == 1


def test_dry_run_source_sends_nothing(receiver: Receiver):
    """A source whose write policy is dry-run writes no Communication and POSTs no webhook."""
    env = Env(receiver)
    try:
        policy = {"mode": "dry-run"}
        env.bridge.settings = env.bridge.settings.model_copy(
            update={
                "sources": tuple(
                    s.model_copy(update={"write_policy": s.write_policy.model_copy(update=policy)})
                    for s in env.bridge.settings.sources
                )
            }
        )
        entries = env.complete(env.family_task())

        async def go() -> None:
            async with FhirClient(EHR, transport=httpx.MockTransport(env.ehr)) as client:
                for _ in range(4):
                    await Delivery(
                        env.bridge.store,
                        {"ehr": client},
                        env.bridge.settings.writeback,
                        lambda: NOW,
                        policies=env.bridge.write_policies(),
                        webhook=env.bridge.webhook,
                    ).deliver_due()

        asyncio.run(go())
        assert [env.entry(e.id).status for e in entries] == [OutboxStatus.DELIVERED] * 4
        assert receiver.posts == [] and env.ehr.made == {}
    finally:
        env.close()


# -- edge cases of one POST (respx) --------------------------------------------------------------


def _entry(**payload: Any) -> OutboxEntry:
    """A pending webhook entry 7 of task t1."""
    return OutboxEntry(
        7, "t1", "ehr", WEBHOOK_ACTION, payload, OutboxStatus.PENDING, 0, NOW, None, NOW, None
    )


async def _post(hook: FamilyWebhook) -> None:
    """One POST of a minimal body."""
    await hook._post(_entry(), {"event": "family-message"}, NOW)


@respx.mock
async def test_timeouts_and_connection_errors_retry():
    """A timeout or a refused connection is a retry, naming neither URL nor body."""
    route = respx.post("https://msg.example.org/hook")
    hook = FamilyWebhook(
        FamilyWebhookConfig(url="https://msg.example.org/hook", secret_env=SECRET_ENV)
    )
    route.side_effect = httpx.ReadTimeout("slow")
    with pytest.raises(WebhookRetry, match="did not answer within 10 s"):
        await _post(hook)
    route.side_effect = httpx.ConnectError("refused")
    with pytest.raises(WebhookRetry, match=r"unreachable \(ConnectError\)"):
        await _post(hook)


@respx.mock
@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "30"}, 30.0),
        (408, {}, None),
        (425, {}, None),
        (502, {"Retry-After": format_datetime(NOW + timedelta(minutes=5), usegmt=True)}, 300.0),
        (503, {"Retry-After": "soon"}, None),
    ],
)
async def test_temporary_statuses_retry_with_retry_after(status, headers, expected):
    """408/425/429/5xx retry; Retry-After in seconds or as an HTTP date becomes the wait."""
    respx.post("https://msg.example.org/hook").respond(status, headers=headers)
    hook = FamilyWebhook(
        FamilyWebhookConfig(url="https://msg.example.org/hook", secret_env=SECRET_ENV)
    )
    with pytest.raises(WebhookRetry) as caught:
        await _post(hook)
    assert (caught.value.status, caught.value.retry_after) == (status, expected)


@respx.mock
@pytest.mark.parametrize("status", [301, 401, 404, 410, 422])
async def test_other_answers_park(status):
    """A redirect (not followed: a POST body must not move) or another 4xx parks the entry."""
    respx.post("https://msg.example.org/hook").respond(status, text="Jane Doe +1 555 0100")
    hook = FamilyWebhook(
        FamilyWebhookConfig(url="https://msg.example.org/hook", secret_env=SECRET_ENV)
    )
    with pytest.raises(WebhookRefused) as caught:
        await _post(hook)
    assert caught.value.status == status
    assert "Jane" not in str(caught.value)


@respx.mock
async def test_headers_extra_bearer_and_a_missing_secret(monkeypatch: pytest.MonkeyPatch):
    """Extra headers and a bearer token from the environment are sent; a missing secret parks
    the entry naming the variable, never a value."""
    monkeypatch.setenv("FHIR_BRIDGE_TEST_WEBHOOK_TOKEN", "tok-123")
    route = respx.post("https://msg.example.org/hook").respond(204)
    config = FamilyWebhookConfig(
        url="https://msg.example.org/hook",
        secret_env=SECRET_ENV,
        bearer_token_env="FHIR_BRIDGE_TEST_WEBHOOK_TOKEN",
        headers={"X-Site": "north"},
    )
    await _post(FamilyWebhook(config))
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer tok-123"
    assert sent.headers["X-Site"] == "north"
    assert sent.headers["Idempotency-Key"] == "t1-7"
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(WebhookRefused, match=f"environment variable {SECRET_ENV}"):
        await _post(FamilyWebhook(config))
    assert route.call_count == 1


# -- pieces --------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    """The documented recipe: hex HMAC-SHA256 of "<t>." + body; stale signatures fail."""
    body = b'{"event":"family-message"}'
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", 1700000000, body) == f"t=1700000000,v1={mac}"
    assert verify(b"k", f"t=1700000000,v1={mac}", body, now=1700000100)
    assert not verify(b"k", f"t=1700000000,v1={mac}", body, now=1700000000 + 301)
    assert not verify(b"k", "garbage", body, now=1700000000)


def test_retry_after_reads_seconds_and_dates():
    """Retry-After (the FHIR client's parser, which the webhook uses): seconds, an HTTP date
    (relative to now, not negative), or nothing."""
    retry_after = parse_retry_after
    assert retry_after("7", NOW) == 7.0
    assert retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0.0
    assert retry_after(None, NOW) is None and retry_after("later", NOW) is None


def test_drafts_need_a_recorded_communication(env: Env):
    """No Communication among the change's entries (a rule without one): no webhook entry."""
    task = env.family_task()
    done = dataclasses.replace(task, status=TaskStatus.COMPLETED)
    assert drafts(done, (), "ann") == []


def test_config_validates_url_secret_and_headers(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """http(s) only, no credentials in the URL, a secret env var required, no header that the
    bridge sets or that carries a credential; errors never echo the URL; repr has no secret."""
    cases = [
        ({"url": "ftp://msg.example.org/x", "secret_env": "S"}, "family.webhook.url"),
        ({"url": "https://u:pw@msg.example.org/x", "secret_env": "S"}, "no user or password"),
        ({"url": "https://msg.example.org/x"}, "needs secret_env"),
        (
            {
                "url": "https://msg.example.org/x",
                "secret_env": "S",
                "headers": {"Authorization": "x"},
            },
            "carries a credential",
        ),
        ({"url": "https://msg.example.org/x", "secret_env": "S", "timeout": 0}, "timeout"),
        ({"ur1": "https://msg.example.org/x"}, "unknown key"),
    ]
    for webhook, message in cases:
        path = tmp_path / "bridge.yaml"
        path.write_text(json.dumps({"family": {"webhook": webhook}}))
        with pytest.raises(ConfigError) as caught:
            load_settings(path)
        assert message in str(caught.value), str(caught.value)
        assert "pw@" not in str(caught.value)
    assert not Settings().family.webhook.enabled
    config = FamilyWebhookConfig(url="https://msg.example.org/x?key=abc", secret_env=SECRET_ENV)
    hook = FamilyWebhook(config)
    assert SECRET not in repr(hook) + repr(config)
    assert "abc" not in repr(hook) + repr(config) + repr(Settings(family={"webhook": config}))
    assert os.environ[SECRET_ENV] == SECRET


# -- end to end against a real FHIR server -------------------------------------------------------


@pytest.mark.integration
async def test_on_sekmet_the_post_names_the_communication_the_ehr_holds(
    sekmet_factory, tmp_path, receiver: Receiver
):
    """Sync the sample from SEKMET, complete Juana's no-show message: SEKMET holds one
    Communication and the receiver one POST whose reference and text are that Communication's."""
    url = seeded_server(sekmet_factory)
    settings = Settings(
        auth={"enabled": False},
        sources=(SourceConfig(name="sekmet", base_url=url, page_size=50),),
        storage=StorageConfig(path=tmp_path / "bridge.db"),
        writeback=WritebackConfig(interval=0.1),
        family=webhook_settings(receiver.url),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, clock=lambda: NOW)
    try:
        [report] = await bridge.sync_once()
        assert report.ok
        [task] = [
            t
            for t in bridge.store.iter_tasks(queue="family")
            if t.rule_id == "family-appointment-missed"
        ]
        bridge.tasks.claim(task.id, "ann")
        bridge.tasks.change_status(task.id, TaskStatus.COMPLETED, "ann")
        for _ in range(6):
            if not bridge.store.due_outbox(NOW):
                break
            await bridge.deliver_once()
        entries = bridge.store.list_outbox(task_id=task.id)
        assert {e.status for e in entries} == {OutboxStatus.DELIVERED}
        communication = entries[-2]
        key = f"{SYSTEM}|{task.id}-{communication.id}"
        found = httpx.get(f"{url}/Communication", params={"identifier": key}).json()
        [made] = [e["resource"] for e in found["entry"]]
        [(headers, raw)] = receiver.posts
        body = json.loads(raw)
        assert verify(SECRET.encode(), headers["x-fhir-bridge-signature"], raw, now=NOW.timestamp())
        assert body["communication"]["reference"] == f"Communication/{made['id']}"
        assert body["message"]["text"] == made["payload"][0]["contentString"]
        assert body["recipient"]["reference"] == made["recipient"][0]["reference"]
        assert body["message"]["language"] == "es"
    finally:
        bridge.close()
