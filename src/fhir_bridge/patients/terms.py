"""The search terms of a Patient record, kept in each store's patient index.

`n:<word>` for every word of its names (case and accents folded, as a coordinator types them),
`b:<birthDate>` and `i:<identifier value>`. Patient search (`patients.search`) asks the
store for the records holding a term, or a term starting with a prefix, intersects the parts
of the query, and checks the few records found against the query itself: the index only
narrows, it never decides. No store imports here (the stores import this module).
"""

from __future__ import annotations

import unicodedata
from typing import Any

NAME, BIRTH, IDENTIFIER = "n:", "b:", "i:"


def fold(text: str) -> str:
    """`text` as compared in searches: accents removed, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def name_words(patient: dict[str, Any]) -> set[str]:
    """The folded words of every name of a Patient (text, family and given)."""
    words: set[str] = set()
    for n in patient.get("name") or []:
        if not isinstance(n, dict):
            continue
        for part in [n.get("text"), n.get("family"), *(n.get("given") or [])]:
            if isinstance(part, str):
                words.update(fold(part).split())
    return words


def patient_terms(patient: dict[str, Any]) -> list[str]:
    """The index terms of a Patient resource, sorted, once each."""
    terms = {NAME + w for w in name_words(patient)}
    if isinstance(birth := patient.get("birthDate"), str) and birth:
        terms.add(BIRTH + birth)
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(value := ident.get("value"), str) and value:
            terms.add(IDENTIFIER + value)
    return sorted(terms)
