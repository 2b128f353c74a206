"""Compiled FHIRPath expressions and `{{ FHIRPath }}` text templates.

Compiling checks three things, so a broken rule fails at load time with its position: the
syntax (strictly: fhirpathpy itself recovers from syntax errors), the element names (an
unknown element makes an expression silently empty), and the `%names` used (a typo in a
`let` name is an error, not an empty value).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_DateTime
from fhirpathpy.engine.util import set_paths
from fhirpathpy.models import models

from fhir_bridge.mapping.elements import unknown_elements
from fhir_bridge.mapping.fastpath import Fallback, compile_fast
from fhir_bridge.mapping.parsing import parse_tree, syntax_errors

_R4 = models["r4"]
_INTERPOLATION = re.compile(r"\{\{(.+?)\}\}")
_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
# Variables fhirpathpy or the engine always provides.
BUILTIN_VARIABLES = frozenset({"now", "context", "resource", "ucum", "sct", "loinc", "source"})

Functions = Mapping[str, dict[str, Any]]
# Tests switch the compiled subset off to compare it with fhirpathpy.
FAST_PATH = True


class ExpressionError(ValueError):
    """An expression that does not compile; the message says why."""


class LazyEnv(dict[str, Any]):
    """Variables computed when an expression first reads them (`__missing__`), so that
    `when: status = 'booked' and %coverages.empty()` reads no Coverage for a cancelled visit.
    The compiled subset reads names one by one; before fhirpathpy runs, `fill` computes all
    the expression's names."""

    def fill(self, names: Iterable[str]) -> None:
        """Compute each of `names` that is not known yet."""
        for name in names:
            if name not in self:
                try:
                    self[name]  # __missing__ computes and stores it
                except KeyError:
                    pass  # not one of the rule's names: fhirpathpy reports it as before


@dataclass(frozen=True)
class Expr:
    """A compiled FHIRPath expression that remembers its text."""

    text: str
    fn: Callable[[Any, Mapping[str, Any]], list[Any]]
    fast: Callable[[Any, Mapping[str, Any]], list[Any]] | None = None
    # The `%names` the expression reads (so they can be computed only when needed).
    variables: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = frozenset(_VARIABLE.findall(self.text)) - BUILTIN_VARIABLES
        object.__setattr__(self, "variables", names)

    def __call__(self, resource: Any, env: Mapping[str, Any]) -> list[Any]:
        if self.fast is not None and FAST_PATH:
            try:
                return self.fast(resource, env)
            except Fallback:
                pass  # a value the compiled subset cannot judge: fhirpathpy decides
        if isinstance(env, LazyEnv):
            env.fill(self.variables)  # fhirpathpy reads a plain dict: compute every name now
        now = env.get("now")
        if isinstance(now, str):
            # fhirpathpy treats a text %now as a string: comparisons would be textual and
            # `+ 2 hours` would fail. Hand it a FHIRPath dateTime instead.
            env = {**env, "now": _fp_datetime(now)}
        return self.fn(resource, env)


def compile_expr(
    text: str,
    resource_type: str | None,
    variables: Collection[str],
    functions: Functions,
) -> Expr:
    """Compile `text`, checking syntax, element names (when `resource_type` is known) and %names.

    :raises ExpressionError: with every problem found.
    """
    problems = syntax_errors(text)
    if not problems:
        if resource_type:
            problems += unknown_elements(text, resource_type)
        known = BUILTIN_VARIABLES | set(variables)
        problems += [f"unknown variable %{n}" for n in _VARIABLE.findall(text) if n not in known]
        problems += _function_problems(text, functions)
    if problems:
        raise ExpressionError("; ".join(problems))
    try:
        # fhirpathpy's `compile`, over the shared parse tree
        options = {"userInvocationTable": dict(functions)}
        fn = set_paths(  # type: ignore[no-untyped-call]
            apply_parsed_path, parsedPath=parse_tree(text), model=_R4, options=options
        )
    except Exception as exc:  # fhirpathpy raises bare Exception
        raise ExpressionError(str(exc) or type(exc).__name__) from None
    return Expr(text, fn, compile_fast(text, functions))


def _function_problems(text: str, functions: Functions) -> list[str]:
    """Functions neither FHIRPath (as fhirpathpy implements it) nor the bridge provide, and
    ConceptMaps named in `translate(...)` that are not loaded."""
    problems: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("type") == "Functn":
            ident: dict[str, Any] = next(
                (c for c in node.get("children", []) if c.get("type") == "Identifier"), {}
            )
            name = str(ident.get("text"))
            if name not in invocation_registry and name not in functions:
                problems.append(f"unknown function {name}()")
            maps = functions.get(name, {}).get("maps")
            params = [c for c in node.get("children", []) if c.get("type") == "ParamList"]
            args = params[0].get("children", []) if params else []
            if maps is not None and args and args[0].get("text", "").startswith("'"):
                wanted = str(args[0]["text"])[1:-1]
                if wanted not in maps:
                    problems.append(f"no ConceptMap named {wanted!r} in the conceptmaps folder")
        for child in node.get("children", []):
            walk(child)

    walk(parse_tree(text))
    return problems


@lru_cache(maxsize=64)
def _fp_datetime(text: str) -> Any:
    """A FHIRPath dateTime in the one form fhirpathpy 2.2 adds hours to: with milliseconds
    (`...T12:00:00+00:00` without them makes it fail with UnboundLocalError)."""
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return FP_DateTime(moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00")  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Template:
    """Text with `{{ FHIRPath }}` parts; each part's values are joined with ', '."""

    text: str
    parts: tuple[str | Expr, ...]
    # The `%names` the template's expressions read: computed once (each render asks).
    variables: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = frozenset().union(*(p.variables for p in self.parts if isinstance(p, Expr)))
        object.__setattr__(self, "variables", names)

    def render(self, resource: Any, env: Mapping[str, Any]) -> str:
        """The text with every expression replaced by its value."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(", ".join(str(v) for v in part(resource, env)))
        return "".join(out).strip()

    @property
    def is_static(self) -> bool:
        """True when the template has no expression."""
        return all(isinstance(p, str) for p in self.parts)


def compile_template(
    text: str, resource_type: str | None, variables: Collection[str], functions: Functions
) -> Template:
    """Compile every `{{ }}` part of `text` (ExpressionError names the part that fails)."""
    parts: list[str | Expr] = []
    pos = 0
    for match in _INTERPOLATION.finditer(text):
        parts.append(text[pos : match.start()])
        inner = match.group(1).strip()
        try:
            parts.append(compile_expr(inner, resource_type, variables, functions))
        except ExpressionError as exc:
            raise ExpressionError(f"in {{{{ {inner} }}}}: {exc}") from None
        pos = match.end()
    parts.append(text[pos:])
    return Template(text, tuple(p for p in parts if p != ""))
