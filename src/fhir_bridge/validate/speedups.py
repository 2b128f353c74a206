"""Faster accept paths for fhir_core's Python-level validators; the same answers, measured.

Why by hand: `fhir.resources` (through `fhir_core`) runs several Python functions for every
element it builds, and they, not pydantic-core, were most of the CPU of validating a resource
(py-spy on 10,218 generated resources: 2.25 s, 1.1 s of it in `reject_null_complex_elements`,
which walks every field of the model and inspects its annotation on each call). No release
of `fhir_core` does better (1.1.12 is the newest), so this module gives each of them a fast
path that answers "nothing wrong here" from per-class tables built once, and hands anything
else to the library's own function, so every error is still the library's own, word for word:

- `reject_null_complex_elements` (a "before" validator): only a dict holding a list with a
  null in it goes to the original (which tells complex lists from primitive ones).
- `validate_after_model_construction` (an "after" validator that pydantic runs twice per
  element), `_validate_required_primitive_elements`, `_validate_one_of_many`: the required
  primitive fields and the choice groups ([x] elements) are tabled per class; a missing value
  or a choice with two values (or none, where required) goes to the original checks.
- `FhirBase.fhir_model_validator` (per nested element): a dict without a resource type is
  validated straight into a new instance (`validate_python(self_instance=)`, what the model's
  `__init__` would do after looking for a resource type), one call into pydantic-core instead
  of two; a result of exactly the expected class needs none of the original's type checks;
  anything else (a contained resource, an instance, a string) takes the original path.
- Shared elements (`sharing()`, what `validate_resource` validates under; the element
  fields' wrap validator, from `FhirBase.__get_pydantic_core_schema__`): a nested element
  equal, as JSON, to one already validated as the same type passes as that one did (its
  instance is reused), without running its validators again. Most elements repeat (codings,
  identifiers' types, extensions, meta): 82% of the nested element validations of the 10k
  generated population and 90% of the 30-patient sample are repeats, and ingest runs 26%
  fewer instructions (callgrind, 10,218 resources). Only passes are remembered, so every
  error is still found and worded by the library; the memo is bounded (`MEMO_LIMIT`
  entries, emptied when full) and used only inside `sharing()`, whose models are thrown
  away, so no caller holds an instance another resource shares.
- `FhirBase.get_model_klass`: an unbounded cache (the library's `lru_cache` keeps 128 of the
  R4B's ~200 element types, so a sync imported classes by dotted name again and again).

Result: 10,218 generated resources in 1.0 s instead of 2.95 s (same machine, same minute;
`make bench` shows "bare R4B parse" against "library as released" on the sample), before the
shared elements. The two validators and the element fields' schema apply to model classes
built after `install()` (pydantic binds them when a class is created):
`fhir_bridge.validate.parse` installs before it imports any R4B model. The rest are looked
up at call time and apply everywhere.

Installed only for the `fhir_core` versions listed in `TESTED` (their internals are what this
relies on; tests/validate/test_speedups.py proves the same findings with and without, on every
HL7 example and on thousands of broken ones). `FHIR_BRIDGE_VALIDATE_SPEEDUPS=0` in the
environment turns them off.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from importlib import metadata
from types import TracebackType
from typing import Any

import orjson

TESTED = frozenset({"1.1.12"})
ENV = "FHIR_BRIDGE_VALIDATE_SPEEDUPS"

_state: dict[str, bool] = {"installed": False}

# Elements validated under `sharing()`, by (type, JSON): the instance to reuse for an equal one.
# Entries, then emptied: about 5 kB each with their instances (some 20 MB). On the 10k
# generated population 4,096 keep 80% of the nested validations off, against 82% unbounded.
MEMO_LIMIT = 4_096
_memo: dict[tuple[type, bytes], Any] = {}
# An element type found again in under 1 of 16 of its first PROBE lookups is not looked up
# (nor remembered) for its next REPROBE elements; then probed afresh.
PROBE = 512
REPROBE = 50_000
_probes: list[list[int]] = []  # [lookups, hits] of each element field's validator
_sharing: ContextVar[bool] = ContextVar("fhir_bridge_sharing", default=False)


class sharing:  # lower case: used as a function, `with sharing():`
    """Within this block (this thread or task), a nested element equal to one validated
    before as the same class passes without being validated again (see the module's text).

    Only for validations whose models are thrown away: the instances are shared.
    """

    def __enter__(self) -> None:
        self._token = _sharing.set(True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _sharing.reset(self._token)


def memo_size() -> int:
    """Elements remembered now (for tests)."""
    return len(_memo)


def forget() -> None:
    """Empty the memo and start every type's probe afresh (for tests and benchmarks)."""
    _memo.clear()
    for probe in _probes:
        probe[:] = [0, 0]


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
    from pydantic._internal._validators import import_string

    model: Any = FHIRAbstractModel  # its methods are untyped: patched through Any
    original_reject = model.__dict__["reject_null_complex_elements"].__func__
    original_one_of_many = model._validate_one_of_many
    original_required = model._validate_required_primitive_elements
    base: Any = FhirBase
    original_model_validator = base.__dict__["fhir_model_validator"].__func__

    plans: dict[type, tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool], ...]]] = {}

    def reject_null_complex_elements(cls: Any, data: Any) -> Any:
        # Any list holding a null, whatever its field, goes to the library's function: it
        # tells complex lists (an error) from primitive ones (positional nulls, fine).
        if isinstance(data, dict):
            for value in data.values():
                if isinstance(value, list) and None in value:
                    return original_reject(cls, data)
        return data

    def plan(self: Any) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], bool], ...]]:
        """The class's required primitive fields and choice groups (with "required" flags)."""
        cls = type(self)
        found = plans.get(cls)
        if found is None:
            aliases = self.get_alias_mapping()
            fields = cls.model_fields
            found = plans[cls] = (
                tuple(aliases[name] for name, _ext in self.get_required_fields()),
                tuple(
                    (
                        tuple(group),
                        fields[group[0]].json_schema_extra["one_of_many_required"] is True,
                    )
                    for group in self.get_one_of_many_fields().values()
                ),
            )
        return found

    def required_ok(self: Any, keys: tuple[str, ...]) -> bool:
        values = self.__dict__
        return all(values.get(key) is not None for key in keys)

    def choices_ok(self: Any, groups: tuple[tuple[tuple[str, ...], bool], ...]) -> bool:
        values = self.__dict__
        for group, needed in groups:
            found = sum(1 for field in group if values.get(field) is not None)
            if found > 1 or (needed and not found):
                return False
        return True

    def _validate_required_primitive_elements(self: Any) -> None:
        if not required_ok(self, plan(self)[0]):
            original_required(self)  # weighs the `_field` extension; raises if truly missing

    def _validate_one_of_many(self: Any) -> None:
        if not choices_ok(self, plan(self)[1]):
            original_one_of_many(self)  # raises the library's own error

    def validate_after_model_construction(self: Any) -> Any:
        # The library's after validator, both checks in one call (pydantic runs it twice per
        # element: around the model's custom __init__ and inside it).
        keys, groups = plans.get(type(self)) or plan(self)
        if keys and not required_ok(self, keys):
            original_required(self)
        if groups and not choices_ok(self, groups):
            original_one_of_many(self)
        return self

    def fhir_model_validator(cls: Any, value: Any, model_klass: Any) -> Any:
        # A nested element from JSON: validated, and of the expected class, it passes the
        # library's checks (the same class has the same resource type); else they run.
        if type(value) is dict:
            if "resourceType" in value or "resource_type" in value:
                value = model_klass.model_validate(value)  # a resource: __init__ checks its type
            else:
                # What model_validate does through the model's __init__ (which only looks
                # for a resource type), without the detour: one call into pydantic-core
                # instead of two, and the after validator once instead of twice.
                element = model_klass.__new__(model_klass)
                value = model_klass.__pydantic_validator__.validate_python(
                    value, self_instance=element
                )
            if type(value) is model_klass:
                return value
        return original_model_validator(cls, value, model_klass)

    original_core_schema = base.__dict__["__get_pydantic_core_schema__"].__func__

    def __get_pydantic_core_schema__(cls: Any, source_type: Any, handler: Any) -> Any:
        # The library's schema for an element field, with its wrap validator (`_validate`,
        # which finds the class and calls `fhir_model_validator`) behind the memo of shared
        # elements. Not for the Resource/Element fields (contained, Bundle entries): their
        # validator checks more than the class.
        schema = original_core_schema(cls, source_type, handler)
        if (
            getattr(cls.fhir_model_validator, "__func__", None) is not fhir_model_validator
            or schema.get("type") != "function-wrap"
        ):
            return schema
        library = schema["function"]["function"]
        dumps, memo = orjson.dumps, _memo
        # This type's lookups and hits; a type whose elements rarely repeat (Meta: a version
        # and a timestamp of its own) is validated straight until it is probed again.
        seen_here = [0, 0]
        _probes.append(seen_here)

        def validate(value: Any, validator: Any, info: Any) -> Any:
            if type(value) is dict and _sharing.get() and "resourceType" not in value:
                tries, hits = seen_here
                if tries >= PROBE and hits * 16 < tries:  # under 1 in 16 a repeat
                    seen_here[0] += 1
                    if tries >= PROBE + REPROBE:
                        seen_here[0] = seen_here[1] = 0
                    return library(value, validator, info)
                try:
                    blob = dumps(value)
                except TypeError:  # orjson.JSONEncodeError: beyond 64 bits, lone surrogates
                    blob = b"null"
                # orjson writes NaN and Infinity as null: a JSON null is never a key. (`find`,
                # not `in`: CPython's bytes `in` first tries its operand as an integer, and
                # raises and clears a TypeError each time: 1.2% of a first load's ingest.)
                if blob.find(b"null") < 0 and "resource_type" not in value:
                    key = (source_type, blob)  # key order counts: another order is a miss
                    seen = memo.get(key)
                    seen_here[0] += 1
                    if seen is not None:
                        seen_here[1] += 1
                        return seen
                    element = library(value, validator, info)  # raises unless it passes
                    if len(memo) >= MEMO_LIMIT:
                        memo.clear()
                    memo[key] = element
                    return element
            return library(value, validator, info)

        schema["function"]["function"] = validate
        return schema

    classes: dict[Any, Any] = {}

    def get_model_klass(cls: Any) -> Any:
        found = classes.get(cls)
        if found is None:
            found = classes[cls] = import_string(cls._model_klass)
        return found

    model.reject_null_complex_elements = classmethod(reject_null_complex_elements)
    model._validate_one_of_many = _validate_one_of_many
    model.validate_after_model_construction = validate_after_model_construction
    model._validate_required_primitive_elements = _validate_required_primitive_elements
    base.get_model_klass = classmethod(get_model_klass)
    base.fhir_model_validator = classmethod(fhir_model_validator)
    base.__get_pydantic_core_schema__ = classmethod(__get_pydantic_core_schema__)
    _state["installed"] = True
    return True
