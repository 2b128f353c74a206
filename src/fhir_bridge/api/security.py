"""Secure defaults around every answer: security headers, a request body limit (413) and a
per-caller rate limit (429 with Retry-After).

The rate limit is an in-memory token bucket per process: behind several API processes each
enforces its own budget, so the effective limit is the sum (see README "API").
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_bridge.api.schemas import ErrorBody

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# JSON answers never need to load anything; the HTML of /docs keeps its own needs.
_JSON_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")  # answers may hold PHI: never cached
_UNLIMITED = frozenset({"/healthz", "/readyz"})  # probes are never throttled
# EHR notifications are bounded by their own route (10 MB bundles, a shared secret) and must
# not be dropped in a burst: neither the body limit nor the rate limit applies to them.
_OWN_LIMITS = "/subscriptions/"


def _exempt(scope: Scope, paths: frozenset[str]) -> bool:
    path = str(scope.get("path", ""))
    return path in paths or path.startswith(_OWN_LIMITS)


async def _reply(
    send: Send, status: int, error: str, message: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = ErrorBody(error=error, message=message, details={}).model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Adds nosniff, no-referrer, frame DENY, and for non-HTML a closed CSP and no-store."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the call through, adding the headers to the answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                kind = dict(headers).get(b"content-type", b"")
                headers += _HEADERS
                if not kind.startswith(b"text/html"):
                    headers += [_JSON_CSP, _NO_STORE]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: by Content-Length up front, or counted as it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body before the route sees it."""
        if scope["type"] != "http" or _exempt(scope, frozenset()):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        too_large = False

        async def counted() -> Message:
            # Past the limit the app gets an empty end of body, and its answer is replaced:
            # an exception here would be turned into a 400 by the framework's body parser.
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                too_large = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def replaced(message: Message) -> None:
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        await self.app(scope, counted, replaced)

    async def _refuse(self, send: Send) -> None:
        message = f"request body over {self.max_bytes} bytes"
        await _reply(send, 413, "payload_too_large", message, [])


class TokenBucket:
    """`per_minute` requests per key, refilled continuously; remembers the busiest keys only."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, keys: int = 10_000
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_keys = keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when a request of `key` may go now, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def caller_key(scope: Scope) -> str:
    """Whose budget a request spends: its credential (hashed, never kept) or its address."""
    headers = dict(scope.get("headers", []))
    credential = headers.get(b"x-api-key") or headers.get(b"authorization")
    if credential:
        return "cred:" + hashlib.sha256(credential).hexdigest()[:32]
    client = scope.get("client")
    return "addr:" + (str(client[0]) if client else "unknown")


class RateLimitMiddleware:
    """429 with Retry-After once a caller spends its per-minute budget (probes exempt)."""

    def __init__(self, app: ASGIApp, bucket: TokenBucket) -> None:
        self.app = app
        self.bucket = bucket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Spend one token of the caller's budget, or answer 429."""
        if scope["type"] != "http" or _exempt(scope, _UNLIMITED):
            await self.app(scope, receive, send)
            return
        wait = self.bucket.take(caller_key(scope))
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            await _reply(send, 429, "rate_limited", "too many requests", [(b"retry-after", retry)])
            return
        await self.app(scope, receive, send)
