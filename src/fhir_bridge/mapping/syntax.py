"""A strict FHIRPath syntax check.

fhirpathpy's parser installs a do-nothing ANTLR error listener and recovers from syntax errors,
so `status = = 'noshow'` compiles (and even evaluates to true). Mapping files must fail at
load time instead, with the line and column of the typo; fhirpathpy offers no strict mode,
so we run its own generated grammar once more with a listener that records every error.
"""

from __future__ import annotations

from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser


class _Collect(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        # ANTLR lists every token it would have accepted; the first half says enough.
        self.errors.append(f"column {column + 1}: {msg.split(' expecting {', 1)[0]}")


def fhirpath_syntax_errors(expression: str) -> list[str]:
    """Every syntax error in `expression` (empty when it parses completely)."""
    listener = _Collect()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.expression()
    if not listener.errors and tokens.LA(1) != Token.EOF:
        extra = tokens.LT(1)
        listener.errors.append(f"column {extra.column + 1}: unexpected {extra.text!r} at the end")
    return listener.errors
