"""Per-request context for the API: a request id in every log line, one canonical line, metrics.

A pure ASGI middleware rather than `BaseHTTPMiddleware`, so the context variables it binds
reach the route (FastAPI runs plain `def` routes in a worker thread with a copy of them) and
streaming responses are not buffered.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_bridge.logging import get_logger
from fhir_bridge.metrics import BridgeMetrics

log = get_logger("api")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept only if it is short and harmless; anything else is replaced.
_VALID_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
UNMATCHED = "unmatched"  # the route label of a request no route took (404): never its path


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID if it is a sane token, else a new random one."""
    wanted = REQUEST_ID_HEADER.lower().encode()
    for name, value in headers:
        if name.lower() == wanted:
            text = value.decode("latin-1").strip()
            if _VALID_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/tasks/{task_id}`), never the raw path."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestContextMiddleware:
    """Binds `request_id` for the request's log lines, echoes it back, logs `http_request`."""

    def __init__(self, app: ASGIApp, metrics: BridgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; non-HTTP calls (lifespan) pass straight through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        status = 500  # if the app fails before it answers
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        # Bound, not cleared-then-bound: under uvicorn every request has a fresh context
        # already, and an in-process caller (httpx.ASGITransport) keeps its own bindings.
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._done(scope, status, started)

    def _done(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        method = str(scope.get("method", ""))
        route = route_template(scope)
        self.metrics.observe_http(method, route, status, seconds)
        log.info(
            "http_request",
            method=method,
            route=route,
            status=status,
            elapsed_ms=round(seconds * 1000, 1),
        )
