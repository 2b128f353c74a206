"""Faster accept paths for fhir_core's Python-level validators; the same answers, measured.

Why by hand: `fhir.resources` (through `fhir_core`) runs four Python functions for every
element it builds, and they, not pydantic-core, were half the CPU of validating a resource
(py-spy on 10,218 generated resources: 2.3 s, 1.1 s of it in `reject_null_complex_elements`,
which walks every field of the model and inspects its annotation on each call). No release
of `fhir_core` does better (1.1.12 is the newest), so this module gives each of them a fast
path that answers "nothing wrong here" from per-class tables built once, and hands anything
else to the library's own function, so every error is still the library's own, word for word:

- `reject_null_complex_elements` (a model "before" validator): the complex list fields are
  computed once per class; only a list that holds a null goes to the original.
- `_validate_one_of_many`: choice groups ([x] elements) with their "required" flag, per class;
  a group with two values, or a required one with none, goes to the original.
- `_validate_required_primitive_elements`: the (field, extension) pairs, per class; a missing
  required value goes to the original (which weighs the `_field` extension).
- `FhirBase.get_model_klass`: an unbounded cache (the library's `lru_cache` keeps 128 of the
  R4B's ~200 element types, so a sync imported classes by dotted name again and again).

The first applies to model classes built after `install()` (pydantic binds a class's
validators when the class is created): `fhir_bridge.validate.parse` installs before it
imports any R4B model. The other three are looked up at call time and apply everywhere.

Installed only for the `fhir_core` versions listed in `TESTED` (their internals are what this
relies on; tests/validate/test_speedups.py proves the same findings with and without, on every
HL7 example and on broken ones). `FHIR_BRIDGE_VALIDATE_SPEEDUPS=0` in the environment turns
them off.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

TESTED = frozenset({"1.1.12"})
ENV = "FHIR_BRIDGE_VALIDATE_SPEEDUPS"

_state: dict[str, bool] = {"installed": False}


def installed() -> bool:
    """True when `install()` patched fhir_core in this process."""
    return _state["installed"]


def wanted() -> bool:
    """False when switched off by the environment or for an untested fhir_core version."""
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    try:
        return metadata.version("fhir_core") in TESTED
    except metadata.PackageNotFoundError:
        return False


def install() -> bool:
    """Patch fhir_core once (idempotent); True when the speedups are in place."""
    if _state["installed"] or not wanted():
        return _state["installed"]
    from fhir_core.fhirabstractmodel import FHIRAbstractModel
    from fhir_core.types import FhirBase
    from fhir_core.utils import is_list_type, is_primitive_type
    from pydantic._internal._validators import import_string

    model: Any = FHIRAbstractModel  # its methods are untyped: patched through Any
    original_reject = model.__dict__["reject_null_complex_elements"].__func__
    original_one_of_many = model._validate_one_of_many
    original_required = model._validate_required_primitive_elements

    complex_lists: dict[type, tuple[tuple[str, str | None], ...]] = {}
    choices: dict[type, tuple[tuple[tuple[str, ...], bool], ...]] = {}
    required: dict[type, tuple[tuple[str, str | None], ...]] = {}

    def reject_null_complex_elements(cls: Any, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = complex_lists.get(cls)
        if fields is None:
            fields = complex_lists[cls] = tuple(
                (name, field.alias)
                for name, field in cls.model_fields.items()
                if is_list_type(field)
                and not is_primitive_type(field)
                and not name.endswith("__ext")
            )
        for name, alias in fields:
            value = data.get(alias if alias and alias in data else name)
            if isinstance(value, list) and any(item is None for item in value):
                return original_reject(cls, data)  # raises the library's own error
        return data

    def _validate_one_of_many(self: Any) -> None:
        cls = type(self)
        groups = choices.get(cls)
        if groups is None:
            groups = choices[cls] = tuple(
                (
                    tuple(fields),
                    cls.model_fields[fields[0]].json_schema_extra["one_of_many_required"] is True,
                )
                for fields in self.get_one_of_many_fields().values()
            )
        for fields, needed in groups:
            found = 0
            for field in fields:
                if getattr(self, field, None) is not None:
                    found += 1
            if found > 1 or (needed and not found):
                original_one_of_many(self)  # raises the library's own error
                return

    def _validate_required_primitive_elements(self: Any) -> None:
        cls = type(self)
        pairs = required.get(cls)
        if pairs is None:
            aliases = self.get_alias_mapping()
            pairs = required[cls] = tuple(
                (aliases[name], ext) for name, ext in self.get_required_fields()
            )
        for key, _ext in pairs:
            if getattr(self, key, None) is None:
                original_required(self)  # weighs the extension; raises if truly missing
                return

    classes: dict[Any, Any] = {}

    def get_model_klass(cls: Any) -> Any:
        found = classes.get(cls)
        if found is None:
            found = classes[cls] = import_string(cls._model_klass)
        return found

    model.reject_null_complex_elements = classmethod(reject_null_complex_elements)
    model._validate_one_of_many = _validate_one_of_many
    model._validate_required_primitive_elements = _validate_required_primitive_elements
    base: Any = FhirBase
    base.get_model_klass = classmethod(get_model_klass)
    _state["installed"] = True
    return True
