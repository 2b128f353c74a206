"""Find element names in a FHIRPath expression that the resource type does not have.

`statuss = 'noshow'` is valid FHIRPath that is simply always empty, so a typo in an element
name silently turns a rule off. We walk fhirpathpy's parse tree, infer types along member
chains with the R4 model fhirpathpy ships (`path2Type`), and report names that cannot exist.
Where the type is unknown (choice types, `resolve()`, variables, arithmetic) we stay silent:
a false alarm would teach engineers to ignore the check.
"""

from __future__ import annotations

from typing import Any

from fhirpathpy.models import models

from fhir_bridge.mapping.parsing import parse_tree

_MODEL = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _MODEL["type2Parent"]

# Functions whose argument is evaluated once per input item (so its context is the item type).
_ITERATORS = frozenset({"where", "select", "exists", "all", "repeat", "any"})
# Functions returning (a subset of) their input, so the type flows through.
_SAME_TYPE = frozenset(
    {"where", "first", "last", "tail", "skip", "take", "distinct", "single", "trace", "intersect"}
)
_BACKBONE = frozenset({"BackboneElement", "Element"})
# Backbone elements (Appointment.participant) appear only as the parents of their children.
_PARENTS = frozenset(path.rsplit(".", 1)[0] for path in _PATH2TYPE)


def _member(type_path: str, name: str) -> tuple[bool, str | None]:
    """(exists, type of `type_path.name`); the type is None when unknown (choice, primitive)."""
    current: str | None = type_path
    while current:
        full = f"{current}.{name}"
        if full in _PATH2TYPE:
            found = _PATH2TYPE[full]
            return True, full if found in _BACKBONE else found
        if full in _ELSEWHERE:
            return True, _ELSEWHERE[full]
        if full in _PARENTS:
            return True, full
        if full in _CHOICES:
            return True, None
        current = _PARENT.get(current)
    # Common elements every element has.
    if name in ("id", "extension"):
        return True, None
    return False, None


def _is_checkable(type_name: str | None) -> bool:
    """True for complex types and resource paths we know the elements of."""
    if not type_name:
        return False
    root = type_name.split(".")[0]
    return root[:1].isupper() and not type_name.startswith("System.")


class _Walker:
    def __init__(self, root_type: str) -> None:
        self.root_type = root_type
        self.unknown: list[tuple[str, str]] = []  # (name, on type)

    def infer(self, node: dict[str, Any], ctx: str | None) -> str | None:
        kind = node.get("type")
        children = node.get("children", [])
        if kind == "InvocationExpression" and len(children) == 2:
            left = self.infer(children[0], ctx)
            return self.apply(children[1], left, ctx)
        if kind == "TermExpression":
            return self.term(children[0], ctx) if children else None
        for child in children:
            self.infer(child, ctx)
        return None

    def term(self, node: dict[str, Any], ctx: str | None) -> str | None:
        kind = node.get("type")
        if kind == "InvocationTerm":
            return self.apply(node["children"][0], ctx, ctx, at_root=True)
        if kind == "ParenthesizedTerm":
            return self.infer(node["children"][0], ctx)
        return None  # literals, %variables

    def apply(
        self, node: dict[str, Any], left: str | None, ctx: str | None, at_root: bool = False
    ) -> str | None:
        kind = node.get("type")
        if kind == "MemberInvocation":
            name = _identifier(node)
            if at_root and name == self.root_type:
                return self.root_type
            if not _is_checkable(left):
                return None
            assert left is not None  # noqa: S101  (checked by _is_checkable)
            exists, found = _member(left, name)
            if not exists:
                self.unknown.append((name, left))
            return found
        if kind == "FunctionInvocation":
            functn = node["children"][0]
            name = _identifier(functn)
            params = [c for c in functn.get("children", []) if c.get("type") == "ParamList"]
            args = params[0]["children"] if params else []
            if name in _ITERATORS:
                for arg in args:
                    self.infer(arg, left)
            elif name == "iif":
                for arg in args:
                    self.infer(arg, ctx)
            elif name == "ofType" and args:
                return _identifier_text(args[0])
            if name in _SAME_TYPE:
                return left
            if name == "select" and args:
                return self.infer(args[0], left)
            return None
        return None


def _identifier(node: dict[str, Any]) -> str:
    for child in node.get("children", []):
        if child.get("type") == "Identifier":
            text: str = child.get("text") or ""
            return text.strip("`")
    return ""


def _identifier_text(node: dict[str, Any]) -> str | None:
    text = node.get("text")
    return str(text) if text else None


def unknown_elements(expression: str, resource_type: str) -> list[str]:
    """Messages for element names in `expression` that `resource_type` cannot have.

    The expression must already be syntactically valid.
    """
    walker = _Walker(resource_type)
    walker.infer(parse_tree(expression), resource_type)
    return [f"unknown element {name!r} on {on}" for name, on in walker.unknown]
