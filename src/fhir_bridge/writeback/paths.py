"""Element paths for `update_focus.set`: read and write `a.b.where(<FHIRPath>).c` in a resource.

A path is dotted element names; any name may be followed by `.where(<FHIRPath>)`, which keeps
only the elements for which the FHIRPath (evaluated on each element) is exactly `true`.
Repeating elements are walked element by element, as FHIRPath does. Writing sets the last
name on every element the path reaches; a missing element along a path without filters is
created, a filter that matches nothing writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_bridge.mapping.expr import Expr, compile_expr


class PathError(ValueError):
    """An element path this setter does not understand."""


@dataclass(frozen=True)
class _Step:
    name: str
    where: Expr | None = None


def _split(path: str) -> list[str]:
    """Split on the dots outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(path):
        if ch == "'" and (i == 0 or path[i - 1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == ".":
            parts.append(path[start:i])
            start = i + 1
    if depth or quote:
        raise PathError(f"unbalanced parentheses or quotes in path {path!r}")
    parts.append(path[start:])
    return parts


@lru_cache(maxsize=256)
def parse_path(path: str) -> tuple[_Step, ...]:
    """The steps of `path`.

    :raises PathError: an empty name, a function other than `where`, or a bad filter.
    """
    steps: list[_Step] = []
    for part in _split(path.strip()):
        if part.startswith("where(") and part.endswith(")"):
            if not steps or steps[-1].where is not None:
                raise PathError(f"where() must follow an element name in {path!r}")
            try:
                expr = compile_expr(part[6:-1], None, (), {})
            except ValueError as exc:
                raise PathError(f"bad filter in {path!r}: {exc}") from None
            steps[-1] = _Step(steps[-1].name, expr)
        elif part.isidentifier():
            steps.append(_Step(part))
        else:
            raise PathError(f"{part!r} in {path!r} is not an element name or where(...)")
    return tuple(steps)


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _keep(step: _Step, items: list[Any]) -> list[Any]:
    if step.where is None:
        return items
    return [i for i in items if step.where(i, {}) == [True]]


def get_values(resource: dict[str, Any], path: str) -> list[Any]:
    """Every value the path reaches, in document order."""
    nodes: list[Any] = [resource]
    for step in parse_path(path):
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict):
                found += _items(node.get(step.name))
        nodes = _keep(step, found)
    return nodes


def set_value(resource: dict[str, Any], path: str, value: Any) -> int:
    """Set the element at `path` to `value` (None removes it), in place.

    :returns: how many elements were set.
    """
    steps = parse_path(path)
    *walk, last = steps
    if last.where is not None:
        raise PathError(f"the last name of {path!r} cannot have a where() filter")
    nodes: list[dict[str, Any]] = [resource]
    for step in walk:
        found: list[Any] = []
        for node in nodes:
            if step.name not in node and step.where is None:
                node[step.name] = {}
            found += _items(node.get(step.name))
        nodes = [n for n in _keep(step, found) if isinstance(n, dict)]
    for node in nodes:
        if value is None:
            node.pop(last.name, None)
        else:
            node[last.name] = value
    return len(nodes)
