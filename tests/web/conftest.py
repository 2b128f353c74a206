"""The real app on a loopback port, with auth on, over a store holding the sample population;
and headless Chromium (the Debian package) driven by Playwright.

Chromium must be installed (`apt-get install -y chromium chromium-driver`, as `.ci/run` does):
without it these tests fail, they never skip.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.api.auth import hash_key
from fhir_bridge.config import AuthSettings
from fhir_bridge.runtime import Bridge
from tests.api.sample import sample_bridge
from tests.utils import NOW, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"

# One API key per kind of user (names are the subjects the API sees).
KEYS = {
    "dana": ("fbk_browser-test-coordinator-dana", ["coordinator"]),
    "eli": ("fbk_browser-test-coordinator-eli", ["coordinator"]),
    "ada": ("fbk_browser-test-admin-ada", ["admin"]),
    "rita": ("fbk_browser-test-records-only-rita", ["coordinator"]),  # queues: records
}
QUEUES = {"rita": ["records"]}
MRN_SYSTEM = "http://hospital.smarthealthit.org"  # the sample's medical record numbers


@dataclass
class LiveApp:
    """A served bridge: its base URL and the bridge (to check what the API stored)."""

    url: str
    bridge: Bridge

    def api(self, user: str) -> httpx.Client:
        """An HTTP client of the API acting as `user` (one of KEYS)."""
        return httpx.Client(base_url=self.url, headers={"X-API-Key": KEYS[user][0]}, timeout=10)


def serve(bridge: Bridge) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Serve `bridge`'s app with uvicorn on a free 127.0.0.1 port, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(bridge), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Ask uvicorn to finish and wait for its thread."""
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def live_app() -> Iterator[LiveApp]:
    """The sample bridge (source "ehr", clock at NOW) served with auth ON and API keys for
    three coordinators (one restricted to the records queue) and an admin."""
    api_keys = [
        {"name": name, "hash": hash_key(key), "roles": roles, "queues": QUEUES.get(name)}
        for name, (key, roles) in KEYS.items()
    ]
    # Records sharing this MRN system's system|value are one person (tests link a second source).
    patients = {"trusted_identifier_systems": [MRN_SYSTEM]}
    bridge = sample_bridge("ehr", auth={"api_keys": api_keys}, patients=patients)
    url, server, thread = serve(bridge)
    try:
        yield LiveApp(url, bridge)
    finally:
        stop(server, thread)
        bridge.close()


@pytest.fixture(scope="module")
def demo_app(live_app: LiveApp) -> Iterator[LiveApp]:
    """The same bridge served with auth OFF, as `make demo` does: a shallow copy with other
    settings shares the store, rules and clock (no second ingest; `live_app` closes it)."""
    bridge = copy.copy(live_app.bridge)
    bridge.settings = bridge.settings.model_copy(update={"auth": AuthSettings(enabled=False)})
    url, server, thread = serve(bridge)
    try:
        yield LiveApp(url, bridge)
    finally:
        stop(server, thread)


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """Headless Chromium from the Debian package (never a downloaded build).

    Package scope, not session: Playwright's sync API keeps an event loop running in this
    thread until it stops, and every async test collected after tests/web would fail with
    "Cannot run the event loop while another loop is running".
    """
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(apt-get install -y chromium chromium-driver; .ci/run installs it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (its own sessionStorage) whose clock stands at NOW, the
    sample's 'now'; failing JavaScript fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.clock.set_fixed_time(NOW)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield tab
    context.close()
    # 401/403 answers the app expects are logged by Chromium as failed loads; not ours.
    ours = [e for e in errors if "Failed to load resource" not in e]
    assert ours == [], f"JavaScript errors on {request.node.name}: {ours}"


def shoot(tab, name: str, *, docs: bool = False) -> Path:
    """A full-page screenshot as a test artifact (tests/web/artifacts/); with `docs` and
    UPDATE_SCREENSHOTS=1 also the visible part, for the README, in docs/screenshots/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.evaluate("window.scrollTo(0, 0)")  # the top of the page, whatever has focus
        tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    return path


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    """An in-process client of an app with auth off and no data (no browser, no port)."""
    bridge = sample_bridge()
    try:
        yield TestClient(create_app(bridge))
    finally:
        bridge.close()
