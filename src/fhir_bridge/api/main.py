"""The coordinator API, assembled: `create_app(bridge)`; OpenAPI docs at /docs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fhir_bridge.api import errors
from fhir_bridge.api.middleware import RequestContextMiddleware
from fhir_bridge.api.routes import health, ops, outbox, patients, queues, tasks
from fhir_bridge.runtime import Bridge


def create_app(bridge: Bridge) -> FastAPI:
    """A FastAPI app serving `bridge`'s queues, tasks and operator views."""
    app = FastAPI(
        title="fhir_bridge",
        summary="Coordinator queues built from FHIR servers, written back as FHIR",
        version="0.1.0",
    )
    app.state.bridge = bridge
    errors.install(app)
    app.include_router(queues.router)
    app.include_router(tasks.router)
    app.include_router(patients.router)
    app.include_router(ops.router)
    app.include_router(outbox.router)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware, metrics=bridge.metrics)

    @app.get("/", include_in_schema=False)
    def index() -> dict[str, Any]:
        return {
            "name": "fhir_bridge",
            "queues": "/queues",
            "tasks": "/tasks",
            "patients": "/patients",
            "sources": "/sources",
            "quarantine": "/quarantine",
            "health": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
            "docs": "/docs",
        }

    return app
