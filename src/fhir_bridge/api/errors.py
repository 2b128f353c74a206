"""Translate domain errors into HTTP answers whose bodies say what was wrong.

Validation errors never echo the submitted value (it may be a note about a patient).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_bridge.api.schemas import ErrorBody
from fhir_bridge.errors import IllegalTransition, QueueError, TaskConflict, TaskNotFound


def _answer(
    status: int,
    error: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **details: object,
) -> JSONResponse:
    body = ErrorBody(error=error, message=message, details=dict(details))
    return JSONResponse(
        status_code=status, content=body.model_dump(mode="json"), headers=dict(headers or {})
    )


_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(TaskNotFound)
    async def _not_found(_: Request, exc: TaskNotFound) -> JSONResponse:
        return _answer(404, "task_not_found", str(exc))

    @app.exception_handler(IllegalTransition)
    async def _illegal(_: Request, exc: IllegalTransition) -> JSONResponse:
        return _answer(
            409, "illegal_transition", str(exc), current=exc.current, allowed=exc.allowed
        )

    @app.exception_handler(TaskConflict)
    async def _conflict(_: Request, exc: TaskConflict) -> JSONResponse:
        return _answer(409, "task_conflict", str(exc))

    @app.exception_handler(QueueError)
    async def _queue(_: Request, exc: QueueError) -> JSONResponse:
        return _answer(400, "queue_error", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        summary = "; ".join(f"{p['where']}: {p['problem']}" for p in problems)
        return _answer(422, "invalid_request", summary, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "http_error")
        return _answer(exc.status_code, code, str(exc.detail), headers=exc.headers)
