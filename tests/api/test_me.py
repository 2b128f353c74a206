"""GET /me: who the caller is as the API sees them (the web UI's sign-in check)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.api.auth import hash_key
from tests.api.sample import sample_bridge


def test_me_with_auth_off_is_the_demo_user(api: TestClient):
    """With auth off /me answers the configured demo user with every role, no credentials."""
    answer = api.get("/me")
    assert answer.status_code == 200
    assert answer.json() == {
        "subject": "demo-coordinator",
        "roles": ["coordinator", "integration-engineer", "admin"],
        "queues": None,
        "auth_enabled": False,
    }


def test_me_demo_user_is_configurable():
    """`api.demo_user` names who the UI acts as in the demo."""
    bridge = sample_bridge("ehr", api={"demo_user": "sam.lee"})
    try:
        assert TestClient(create_app(bridge)).get("/me").json()["subject"] == "sam.lee"
    finally:
        bridge.close()


def test_me_with_an_api_key_names_the_account():
    """With auth on, /me answers the key's name, roles and queue restriction; no key is 401."""
    keys = [
        {
            "name": "dana",
            "hash": hash_key("k-dana"),
            "roles": ["coordinator"],
            "queues": ["records"],
        },
        {"name": "ada", "hash": hash_key("k-ada"), "roles": ["admin", "coordinator"]},
    ]
    keys[0]["queues"] = ["records"]
    bridge = sample_bridge("ehr", auth={"api_keys": keys})
    try:
        client = TestClient(create_app(bridge))
        dana = client.get("/me", headers={"X-API-Key": "k-dana"}).json()
        assert dana == {
            "subject": "dana",
            "roles": ["coordinator"],
            "queues": ["records"],
            "auth_enabled": True,
        }
        ada = client.get("/me", headers={"X-API-Key": "k-ada"}).json()
        assert (ada["roles"], ada["queues"]) == (["admin", "coordinator"], None)
        refused = client.get("/me")
        assert refused.status_code == 401
        assert "Bearer" in refused.headers["WWW-Authenticate"]
    finally:
        bridge.close()
