"""`fhir-bridge mappings explain`: each expression of a rule, its value, and the verdict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fhir_bridge.mapping.engine import CompiledRule, Evaluation, NoLookup


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def explain(
    rule: CompiledRule,
    resource: dict[str, Any],
    now: datetime,
    store: list[dict[str, Any]] | None = None,
) -> tuple[Evaluation, list[str]]:
    """Evaluate `rule` on `resource` and describe each step, one line each."""
    ev = rule.evaluate(resource, "explain", now, NoLookup(store or []), full=True)
    return ev, list(_lines(rule, resource, ev, now))


def _lines(
    rule: CompiledRule, resource: dict[str, Any], ev: Evaluation, now: datetime
) -> Iterator[str]:
    yield f"rule {rule.id} ({rule.file}) on {resource.get('resourceType')}/{resource.get('id')}"
    yield f"  %now = {now.isoformat()}"
    if resource.get("resourceType") != rule.resource_type:
        yield f"  the rule reads {rule.resource_type}, not {resource.get('resourceType')}: no task"
        return
    for name, expr in rule.lets:
        if f"%{name}" in ev.values:
            yield f"  let %{name} = {expr.text}\n      -> {_show(ev.values[f'%{name}'])}"
    if "task.patient" in ev.values:
        yield f"  patient = {rule.patient.text}\n      -> {_show(ev.values['task.patient'])}"
    for name, rtype, where in rule.related:
        if f"%{name}" in ev.values:
            filt = f" where {where.text}" if where else ""
            yield f"  related %{name} = {rtype}{filt}\n      -> {_show(ev.values[f'%{name}'])}"
    if "when" in ev.values:
        yield f"  when = {rule.when.text}\n      -> {_show(ev.values['when'])}"
    if ev.error:
        yield f"  ERROR: {ev.error}"
        yield "result: no task (the rule failed to evaluate)"
        return
    if ev.draft is not None:
        d = ev.draft
        yield "result: a task"
        yield f"  queue {d.queue}, kind {d.kind}, priority {d.priority.value}"
        yield f"  title: {d.title}"
        if d.description:
            yield f"  description: {d.description}"
        yield f"  due: {d.due.isoformat() if d.due else '(none)'}"
        yield f"  patient: {d.patient}"
        if d.labels:
            yield f"  labels: {', '.join(d.labels)}"
        if d.assignee:
            yield f"  assignee: {d.assignee}"
        return
    yield f"result: no task, because {ev.reason}"
    for key, value in ev.values.items():
        if key.startswith("close_when"):
            yield f"  {key} -> {_show(value)}"
    if ev.close is not None:
        yield f"  an open task would close as {ev.close.status.value}: {ev.close.reason}"
    elif rule.close_cases:
        yield "  an open task would stay open (no close_when case holds)"
    else:
        yield "  an open task would stay open (close_when: never)"
