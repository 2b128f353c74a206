"""The app-wide dependencies: check the role table, then what a coordinator may touch, and
declare what the audit trail must record.

Coordinator identity (when auth is on): the `coordinator` field of a task change must be the
caller's own subject (token `sub` or API key name); only an admin may act on someone's
behalf. With auth off (the demo) the field is trusted and recorded as the agent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from fhir_bridge.api.audit import AuditIntent
from fhir_bridge.api.auth import (
    ANONYMOUS,
    OWN_SECRET,
    PUBLIC,
    UNRESTRICTED,
    Authenticator,
    Principal,
    forbidden,
    policy_for,
)
from fhir_bridge.runtime import Bridge

HISTORY_ROUTE = "/patients/{source}/{patient_id}/history"
LINKS_ROUTE = "/patients/links"
_TASK_ROUTES = ("/tasks", "/tasks/{task_id}", "/queues/{queue}/tasks")
_FAMILY_ROUTES = ("/family/contacts", "/family/sharing")  # routes/family.py


def route_path(request: Request) -> str:
    """The matched route's path template."""
    return str(getattr(request.scope.get("route"), "path", ""))


async def authorize(request: Request) -> Principal:
    """The caller, if the role table lets them call this route (401 or 403 otherwise).

    Checked on the event loop when that cannot wait (auth off, an API key already verified,
    a token signed by a key from a JWKS file); a JWKS URL fetch or a first PBKDF2 check runs
    in a worker thread. A thread hop on every request cost the hot routes ~1 ms under load.
    """
    auth: Authenticator = request.app.state.auth
    allowed = policy_for(request.method, route_path(request))
    if allowed is None:
        raise forbidden("this route has no access policy; refused to everyone")
    if allowed is PUBLIC or allowed is OWN_SECRET:
        return ANONYMOUS
    if not auth.enabled:
        principal = UNRESTRICTED
    elif auth.may_block(request):
        principal = await run_in_threadpool(auth.principal, request)
    else:
        principal = auth.principal(request)
    if not principal.roles & allowed:
        raise forbidden(f"needs one of the roles {', '.join(sorted(allowed))}")
    request.state.principal = principal
    return principal


async def guard(request: Request, principal: Annotated[Principal, Depends(authorize)]) -> None:
    """Queue restriction and coordinator identity on task routes; audit intents."""
    path, method = route_path(request), request.method
    address = request.client.host if request.client else None
    if path == HISTORY_ROUTE:
        params = request.path_params
        request.state.audit_intent = AuditIntent(
            "patient-history",
            "R",
            principal.subject,
            _roles(principal),
            address,
            patient=f"Patient/{params['patient_id']}",
            source=params["source"],
        )
    elif path == LINKS_ROUTE and method in ("POST", "DELETE"):
        await _link_change(request, principal, address)
    elif path in _FAMILY_ROUTES:
        await _family(request, principal, address)
    elif method == "POST" and path.startswith("/tasks"):
        await _task_change(request, principal, path, address)
    elif method == "GET" and path in _TASK_ROUTES:
        await _task_read(request, principal, path)


def _roles(principal: Principal) -> tuple[str, ...]:
    """The roles to record: none when auth is off (nobody proved any)."""
    return () if principal.via == "disabled" else tuple(sorted(principal.roles))


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}  # the route answers 422
    return body if isinstance(body, dict) else {}


async def _task_change(
    request: Request, principal: Principal, path: str, address: str | None
) -> None:
    body = await _body(request)
    coordinator = body.get("coordinator")
    enabled = request.app.state.auth.enabled
    agent = principal.subject if enabled or not isinstance(coordinator, str) else coordinator
    if "task_id" in request.path_params:
        task_ids = [str(request.path_params["task_id"])]
    else:
        ids = body.get("ids")
        task_ids = [i for i in ids if isinstance(i, str)][:1000] if isinstance(ids, list) else []
    last = path.rsplit("/", 1)[-1]
    subtype = "task-" + ("comment" if last == "comments" else last)
    # Recorded before the checks below, so refused attempts are in the trail too.
    request.state.audit_intent = AuditIntent(
        subtype, "U", agent, _roles(principal), address, task_ids
    )
    mismatch = isinstance(coordinator, str) and coordinator != principal.subject
    if enabled and mismatch and not principal.is_admin:
        raise forbidden("'coordinator' must be your own id (only an admin acts for others)")
    await _check_queues(request, principal, task_ids)


async def _link_change(request: Request, principal: Principal, address: str | None) -> None:
    """An admin's decision on two records: one audit record per record named."""
    if request.method == "DELETE":
        named = [request.query_params.get("a"), request.query_params.get("b")]
    else:
        body = await _body(request)
        named = [body.get("a"), body.get("b")]
    patients = []
    for key in named:
        source, sep, patient_id = key.partition("/") if isinstance(key, str) else ("", "", "")
        if sep and source and patient_id:
            patients.append((source, f"Patient/{patient_id}"))
    action = "D" if request.method == "DELETE" else "U"
    request.state.audit_intent = AuditIntent(
        "patient-link", action, principal.subject, _roles(principal), address, patients=patients
    )


async def _family(request: Request, principal: Principal, address: str | None) -> None:
    """Reading a patient's family contacts, or a coordinator's flag on one of them."""
    if request.method == "GET":
        values: dict[str, Any] = dict(request.query_params)
        subtype, action = "family-contacts", "R"
    else:
        values = await _body(request)
        subtype, action = "family-sharing", "U"
    source, patient = values.get("source"), values.get("patient")
    # Recorded before the check below, so refused attempts are in the trail too.
    request.state.audit_intent = AuditIntent(
        subtype,
        action,
        principal.subject,
        _roles(principal),
        address,
        patient=patient if isinstance(patient, str) else None,
        source=source if isinstance(source, str) else None,
    )
    named = values.get("coordinator")
    mismatch = isinstance(named, str) and named != principal.subject
    if action == "U" and request.app.state.auth.enabled and mismatch and not principal.is_admin:
        raise forbidden("'coordinator' must be your own id (only an admin acts for others)")


async def _task_read(request: Request, principal: Principal, path: str) -> None:
    if principal.queues is None or principal.is_admin:
        return
    if path == "/queues/{queue}/tasks":
        queue = str(request.path_params["queue"])
        if not principal.may_work(queue):
            raise forbidden(f"you may not work the queue {queue!r}")
    elif path == "/tasks":
        wanted = request.query_params.get("queue")
        if wanted is None or not principal.may_work(wanted):
            raise forbidden("name one of your queues: ?queue=" + ",".join(sorted(principal.queues)))
    else:
        await _check_queues(request, principal, [str(request.path_params["task_id"])])


async def _check_queues(request: Request, principal: Principal, task_ids: list[str]) -> None:
    if principal.queues is None or principal.is_admin:
        return
    bridge: Bridge = request.app.state.bridge
    for task_id in task_ids:
        task = await run_in_threadpool(bridge.store.get_task, task_id)
        if task is not None and not principal.may_work(task.queue):
            raise forbidden(f"task {task_id} is in a queue you may not work")
