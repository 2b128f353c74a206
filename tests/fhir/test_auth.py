"""Tests for fhir_bridge.fhir.auth."""

from __future__ import annotations

import pytest
import respx

from fhir_bridge.fhir import FhirClient, bearer_auth
from fhir_bridge.fhir.auth import NO_AUTH

BASE = "https://ehr.example.org/fhir"


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
