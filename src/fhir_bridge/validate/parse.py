"""Parse resources with `fhir.resources.R4B` and turn failures into OperationOutcome issues.

R4B (4.3.0) is the closest module fhir.resources 8.x ships to R4 (4.0.1): the R4 servers we
talk to produce resources it accepts, while the package's default module is R5 and rejects
most R4 data (renamed and removed elements). Never import from `fhir.resources` directly.

Issues never quote the offending value: pydantic's `input` can be a patient's name or birth
date, and quarantine reasons are shown in the API and logs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypedDict

from pydantic import ValidationError

from fhir_bridge.validate import speedups

speedups.install()  # before any R4B model class is built: see speedups.py

from fhir.resources.R4B import get_fhir_model_class  # noqa: E402
from fhir.resources.R4B.resource import Resource  # noqa: E402


class Issue(TypedDict):
    """One OperationOutcome.issue: what is wrong and where (FHIRPath-like expression)."""

    severity: str
    code: str
    expression: str
    diagnostics: str


_CODE_BY_PYDANTIC_TYPE = {
    "missing": "required",
    "extra_forbidden": "structure",
    "list_type": "structure",
    "dict_type": "structure",
    "model_type": "structure",
}


_ABSTRACT = frozenset({"Resource", "DomainResource"})


@lru_cache(maxsize=256)
def _model_class(resource_type: str) -> Any:
    """The R4B model of a concrete resource type; None for datatypes (HumanName...) and unknowns."""
    if resource_type in _ABSTRACT:
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        return None
    return cls if issubclass(cls, Resource) else None


def is_known_type(resource_type: str) -> bool:
    """True when `resource_type` names a FHIR resource type known to the R4B model."""
    return _model_class(resource_type) is not None


def _expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _issue(code: str, expression: str, diagnostics: str) -> Issue:
    return Issue(severity="error", code=code, expression=expression, diagnostics=diagnostics)


def validate_resource(resource: Any, expected_type: str | None = None) -> list[Issue]:
    """Check one resource; return its issues (empty when it is valid).

    :param resource: the decoded JSON of one resource.
    :param expected_type: the type the search asked for; a different `resourceType` is an issue.
    """
    if not isinstance(resource, dict):
        return [_issue("structure", "", "entry is not a JSON object")]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return [_issue("required", "resourceType", "resourceType is missing")]
    if expected_type and rtype != expected_type:
        return [_issue("invalid", "resourceType", f"expected {expected_type}, got {rtype}")]
    model = _model_class(rtype)
    if model is None:
        return [_issue("not-supported", "resourceType", f"unknown resource type {rtype}")]
    issues: list[Issue] = []
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        issues.append(_issue("required", f"{rtype}.id", "a resource from a server must have an id"))
    try:
        with speedups.sharing():  # the model is thrown away: its elements may be shared
            model.model_validate(resource)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            code = _CODE_BY_PYDANTIC_TYPE.get(err["type"], "value")
            if "is required" in err["msg"]:  # fhir.resources' own check for 1..1 elements
                code = "required"
            issues.append(_issue(code, _expression(rtype, tuple(err["loc"])), err["msg"]))
    except Exception as exc:  # the library's own failure on odd input
        # fhir_core 1.1.12 raises AttributeError for a number where a `url` string belongs
        # (Attachment.url: it calls .startswith on it). One bad resource must not stop its
        # page: it is quarantined like any other. The message is the exception's type only
        # (its text may quote the value).
        issues.append(
            _issue(
                "exception",
                rtype,
                f"fhir.resources could not check this resource ({type(exc).__name__}); "
                "a value has the wrong JSON type",
            )
        )
    return issues
