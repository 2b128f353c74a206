"""Serving the web UI (no browser): where it lives, its CSP, what it refuses, and a guard
that its scripts never turn data into markup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.web import CSP

STATIC = Path(__file__).resolve().parents[2] / "src" / "fhir_bridge" / "web" / "static"


def test_ui_page_has_a_strict_csp(api: TestClient):
    """/ui/ is the app's HTML with the strict CSP, nosniff and no framing."""
    page = api.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    )
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="app.js">' in page.text


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("index.html", "text/html"),
        ("huddle.js", "text/javascript"),
        ("outcomes.js", "text/javascript"),
        ("chart.js", "text/javascript"),
        ("family.js", "text/javascript"),
    ],
)
def test_ui_files_have_their_types(api: TestClient, name: str, kind: str):
    """Scripts and styles are served with types a strict browser accepts (nosniff)."""
    answer = api.get(f"/ui/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(kind)


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapi%2Fmain.py", "__init__.py", "APP.JS"])
def test_unknown_or_odd_names_are_404(api: TestClient, name: str):
    """Only the app's own files are served: no other name, no path outside static/."""
    answer = api.get(f"/ui/{name}")
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


def test_ui_without_slash_redirects(api: TestClient):
    """/ui redirects to /ui/, where the app's relative module paths resolve."""
    answer = api.get("/ui", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (308, "/ui/")


def test_root_sends_browsers_to_the_ui_and_keeps_json_for_clients(api: TestClient):
    """GET / redirects a browser (Accept: text/html) to /ui/; API clients still get JSON."""
    browser = api.get("/", headers={"Accept": "text/html,*/*;q=0.8"}, follow_redirects=False)
    assert browser.status_code == 307
    assert browser.headers["location"] == "/ui/"
    client = api.get("/")
    assert client.status_code == 200
    assert client.json()["ui"] == "/ui/"
    assert client.json()["queues"] == "/queues"


def test_scripts_never_parse_data_as_html():
    """The app builds the page with createElement/textContent only: no innerHTML and friends."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function"
    )
    found = {
        path.name: sinks.findall(path.read_text(encoding="utf-8")) for path in STATIC.glob("*.js")
    }
    assert len(found) >= 5
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_open_when_ready_does_nothing_without_a_display(monkeypatch: pytest.MonkeyPatch):
    """On a headless machine the demo prints the address and opens no browser (no error)."""
    from fhir_bridge import web

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(web.sys, "platform", "linux")
    assert web.has_display() is False
    assert web.open_when_ready("http://127.0.0.1:9") is None
    monkeypatch.setenv("DISPLAY", ":0")
    assert web.has_display() is True
