"""The `on_status` actions of the mapping rules, executed against the task's source EHR.

- `update_focus`: read the focus, set elements (`paths.set_value`), `PUT` with `If-Match` on
  the version read. On 412 we re-read and check, field by field, whether the EHR touched
  what we set: a field still as we first read it, or already as we want it, lets us re-apply
  on the new version; a field the EHR moved elsewhere means the coordinator's change no longer
  applies, and nothing is written: `WriteConflict` carries the diff (ours, theirs, was).
- `create`: a resource from a template (`{{ FHIRPath }}` in strings), with an identifier
  derived from the outbox entry so a retried create finds the first one (If-None-Exist).
- `task_output`: an output on the FHIR Task mirror, read-modify-write with If-Match.

FHIRPath values see the focus resource, `%note` (the coordinator's note) and `%coordinator`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_bridge.errors import FhirBridgeError, PreconditionFailed, TemporaryFhirError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.mapping.elements import unknown_elements
from fhir_bridge.mapping.expr import Expr, Template, compile_expr, compile_template
from fhir_bridge.tasks.model import Task
from fhir_bridge.writeback.paths import get_values, set_value

ACTION_NAMES = {"update_focus": "update-focus", "create": "create", "task_output": "task-output"}
OUTPUT_SYSTEM = "urn:fhir-bridge:task-output"
ACTION_VARIABLES = ("note", "coordinator", "task")
_MAX_REAPPLY = 3  # re-reads after 412 before we call it a busy resource and retry later


class WriteConflict(FhirBridgeError):
    """The EHR changed what a coordinator's action would set: not written, `detail` says how."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.detail = detail


class ActionFailed(FhirBridgeError):
    """An action that cannot run as it stands (no mirror, a bad path, an unknown action)."""


@dataclass(frozen=True)
class Written:
    """One write made by an action: what, which version, and how (for the Provenance)."""

    reference: str
    version: str | None
    activity: str  # CREATE or UPDATE


@lru_cache(maxsize=256)
def _expr(text: str) -> Expr:
    return compile_expr(text, None, ACTION_VARIABLES, {})


@lru_cache(maxsize=256)
def _template(text: str) -> Template:
    return compile_template(text, None, ACTION_VARIABLES, {})


def task_scope(task: Task) -> dict[str, Any]:
    """`%task` of an action: what the rule rendered (a family message is its description)."""
    return {"id": task.id, "description": task.description or "", "labels": list(task.labels)}


def _plain(value: Any) -> Any:
    """A FHIRPath result item as JSON (dates and quantities become their text)."""
    if value is None or isinstance(value, str | bool | int | float | dict | list):
        return value
    return str(value)


def evaluate(text: str, resource: dict[str, Any], env: dict[str, Any]) -> Any:
    """A FHIRPath value: None when empty, the item when one, a list when several."""
    try:
        items = [_plain(v) for v in _expr(text)(resource, env)]
    except ValueError as exc:
        raise ActionFailed(f"FHIRPath {text!r} does not compile: {exc}") from None
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def render(template: Any, resource: dict[str, Any], env: dict[str, Any]) -> Any:
    """A `create` template with every `{{ }}` in its strings evaluated on `resource`."""
    if isinstance(template, str):
        if "{{" not in template:
            return template
        try:
            return _template(template).render(resource, env)
        except ValueError as exc:
            raise ActionFailed(f"template does not compile: {exc}") from None
    if isinstance(template, dict):
        return {k: render(v, resource, env) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, resource, env) for v in template]
    return template


def version_of(resource: dict[str, Any] | None) -> str | None:
    """The versionId of a resource as read."""
    value = ((resource or {}).get("meta") or {}).get("versionId")
    return str(value) if value is not None else None


def _is_ours(now: list[Any], value: Any) -> bool:
    if value is None:
        return now == []
    if isinstance(value, list):
        return now == value
    return bool(now) and all(v == value for v in now)


