"""Page bodies are decoded with orjson, with exactly the answers `json` gave before (respx)."""

from __future__ import annotations

import json

import pytest
import respx

from fhir_bridge.errors import MalformedResponse
from fhir_bridge.fhir import FhirClient
from fhir_bridge.fhir.client import _loads

BASE = "https://ehr.example.org/fhir"


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


EDGE_BODIES = [
    b'{"resourceType":"Bundle","entry":[]}',
    b'  \n{"a": 1}\n ',  # whitespace around
    b'{"a": 1, "a": 2}',  # duplicate key: the last wins in both
    b'{"n": NaN, "i": Infinity, "m": -Infinity}',  # json accepts, orjson refuses
    b'{"big": 123456789012345678901234567890}',  # orjson would make a float of it
    b'{"big": -98765432109876543210, "ok": 18446744073709551615}',
    b'{"f": 1e400}',  # beyond a double
    b'{"f": -0.0, "g": 1.5e-7, "h": 0.1}',
    b'{"id": "12345678901234567890123"}',  # a long digit run in a string: json path, same value
    b'{"s": "\\ud800 lone"}',  # lone surrogate escape
    b'\xef\xbb\xbf{"bom": true}',  # UTF-8 byte-order mark
    '{"utf16": "caf\u00e9"}'.encode("utf-16"),
    '{"utf8": "caf\u00e9 \u2028"}'.encode(),
    b"",
    b"not json",
    b'{"a": 1} trailing',
    b"\xff\xfe\xfa",  # not UTF-8 at all
    b"[1, 2]",
    b"null",
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_loads_answers_as_json_did(body):
    """Every edge body decodes to what json.loads gave (None where it raised)."""
    got, expected = _loads(body), _json_or_none(body)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, and int vs float must match too


async def test_big_integer_in_a_page_stays_an_integer():
    """A resource value beyond 64 bits reaches ingest as the int json gave, not a float."""
    body = (
        b'{"resourceType":"Bundle","type":"searchset","entry":[{"resource":'
        b'{"resourceType":"Patient","id":"p1","extension":[{"url":"x",'
        b'"valueDecimal":123456789012345678901234567890}]}}]}'
    )
    with respx.mock(base_url=BASE) as api:
        api.get("/Patient").respond(200, content=body)
        async with FhirClient(BASE) as client:
            pages = [p async for p in client.search("Patient", {})]
    value = pages[0].resources[0]["extension"][0]["valueDecimal"]
    assert value == 123456789012345678901234567890 and isinstance(value, int)


@pytest.mark.parametrize(
    "body", [b"not json", b"\xef\xbb\xbf[1]", b'{"n": NaN', b"\xff", b'"a string"']
)
async def test_malformed_bodies_keep_their_error(body):
    """A body that is not a JSON object is MalformedResponse 'body is not a JSON object'."""
    with respx.mock(base_url=BASE) as api:
        api.get("/Patient").respond(200, content=body)
        async with FhirClient(BASE) as client:
            with pytest.raises(MalformedResponse, match="body is not a JSON object"):
                [p async for p in client.search("Patient", {})]


async def test_nan_body_is_read_as_before():
    """A Bundle json reads (NaN in a value) is still a page: orjson's refusal falls back."""
    body = (
        b'{"resourceType":"Bundle","entry":[{"resource":'
        b'{"resourceType":"Patient","id":"p1","x":NaN}}]}'
    )
    with respx.mock(base_url=BASE) as api:
        api.get("/Patient").respond(200, content=body)
        async with FhirClient(BASE) as client:
            pages = [p async for p in client.search("Patient", {})]
    assert pages[0].resources[0]["id"] == "p1"
