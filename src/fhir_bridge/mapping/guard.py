"""A fast pre-check for `when`, derived from its top-level `and` terms.

fhirpathpy interprets the parse tree on every call (about 0.3 ms per expression here), and
most resources fail a rule on its first test (`status = 'noshow'`). So at load time we pick
the conjuncts of the form `element = 'text'` and `element in ('a' | 'b')` on a top-level
element, and check them in plain Python first. In FHIRPath, `and` is true only when every
conjunct is true, so a conjunct that is false (or empty: element missing) proves `when` is not
true without evaluating it. Anything the guard cannot judge (a list value, another shape) it
leaves to the full evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_bridge.mapping.parsing import parse_tree


@dataclass(frozen=True)
class Guard:
    """Conjuncts `element in {values}` that `when` requires."""

    tests: tuple[tuple[str, frozenset[str]], ...]
    exact: bool = False  # the tests are the whole expression: passing them means `true`

    def decide(self, resource: Mapping[str, Any]) -> bool | None:
        """True/False when the guard alone settles the expression, else None."""
        for element, _ in self.tests:
            if isinstance(resource.get(element), list | dict):
                return None
        if self.fails(resource) is not None:
            return False
        return True if self.exact else None

    def fails(self, resource: Mapping[str, Any]) -> str | None:
        """The element whose test proves `when` false, or None when the guard cannot tell."""
        for element, allowed in self.tests:
            value = resource.get(element)
            if isinstance(value, list | dict):
                continue  # repeating or complex: FHIRPath semantics differ, let it evaluate
            if value is None or value not in allowed:
                return element
        return None


def _member(node: dict[str, Any]) -> str | None:
    """`status` for a bare top-level member term, else None."""
    if node.get("type") != "TermExpression":
        return None
    invocation = node["children"][0] if node.get("children") else {}
    if invocation.get("type") != "InvocationTerm":
        return None
    member = invocation["children"][0]
    if member.get("type") != "MemberInvocation":
        return None
    ident = member["children"][0]
    return str(ident.get("text")) if ident.get("type") == "Identifier" else None


def _strings(node: dict[str, Any]) -> frozenset[str] | None:
    """The string literals of `'a'`, `('a')` or `('a' | 'b' | ...)`, else None."""
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "TermExpression" and children:
        return _strings(children[0])
    if kind == "LiteralTerm" and children and children[0].get("type") == "StringLiteral":
        text = str(children[0].get("text"))
        if "\\" in text:
            return None  # escapes: leave to FHIRPath
        return frozenset({text[1:-1]})
    if kind == "ParenthesizedTerm" and children:
        return _strings(children[0])
    if kind == "UnionExpression" and len(children) == 2:
        left, right = _strings(children[0]), _strings(children[1])
        return left | right if left is not None and right is not None else None
    return None


def _necessary(node: dict[str, Any]) -> dict[str, frozenset[str]]:
    """For each element, the values it must have for `node` to be true (what we can tell)."""
    kind = node.get("type")
    children = node.get("children", [])
    op = (node.get("terminalNodeText") or [None])[0]
    if kind is None and children:
        return _necessary(children[0])
    if kind == "TermExpression" and children and children[0].get("type") == "ParenthesizedTerm":
        return _necessary(children[0]["children"][0])
    if len(children) != 2:
        return {}
    if kind == "AndExpression":
        left, right = _necessary(children[0]), _necessary(children[1])
        both = {**left, **right}
        for element in left.keys() & right.keys():
            both[element] = left[element] & right[element]
        return both
    if kind == "OrExpression" and op == "or":
        left, right = _necessary(children[0]), _necessary(children[1])
        return {e: left[e] | right[e] for e in left.keys() & right.keys()}
    if (kind, op) in (("EqualityExpression", "="), ("MembershipExpression", "in")):
        member, values = _member(children[0]), _strings(children[1])
        if member and values is not None:
            return {member: values}
    return {}


def _exact(node: dict[str, Any]) -> bool:
    """True when `node` is nothing but guardable tests joined by `and`."""
    kind = node.get("type")
    children = node.get("children", [])
    op = (node.get("terminalNodeText") or [None])[0]
    if kind is None and children:
        return _exact(children[0])
    if kind == "TermExpression" and children and children[0].get("type") == "ParenthesizedTerm":
        return _exact(children[0]["children"][0])
    if kind == "AndExpression" and len(children) == 2:
        return _exact(children[0]) and _exact(children[1])
    if (kind, op) in (("EqualityExpression", "="), ("MembershipExpression", "in")):
        return (
            len(children) == 2 and bool(_member(children[0])) and _strings(children[1]) is not None
        )
    return False


def build_guard(when: str) -> Guard:
    """The guard of a (syntactically valid) `when` expression; it may have no tests."""
    tree = parse_tree(when)
    necessary = _necessary(tree)
    return Guard(tuple(sorted(necessary.items())), exact=bool(necessary) and _exact(tree))