def _one(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else (values or None)


def diff(
    base: dict[str, Any], theirs: dict[str, Any], ours: dict[str, Any]
) -> list[dict[str, Any]]:
    """The fields the EHR moved away from both what we read and what we want to set."""
    fields = []
    for path, value in ours.items():
        was, now = get_values(base, path), get_values(theirs, path)
        if now != was and not _is_ours(now, value):
            fields.append({"path": path, "ours": value, "theirs": _one(now), "was": _one(was)})
    return fields


async def update_focus(
    client: FhirClient, task: Task, spec: dict[str, Any], env: dict[str, Any]
) -> Written | None:
    """Set the fields of `spec['set']` on the focus; None when it already holds them."""
    ref = task.focus
    base = await client.read(task.focus_type, task.focus_id)
    current = base
    for _ in range(_MAX_REAPPLY):
        ours = {path: evaluate(text, current, env) for path, text in spec["set"].items()}
        if current is not base:
            fields = diff(base, current, ours)
            if fields:
                raise WriteConflict(
                    f"{ref} changed in the EHR since version {version_of(base)} "
                    f"(now {version_of(current)}): {', '.join(f['path'] for f in fields)}; "
                    "the coordinator's change was not written",
                    {
                        "resource": ref,
                        "read_version": version_of(base),
                        "current_version": version_of(current),
                        "fields": fields,
                    },
                )
        body = copy.deepcopy(current)
        try:
            for path, value in ours.items():
                set_value(body, path, value)
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None
        if body == current:
            return None
        try:
            result = await client.update(body, if_match=version_of(current))
        except PreconditionFailed:
            current = await client.read(task.focus_type, task.focus_id)
            continue
        return Written(ref, result.version_id, "UPDATE")
    raise TemporaryFhirError(f"{ref} kept changing while we wrote it; trying again later")


async def create_resource(
    client: FhirClient,
    task: Task,
    template: dict[str, Any],
    env: dict[str, Any],
    *,
    system: str,
    key: str,
) -> Written:
    """Create the resource of `template` once, however often the delivery is retried."""
    focus = await client.read(task.focus_type, task.focus_id)
    body = render(template, focus, env)
    rtype = str(body["resourceType"])
    if_none_exist = None
    if not unknown_elements("identifier", rtype):
        ours = {"system": system, "value": key}
        existing = body.get("identifier")
        body["identifier"] = [*(existing if isinstance(existing, list) else []), ours]
        if_none_exist = f"identifier={system}|{key}"
    result = await client.create(body, if_none_exist=if_none_exist)
    if not result.resource_id:
        raise ActionFailed(f"the server did not say which {rtype} it created or matched")
    return Written(f"{rtype}/{result.resource_id}", result.version_id, "CREATE")


async def task_output(
    client: FhirClient, task: Task, spec: dict[str, Any], env: dict[str, Any]
) -> Written:
    """Add an output (type code, text value) to the task's FHIR Task mirror, once."""
    if not task.mirror_id:
        raise ActionFailed(f"task {task.id} has no FHIR Task mirror to add an output to")
    focus = await client.read(task.focus_type, task.focus_id)
    value = evaluate(spec["value"], focus, env)
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value or "")
    output = {
        "type": {"coding": [{"system": OUTPUT_SYSTEM, "code": spec["type"]}], "text": spec["type"]},
        "valueString": text,
    }
    ref = f"Task/{task.mirror_id}"
    for _ in range(_MAX_REAPPLY):
        current = await client.read("Task", task.mirror_id)
        outputs = current.get("output") or []
        if output in outputs:
            return Written(ref, version_of(current), "UPDATE")
        body = current | {"output": [*outputs, output]}
        try:
            result = await client.update(body, if_match=version_of(current))
        except PreconditionFailed:
            continue  # someone wrote the Task meanwhile: an output never conflicts, add again
        return Written(ref, result.version_id, "UPDATE")
    raise TemporaryFhirError(f"{ref} kept changing while we wrote it; trying again later")
