"""Code translation through FHIR ConceptMap files kept in `mappings/conceptmaps/`.

Rules call it as a FHIRPath function: `appointmentType.coding.translate('appointment-type')`
turns each input code (or Coding) into the target codes the map gives, and
`translateDisplay(...)` into the targets' display texts. A map is named by its `id`, `name`
or `url`. Unmapped codes give nothing (the expression's other parts decide the fallback).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_bridge.errors import MappingError


@dataclass
class ConceptMaps:
    """All ConceptMaps of a mapping folder, indexed for lookup."""

    # map name -> (source system or "", source code) -> [(target code, target display)]
    maps: dict[str, dict[tuple[str, str], list[tuple[str, str | None]]]] = field(
        default_factory=dict
    )

    @classmethod
    def load(cls, folder: Path) -> ConceptMaps:
        """Read every `*.json` ConceptMap in `folder` (none is fine)."""
        maps = cls()
        if not folder.is_dir():
            return maps
        for path in sorted(folder.glob("*.json")):
            maps._add(path)
        return maps

    def _add(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MappingError(f"not a readable JSON ConceptMap: {exc}", file=str(path)) from None
        if not isinstance(data, dict) or data.get("resourceType") != "ConceptMap":
            raise MappingError("not a ConceptMap (resourceType)", file=str(path))
        table: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        for group in data.get("group", []):
            system = group.get("source", "")
            for element in group.get("element", []):
                targets = [
                    (t["code"], t.get("display"))
                    for t in element.get("target", [])
                    if t.get("code") and t.get("equivalence", "equivalent") != "unmatched"
                ]
                table.setdefault((system, element.get("code", "")), []).extend(targets)
                table.setdefault(("", element.get("code", "")), []).extend(targets)
        for name in (data.get("id"), data.get("name"), data.get("url")):
            if name:
                self.maps[str(name)] = table

    def _targets(self, inputs: Iterable[Any], name: str) -> list[tuple[str, str | None]]:
        table = self.maps.get(name)
        if table is None:
            raise ValueError(f"no ConceptMap named {name!r}")
        found: list[tuple[str, str | None]] = []
        for item in inputs:
            if isinstance(item, dict):
                key = (item.get("system", ""), item.get("code", ""))
            else:
                key = ("", str(item))
            # A Coding with a system must match a group of that system; a bare code, any group.
            found.extend(table.get(key, []) if key[0] else table.get(("", key[1]), []))
        return found

    def functions(self) -> dict[str, dict[str, Any]]:
        """fhirpathpy user functions `translate(map)` and `translateDisplay(map)`."""
        return {
            "translate": {
                "fn": lambda inputs, name: [c for c, _ in self._targets(inputs, name)],
                "arity": {1: ["String"]},
                "maps": frozenset(self.maps),
            },
            "translateDisplay": {
                "fn": lambda inputs, name: [d or c for c, d in self._targets(inputs, name)],
                "arity": {1: ["String"]},
                "maps": frozenset(self.maps),
            },
        }
