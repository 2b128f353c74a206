"""The coordinator API, assembled: `create_app(bridge)`; OpenAPI docs at /docs.

`app_from_environment` is the factory each process of `fhir-bridge serve --workers N` calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse

from fhir_bridge import gctune
from fhir_bridge.api import errors
from fhir_bridge.api.access import guard
from fhir_bridge.api.audit import AuditMiddleware
from fhir_bridge.api.auth import API_KEY_HEADER, Authenticator
from fhir_bridge.api.middleware import REQUEST_ID_HEADER, RequestContextMiddleware
from fhir_bridge.api.routes import (
    audit,
    family,
    health,
    huddle,
    me,
    ops,
    outbox,
    outcomes,
    patients,
    queues,
    subscriptions,
    tasks,
)
from fhir_bridge.api.security import (
    BodyLimitMiddleware,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
    TokenBucket,
)
from fhir_bridge.config import load_settings
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.web import UI_PATH, prefers_html
from fhir_bridge.web import router as ui_router


def create_app(bridge: Bridge) -> FastAPI:
    """A FastAPI app serving `bridge`'s queues, tasks and operator views.

    :raises ConfigError: auth is enabled but neither issuers nor API keys are configured.
    """
    auth = bridge.settings.auth
    app = FastAPI(
        title="fhir_bridge",
        summary="Coordinator queues built from FHIR servers, written back as FHIR",
        version="0.1.0",
        dependencies=[Depends(guard)],  # the role table, queues and audit intents (access.py)
    )
    app.state.bridge = bridge
    app.state.auth = Authenticator(auth)
    errors.install(app)
    app.include_router(queues.router)
    app.include_router(tasks.router)
    app.include_router(patients.router)
    app.include_router(ops.router)
    app.include_router(outbox.router)
    app.include_router(health.router)
    app.include_router(subscriptions.router)
    app.include_router(audit.router)
    app.include_router(me.router)
    app.include_router(family.router)
    app.include_router(huddle.router)
    app.include_router(outcomes.router)
    app.include_router(ui_router)
    # Innermost first: audit sees the final status; the request context wraps everything.
    app.add_middleware(AuditMiddleware, bridge=bridge)
    app.add_middleware(BodyLimitMiddleware, max_bytes=auth.max_body_bytes)
    if auth.rate_limit_per_minute:
        app.add_middleware(RateLimitMiddleware, bucket=TokenBucket(auth.rate_limit_per_minute))
    if auth.cors_origins:  # closed unless configured: no CORS headers, browsers refuse
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(auth.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", API_KEY_HEADER, "Content-Type", "If-Match"],
            expose_headers=["ETag", REQUEST_ID_HEADER],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=bridge.metrics)

    @app.get("/", include_in_schema=False, response_model=None)
    def index(request: Request) -> dict[str, Any] | RedirectResponse:
        if prefers_html(request):  # a browser: the web UI; API clients get the map below
            return RedirectResponse(UI_PATH)
        return {
            "ui": UI_PATH,
            "me": "/me",
            "name": "fhir_bridge",
            "queues": "/queues",
            "tasks": "/tasks",
            "patients": "/patients",
            "sources": "/sources",
            "quarantine": "/quarantine",
            "health": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
            "audit": "/audit",
            "docs": "/docs",
        }

    return app


def app_from_environment() -> FastAPI:
    """The app of one API process of `fhir-bridge serve --workers N` (uvicorn's factory).

    Settings come from the file `$FHIR_BRIDGE_CONFIG` names (the `serve` command sets it to
    the file it read) and the same `FHIR_BRIDGE_*` overrides. The process has a bridge of its
    own: its store connection (SQLite in WAL mode takes readers and writers of several
    processes; Redis is shared anyway), rules, metrics registry and rate-limit buckets. It
    runs no background loop: sync, write-back and mapping reload are not part of `serve`.
    The store is closed when the process stops.
    """
    settings = load_settings()
    configure_logging(settings.log_level)
    bridge = Bridge(settings)
    app = create_app(bridge)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        try:
            async with inner(served) as state:
                yield state
        finally:
            bridge.close()

    app.router.lifespan_context = lifespan
    # Everything built so far (rules, profiles, the app: ~140k objects) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks it. Those
    # walks stopped the process ~100 ms each, a few times a minute under load: the p99.
    gctune.settle()
    return app
