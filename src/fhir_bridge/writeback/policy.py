"""Per-source write policy: what the bridge may write to an EHR, checked before any HTTP call.

`plan` says, from an outbox entry alone (no request), which resources it would write: the
type, the element paths (`where()` filters dropped) and a body holding the values it knows
before the write. `check` refuses a write outside the source's `write_policy` (type not in
`allowed_types`, a path not in `allowed_fields`, a value not in `allowed_values`) with a
reason naming the rule; reasons never carry resource content.

A value that is not a literal (an `update_focus` expression other than `'text'`, a number or
a boolean; a `{{ }}` in a `create` template; a task output) is known only once the focus has
been read, so it cannot be checked before the write: when
`allowed_values` restricts that path, the write is refused rather than guessed.
The bridge's own bookkeeping (`resourceType`, `id`, `meta`, the idempotency identifier it adds
to a created resource) is not counted as a written field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fhir_bridge.config import WritePolicyConfig
from fhir_bridge.errors import FhirBridgeError
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxEntry, Task
from fhir_bridge.writeback.actions import ActionFailed, evaluate
from fhir_bridge.writeback.paths import get_values, parse_path, set_value
from fhir_bridge.writeback.task_mirror import build_task

_BOOKKEEPING = frozenset({"resourceType", "id", "meta"})
_PROVENANCE_FIELDS = ("target", "recorded", "activity", "agent")
_LITERAL = re.compile(r"^('([^'\\]|\\.)*'|true|false|-?\d+(\.\d+)?)$")


@dataclass(frozen=True)
class PlannedWrite:
    """One resource an outbox entry would write."""

    action: str
    resource_type: str
    fields: tuple[str, ...]
    body: dict[str, Any] = field(default_factory=dict)
    unknown: frozenset[str] = frozenset()  # paths whose value is known only at write time


class PolicyRefused(FhirBridgeError):
    """A write outside the source's write policy; `rule` names the policy key that refused."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule

    @property
    def detail(self) -> dict[str, Any]:
        """What the parked entry keeps."""
        return {"policy": str(self), "rule": self.rule}


def plain_path(path: str) -> str:
    """An element path without its `where()` filters (`participant.status`)."""
    return ".".join(step.name for step in parse_path(path))


def _top_fields(body: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in body if k not in _BOOKKEEPING)


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def plan(entry: OutboxEntry, task: Task, identifier_system: str) -> list[PlannedWrite]:
    """The writes of `entry`, worked out without a request.

    :raises ActionFailed: a payload not shaped like its action.
    """
    payload = entry.payload
    try:
        if entry.action == MIRROR_ACTION:
            body = build_task(payload, identifier_system)
            return [PlannedWrite(entry.action, "Task", _top_fields(body), body)]
        spec: dict[str, Any] = payload.get("spec") or {}
        env = {"note": payload.get("note") or [], "coordinator": payload.get("coordinator") or []}
        write = _plan_action(entry.action, task, spec, env)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # PathError is a ValueError
        raise ActionFailed(f"outbox entry {entry.id}: malformed {entry.action} action") from exc
    provenance = PlannedWrite(entry.action, "Provenance", _PROVENANCE_FIELDS)
    return [write, provenance]


def _plan_action(
    action: str, task: Task, spec: dict[str, Any], env: dict[str, Any]
) -> PlannedWrite:
    if action == "update-focus":
        body: dict[str, Any] = {}
        unknown: set[str] = set()
        fields = []
        for path, text in spec["set"].items():
            plain = plain_path(path)
            fields.append(plain)
            # Only a literal is known before the focus is read; anything else is decided then.
            value = evaluate(text, {}, env) if _LITERAL.match(text.strip()) else None
            if value is None:
                unknown.add(plain)
            else:
                set_value(body, plain, value)
        return PlannedWrite(action, task.focus_type, tuple(fields), body, frozenset(unknown))
    if action == "create":
        template = spec
        fields_ = _top_fields(template)
        dynamic = frozenset(k for k in fields_ if _has_template(template[k]))
        return PlannedWrite(action, str(template["resourceType"]), fields_, template, dynamic)
    # task-output: an output whose value is read from the focus at write time
    return PlannedWrite(action, "Task", ("output",), {}, frozenset({"output"}))


def _touches(written: str, path: str) -> bool:
    return written == path or path.startswith(written + ".") or written.startswith(path + ".")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def check(policy: WritePolicyConfig, source: str, writes: list[PlannedWrite]) -> None:
    """Refuse the first write outside `policy`.

    :raises PolicyRefused: naming the source, the rule and the type/field it refused.
    """
    for w in writes:
        rtype = w.resource_type
        if rtype not in policy.allowed_types:
            raise PolicyRefused(
                f"write policy of source {source!r} refuses {w.action}: resource type {rtype} "
                "is not in write_policy.allowed_types",
                "allowed_types",
            )
        allowed = (policy.allowed_fields or {}).get(rtype)
        if allowed is not None:
            for f in w.fields:
                if not any(f == a or f.startswith(a + ".") for a in allowed):
                    raise PolicyRefused(
                        f"write policy of source {source!r} refuses {w.action}: field {rtype}.{f} "
                        f"is not in write_policy.allowed_fields.{rtype}",
                        "allowed_fields",
                    )
        for key, values in (policy.allowed_values or {}).items():
            ktype, _, path = key.partition(".")
            if ktype != rtype or not any(_touches(f, path) for f in w.fields):
                continue
            if any(_touches(u, path) for u in w.unknown):
                raise PolicyRefused(
                    f"write policy of source {source!r} refuses {w.action}: the value of {key} "
                    "depends on the resource and cannot be checked against "
                    f"write_policy.allowed_values.{key} before the write",
                    "allowed_values",
                )
            found = get_values(w.body, path)
            if not found or any(_text(v) not in values for v in found):
                raise PolicyRefused(
                    f"write policy of source {source!r} refuses {w.action}: {key} may only be "
                    f"set to {', '.join(values)} (write_policy.allowed_values)",
                    "allowed_values",
                )


def summary(writes: list[PlannedWrite]) -> list[dict[str, Any]]:
    """Type and field paths of each write, no values: safe for logs and the outbox detail."""
    return [{"resource_type": w.resource_type, "fields": list(w.fields)} for w in writes]
