"""The coordinator web UI: a small static app (plain ES modules, no build step) served at /ui/.

The files hold no data and make no decisions: the app calls the JSON API with the user's
credentials, so every access rule, the task state machine and the audit trail stay the API's.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import webbrowser
from importlib import resources

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

__all__ = ["CSP", "UI_PATH", "open_when_ready", "prefers_html", "router"]

UI_PATH = "/ui/"
# Scripts, styles and images only from the app's own origin; never framed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'"
)
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
_ASSET = re.compile(r"^[a-z][a-z0-9-]*\.(html|js|css|svg)$")

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    found = _ASSET.match(name)
    path = resources.files(__package__).joinpath("static", name)
    if found is None or not path.is_file():
        raise HTTPException(404, f"no UI file {name!r}")
    headers = {}
    if found.group(1) == "html":  # other answers get the API's closed CSP and no-store
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    return Response(path.read_bytes(), media_type=_TYPES[found.group(1)], headers=headers)


def prefers_html(request: Request) -> bool:
    """True for a browser navigating (it asks for HTML); API clients keep their JSON."""
    return "text/html" in request.headers.get("accept", "")


@router.get("/ui")
def ui_root() -> RedirectResponse:
    """The app lives under /ui/ so its relative module paths resolve."""
    return RedirectResponse(UI_PATH, status_code=308)


@router.get("/ui/")
def ui_index() -> Response:
    """The app's page, with a strict Content-Security-Policy."""
    return _asset("index.html")


@router.get("/ui/{asset}")
def ui_asset(asset: str) -> Response:
    """One of the app's files (scripts, styles)."""
    return _asset(asset)


def has_display() -> bool:
    """True where a browser window can open (a desktop session; not a server or CI)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_when_ready(base: str, timeout: float = 30.0) -> threading.Thread | None:
    """Open `base`/ui/ in the user's browser once the API answers /healthz, from a background
    thread; nothing (and no error) without a display."""
    if not has_display():
        return None

    def wait_then_open() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).is_success:
                    webbrowser.open(f"{base}{UI_PATH}")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=wait_then_open, name="open-ui", daemon=True)
    thread.start()
    return thread
