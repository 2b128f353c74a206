"""FHIRPath parse trees, once per expression text per process.

ANTLR parsing in Python costs ~4 ms an expression, and a rule set holds hundreds of them,
parsed by several passes (strict syntax check, element names, guards, the compiled subset,
fhirpathpy itself): every Bridge, every mapping reload and every test paid ~2 s for it. The
trees are pure functions of the text and nobody mutates them (fhirpathpy evaluates one tree
many times), so one cached tree serves every pass. Callers must treat them as read-only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhirpathpy.parser import parse

from fhir_bridge.mapping.syntax import fhirpath_syntax_errors

_SIZE = 8192  # distinct expressions; a large rule set has a few hundred


@lru_cache(maxsize=_SIZE)
def parse_tree(text: str) -> dict[str, Any]:
    """fhirpathpy's parse tree of `text` (shared: do not change it)."""
    tree: dict[str, Any] = parse(text)  # type: ignore[no-untyped-call]
    return tree


@lru_cache(maxsize=_SIZE)
def _syntax_errors(text: str) -> tuple[str, ...]:
    return tuple(fhirpath_syntax_errors(text))


def syntax_errors(text: str) -> list[str]:
    """`syntax.fhirpath_syntax_errors`, remembered per text."""
    return list(_syntax_errors(text))
