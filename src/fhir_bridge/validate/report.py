"""Validate a resource file the way ingest would: parse, core bindings, then profiles.

Backs `fhir-bridge validate RESOURCE.json [--profile ...]`, for integration engineers who
want to know why a resource would be quarantined before a source sends it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fhir_bridge.validate.parse import Issue, validate_resource
from fhir_bridge.validate.profiles import ProfileSet


def validate_file(path: Path, profile_set: ProfileSet, profiles: Sequence[str]) -> list[Issue]:
    """Issues of the resource (or of every entry of the Bundle) in a JSON file.

    Entries of a Bundle report expressions like `Bundle.entry[2].resource.gender`.

    :param profiles: StructureDefinition urls or file names, applied to resources of their type.
    :raises OSError: when the file cannot be read (not JSON is an issue, not an exception).
    :raises ConfigError: when a profile is not in `profile_set`.
    """
    profile_set.resolve(profiles)  # an unknown profile is a usage error, even for a Bundle
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return [_error("invalid", "", f"not JSON: {exc.msg} at {where}")]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return _bundle(data, profile_set, profiles)
    return _resource(data, profile_set, profiles)


def format_issues(issues: Sequence[Issue]) -> str:
    """One line per issue: `severity expression: message` (no trailing newline)."""
    return "\n".join(
        f"{i['severity']} {i['expression'] or '(resource)'}: {i['diagnostics']}" for i in issues
    )


def _error(code: str, expression: str, diagnostics: str) -> Issue:
    return Issue(severity="error", code=code, expression=expression, diagnostics=diagnostics)


def _resource(resource: Any, profile_set: ProfileSet, profiles: Sequence[str]) -> list[Issue]:
    issues = validate_resource(resource)
    if any(i["expression"] in ("", "resourceType") for i in issues):
        return issues  # not an object, or of no known type: nothing more to check
    return issues + profile_set.check_all(resource, profiles)


def _bundle(
    bundle: dict[str, Any], profile_set: ProfileSet, profiles: Sequence[str]
) -> list[Issue]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return [_error("structure", "Bundle.entry", "entry is not a list")]
    issues: list[Issue] = []
    for n, entry in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            issues.append(_error("required", f"{where}.resource", "entry has no resource"))
            continue
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        for issue in _resource(resource, profile_set, profiles):
            issues.append({**issue, "expression": _rebase(issue["expression"], rtype, where)})
    return issues


def _rebase(expression: str, rtype: Any, entry: str) -> str:
    """`Patient.name[0]` of entry 2 -> `Bundle.entry[2].resource.name[0]`."""
    head, dot, rest = expression.partition(".")
    if head == rtype:
        return f"{entry}.resource{dot}{rest}"
    return f"{entry}.resource.{expression}" if expression else f"{entry}.resource"
