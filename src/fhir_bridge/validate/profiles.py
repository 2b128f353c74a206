"""Profile checks: cardinality, fixed and pattern values, required bindings, mustSupport gaps.

Why hand-written: fhir.resources checks structure only (it accepts `gender: "bogus"`), and no
established Python validator of FHIR profiles runs offline (PyPI has a few young 0.x packages,
none among its 15,000 most downloaded; the HL7 reference validator is Java). What
our data needs from a differential StructureDefinition fits in one pass over the JSON with
rule tables precomputed at load, well under the cost of the R4B parse.

Not checked, by design (profiles/README.md): slices (`Patient.extension:race`; a type slice
such as `value[x]:valueQuantity` is checked as `valueQuantity`), FHIRPath invariants,
non-required bindings, reference targets. ProfileSet.notes lists what a profile asked for that
was skipped.

Issues never quote a resource's value, except a code in an element bound to a required value
set, and only when it looks like a code: such codes are not PHI, names and dates are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_bridge.errors import ConfigError
from fhir_bridge.validate.parse import Issue, is_known_type

CORE_VS = "http://hl7.org/fhir/ValueSet/"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"

# The FHIR R4 (4.0.1) core's required bindings on the elements of our five types that
# servers fill in. Datatype bindings (HumanName.use, Timing.repeat.when...) are listed
# where those datatypes occur. Not listed: bindings to huge value sets (Money.currency,
# Attachment.contentType) and elements these types rarely carry.
_COMMON = {"text.status": "narrative-status", "identifier.use": "identifier-use"}
_CONTACT_POINT = {"system": "contact-point-system", "use": "contact-point-use"}
_ADDRESS = {"use": "address-use", "type": "address-type"}
_TIMING = {
    "repeat.durationUnit": "units-of-time",
    "repeat.periodUnit": "units-of-time",
    "repeat.dayOfWeek": "days-of-week",
    "repeat.when": "event-timing",
}


def _under(prefix: str, table: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}.{path}": vs for path, vs in table.items()}


CORE_BINDINGS: dict[str, dict[str, str]] = {
    "Patient": {
        **_COMMON,
        "gender": "administrative-gender",
        "name.use": "name-use",
        **_under("telecom", _CONTACT_POINT),
        **_under("address", _ADDRESS),
        "contact.gender": "administrative-gender",
        "contact.name.use": "name-use",
        **_under("contact.telecom", _CONTACT_POINT),
        **_under("contact.address", _ADDRESS),
        "link.type": "link-type",
    },
    "Appointment": {
        **_COMMON,
        "status": "appointmentstatus",
        "participant.required": "participantrequired",
        "participant.status": "participationstatus",
    },
    "CarePlan": {
        **_COMMON,
        "status": "request-status",
        "intent": "care-plan-intent",
        "activity.detail.kind": "care-plan-activity-kind",
        "activity.detail.status": "care-plan-activity-status",
        **_under("activity.detail.scheduledTiming", _TIMING),
    },
    "MedicationStatement": {
        **_COMMON,
        "status": "medication-statement-status",
        **_under("dosage.timing", _TIMING),
    },
    "CoverageEligibilityRequest": {
        **_COMMON,
        "status": "fm-status",
        "purpose": "eligibilityrequest-purpose",
    },
}

_SHOWABLE_CODE = re.compile(r"[A-Za-z0-9<>=][A-Za-z0-9._<>=-]{0,39}")


class _Unset:
    """The marker of "no fixed/pattern value"; one instance, kept one through pickling (the
    parse pool's workers receive the ProfileSet pickled and compare with `is`)."""

    def __reduce__(self) -> str:
        return "_UNSET"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class ValueSet:
    """A value set reduced to what membership needs: codes, and (system, code) pairs."""

    url: str
    name: str
    codes: frozenset[str]
    pairs: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class _Rule:
    """One element's constraints; `path` is the JSON keys below the resource."""

    path: tuple[str, ...]
    source: str  # the profile's short name, or "core"
    min: int = 0
    max: int | None = None
    fixed: Any = _UNSET
    pattern: Any = _UNSET
    value_set: ValueSet | None = None
    must_support: bool = False
    types: frozenset[str] = frozenset()  # allowed type suffixes of a choice element

    @property
    def counts(self) -> bool:
        """True when the rule looks at how often the element occurs (or as which type)."""
        return self.min > 0 or self.max is not None or self.must_support or bool(self.types)

    @property
    def values(self) -> bool:
        """True when the rule looks at the element's values."""
        return self.fixed is not _UNSET or self.pattern is not _UNSET or self.value_set is not None


@dataclass(frozen=True)
class Profile:
    """A loaded StructureDefinition: its rules include those of its base profiles."""

    url: str
    name: str
    type: str
    file: str
    rules: tuple[_Rule, ...]


def _issue(severity: str, code: str, expression: str, diagnostics: str) -> Issue:
    return Issue(severity=severity, code=code, expression=expression, diagnostics=diagnostics)


def _error(code: str, expression: str, diagnostics: str) -> Issue:
    return _issue("error", code, expression, diagnostics)


def _size(value: Any) -> int:
    if value is None:
        return 0
    return len(value) if isinstance(value, list) else 1


def _keys(obj: dict[str, Any], name: str, choice: bool) -> list[str]:
    """The JSON keys an element stands for (choice `value[x]`: valueQuantity, valueString...)."""
    if not choice:
        return [name] if name in obj or f"_{name}" in obj else []
    n = len(name)
    return [k for k in obj if k.startswith(name) and k[n : n + 1].isupper()]


def _count(obj: dict[str, Any], keys: list[str]) -> int:
    """Occurrences; a primitive with only an extension (`_birthDate`) counts as present."""
    count = 0
    for k in keys:
        count += max(_size(obj.get(k)), _size(obj.get(f"_{k}")))
    return count


def _matches(pattern: Any, value: Any) -> bool:
    """FHIR pattern semantics: every part of the pattern is in the value (lists: any item)."""
    # Loops rather than all()/any() over generators: this runs for every coding of every
    # element a profile gives a pattern, and generators cost more than the comparisons.
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        for k, v in pattern.items():
            if k not in value or not _matches(v, value[k]):
                return False
        return True
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        for p in pattern:
            for v in items:
                if _matches(p, v):
                    break
            else:
                return False
        return True
    return bool(pattern == value)


def _shown(value: Any) -> str:
    """A profile's own fixed or pattern value, compact (never a resource's value)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _binding_issue(vs: ValueSet, expr: str, value: Any) -> Issue | None:
    if isinstance(value, str):
        if value in vs.codes:
            return None
        code = f"code {value!r}" if _SHOWABLE_CODE.fullmatch(value) else "a code (not shown)"
        return _error("code-invalid", expr, f"{code} is not in ValueSet {vs.name}")
    if not isinstance(value, dict):
        return None  # a wrong JSON type: the parse check reports it
    if "coding" in value or "text" in value:  # CodeableConcept
        codings = value.get("coding")
        codings = codings if isinstance(codings, list) else []
        message = f"no coding is in ValueSet {vs.name}"
    else:  # Coding
        codings = [value]
        message = f"the coding is not in ValueSet {vs.name}"
    if any(isinstance(c, dict) and (c.get("system"), c.get("code")) in vs.pairs for c in codings):
        return None
    return _error("code-invalid", expr, message)


@dataclass
class _Tree:
    """Rules on one element, and the elements below it by JSON key: a plan for one walk."""

    name: str = ""  # the element name, without the [x] of a choice
    choice: bool = False
    counted: list[_Rule] = field(default_factory=list)  # on how often the element occurs
    valued: list[_Rule] = field(default_factory=list)  # on each of its values
    below: dict[str, _Tree] = field(default_factory=dict)
    # Summaries `_settle` fills in once the tree is planted: the walk asks them first and
    # runs the full checks (which word the issues) only where something may be wrong.
    subs: tuple[_Tree, ...] = ()
    ext: str = ""  # the `_name` key of a primitive's extension
    low: int = 0  # the largest min of `counted`
    high: int | None = None  # the smallest max of `counted`
    must: bool = False  # some counted rule marks the element mustSupport
    typed: bool = False  # some counted rule limits the types of a choice
    codes: frozenset[str] | None = None  # every valued rule is a binding: codes that pass
    leaf: frozenset[str] | None = None  # `codes` of a node without elements below


def _plant(rules: Iterable[_Rule]) -> _Tree:
    root = _Tree()
    for rule in rules:
        node = root
        for key in rule.path:
            if key not in node.below:
                node.below[key] = _Tree(key.removesuffix("[x]"), key.endswith("[x]"))
            node = node.below[key]
        if rule.counts:
            node.counted.append(rule)
        if rule.values:
            node.valued.append(rule)
    _settle(root)
    return root


def _settle(tree: _Tree) -> None:
    tree.subs = tuple(tree.below.values())
    tree.ext = f"_{tree.name}"
    tree.low = max((r.min for r in tree.counted), default=0)
    highs = [r.max for r in tree.counted if r.max is not None]
    tree.high = min(highs) if highs else None
    tree.must = any(r.must_support for r in tree.counted)
    tree.typed = any(r.types for r in tree.counted)
    bindings = [r.value_set for r in tree.valued]
    if bindings and all(
        vs is not None and r.fixed is _UNSET and r.pattern is _UNSET
        for r, vs in zip(tree.valued, bindings, strict=True)
    ):
        tree.codes = frozenset.intersection(*(vs.codes for vs in bindings if vs is not None))
    tree.leaf = tree.codes if not tree.below else None
    for sub in tree.subs:
        _settle(sub)


def _run(rtype: str, resource: dict[str, Any], plan: _Tree) -> list[Issue]:
    """Walk the resource once, only into elements that have rules; drop duplicate issues."""
    issues: list[Issue] = []
    _walk(plan, rtype, resource, issues)
    if len(issues) < 2:
        return issues
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for issue in issues:
        key = (issue["code"], issue["expression"], issue["diagnostics"])
        if key not in seen:
            seen.add(key)
            unique.append(issue)
    return unique


def _walk(tree: _Tree, expr: str, obj: dict[str, Any], issues: list[Issue]) -> None:
    for sub in tree.subs:
        name = sub.name
        if sub.choice:
            n = len(name)
            keys = [k for k in obj if k.startswith(name) and k[n : n + 1].isupper()]
            if sub.counted:
                _check_counts(sub.counted, name, expr, obj, keys, issues)
        else:
            value = obj.get(name)
            if sub.counted:
                # The usual case settled here: present within bounds, nothing else asked.
                count = max(_size(value), _size(obj.get(sub.ext)))
                if (
                    count < sub.low
                    or (count == 0 and sub.must)
                    or (sub.high is not None and count > sub.high)
                    or sub.typed
                ):
                    keys = [name] if name in obj or sub.ext in obj else []
                    _check_counts(sub.counted, name, expr, obj, keys, issues)
            if value is None:
                continue
            keys = [name]
        leaf = sub.leaf  # a bound code in the value set settles a leaf without a call
        for k in keys:
            value = obj.get(k)
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is not None and not (
                        leaf is not None and isinstance(item, str) and item in leaf
                    ):
                        _visit(sub, expr, k, i, item, issues)
            elif value is not None:
                if not (leaf is not None and isinstance(value, str) and value in leaf):
                    _visit(sub, expr, k, None, value, issues)


def _visit(
    tree: _Tree, parent: str, key: str, index: int | None, value: Any, issues: list[Issue]
) -> None:
    """Check one value of element `key` below `parent` (the expression is worded only when
    an issue needs it, or the walk goes deeper)."""
    if tree.valued and not (
        tree.codes is not None and isinstance(value, str) and value in tree.codes
    ):
        expr = f"{parent}.{key}" if index is None else f"{parent}.{key}[{index}]"
        for rule in tree.valued:
            _check_value(rule, expr, value, issues)
    if tree.subs and isinstance(value, dict):
        expr = f"{parent}.{key}" if index is None else f"{parent}.{key}[{index}]"
        _walk(tree, expr, value, issues)


def _check_counts(
    rules: list[_Rule], name: str, expr: str, obj: dict[str, Any], keys: list[str], out: list[Issue]
) -> None:
    where = f"{expr}.{name}"
    count = _count(obj, keys)
    for rule in rules:
        src = f"profile {rule.source}"
        for k in keys if rule.types else ():
            if (suffix := k[len(name) :]) not in rule.types:
                allowed = ", ".join(sorted(rule.types))
                why = f"type {suffix} is not allowed by {src} (allowed: {allowed})"
                out.append(_error("structure", f"{expr}.{k}", why))
        if count < rule.min:
            why = f"missing: {src} requires at least {rule.min} (found {count})"
            out.append(_error("required", where, why))
        elif count == 0 and rule.must_support:
            why = f"must-support element is absent ({src})"
            out.append(_issue("warning", "incomplete", where, why))
        if rule.max is not None and count > rule.max:
            why = f"too many: {src} allows at most {rule.max} (found {count})"
            out.append(_error("structure", where, why))


def _check_value(rule: _Rule, expr: str, value: Any, out: list[Issue]) -> None:
    src = f"profile {rule.source}"
    if rule.fixed is not _UNSET and value != rule.fixed:
        out.append(_error("value", expr, f"not the fixed value {_shown(rule.fixed)} of {src}"))
    if rule.pattern is not _UNSET and not _matches(rule.pattern, value):
        why = f"does not match the pattern {_shown(rule.pattern)} of {src}"
        out.append(_error("value", expr, why))
    if rule.value_set is not None and (issue := _binding_issue(rule.value_set, expr, value)):
        out.append(issue)


class ProfileSet:
    """The StructureDefinitions and ValueSets of one folder, parsed once, and the checks.

    Build it with `ProfileSet.load(settings.profiles_dir)` at start-up: a broken file fails
    there, naming the file, not on the first resource.
    """

    def __init__(
        self,
        folder: Path,
        profiles: Sequence[Profile],
        value_sets: dict[str, ValueSet],
        notes: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.profiles = tuple(profiles)
        self.value_sets = value_sets
        self.notes = tuple(notes)  # what the profiles ask for that is not checked
        self._core = {
            rtype: tuple(
                _Rule(tuple(path.split(".")), "core", value_set=value_sets[CORE_VS + vs])
                for path, vs in table.items()
            )
            for rtype, table in CORE_BINDINGS.items()
        }
        basenames = [Path(p.file).name for p in self.profiles]
        self._by_name: dict[str, Profile] = {}
        for p in self.profiles:
            self._by_name[p.url] = self._by_name[p.file] = p
            if basenames.count(Path(p.file).name) == 1:
                self._by_name[Path(p.file).name] = p
        self._plans: dict[tuple[str, tuple[str, ...], bool], _Tree] = {}

    @classmethod
    def load(cls, folder: Path) -> ProfileSet:
        """Read every `*.json` under `folder` (StructureDefinition, ValueSet, CodeSystem).

        :raises ConfigError: naming the file and what is wrong with it.
        """
        return _Loader(folder).load()

    def resolve(self, names: Sequence[str]) -> tuple[Profile, ...]:
        """The profiles named by url (a `|version` suffix is ignored) or file name.

        :raises ConfigError: listing the names that match no loaded profile.
        """
        unknown = [n for n in names if n.split("|")[0] not in self._by_name]
        if unknown:
            known = ", ".join(sorted(Path(p.file).name for p in self.profiles)) or "none"
            raise ConfigError(
                f"unknown profile(s) {', '.join(unknown)}: not in {self.folder} (loaded: {known})"
            )
        return tuple(self._by_name[n.split("|")[0]] for n in names)

    def check(self, resource: Any, profiles: Sequence[str]) -> list[Issue]:
        """Issues of `resource` against those of `profiles` (urls or file names) of its type.

        :raises ConfigError: when a name matches no loaded profile (check config at start-up
            with `resolve`).
        """
        return self._check(resource, tuple(profiles), core=False)

    def check_core(self, resource: Any) -> list[Issue]:
        """Issues against the FHIR R4 core's required bindings (CORE_BINDINGS), always on."""
        return self._check(resource, (), core=True)

    def check_all(self, resource: Any, profiles: Sequence[str]) -> list[Issue]:
        """`check_core` and `check` in one pass, without the issues both would report."""
        return self._check(resource, tuple(profiles), core=True)

    def _check(self, resource: Any, names: tuple[str, ...], core: bool) -> list[Issue]:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return []  # the parse check reports it
        rtype = resource["resourceType"]
        plan = self._plans.get((rtype, names, core))
        if plan is None:
            rules = list(self._core.get(rtype, ())) if core else []
            for profile in self.resolve(names):
                if profile.type == rtype:
                    rules.extend(profile.rules)
            plan = self._plans[(rtype, names, core)] = _plant(rules)
        return _run(rtype, resource, plan) if plan.below else []


def _fail(file: Path, message: str) -> ConfigError:
    return ConfigError(f"{file}: {message}")


def _text(file: Path, doc: dict[str, Any], key: str, where: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(file, f"{where}{key} is missing or not a string")
    return value


def _concepts(file: Path, concepts: Any, where: str) -> list[str]:
    """Codes of a (possibly nested) concept list: CodeSystem.concept, include.concept."""
    if not isinstance(concepts, list):
        raise _fail(file, f"{where}.concept is not a list")
    codes = []
    for concept in concepts:
        if not isinstance(concept, dict) or not isinstance(concept.get("code"), str):
            raise _fail(file, f"{where}.concept has an entry without a code")
        codes.append(concept["code"])
        if "concept" in concept:
            codes.extend(_concepts(file, concept["concept"], where))
    return codes


def _contains(file: Path, contains: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of ValueSet.expansion.contains (nested; abstract groupers skipped)."""
    if not isinstance(contains, list):
        raise _fail(file, "expansion.contains is not a list")
    pairs = []
    for entry in contains:
        if not isinstance(entry, dict):
            raise _fail(file, "expansion.contains has an entry that is not an object")
        if isinstance(entry.get("code"), str):
            pairs.append((_text(file, entry, "system", "expansion.contains[]."), entry["code"]))
        pairs.extend(_contains(file, entry.get("contains", [])))
    return pairs


def _element_path(eid: str) -> tuple[str, ...] | None:
    """JSON keys of an element id; None for a slice (a type slice is its concrete key)."""
    parts = eid.split(".")
    path = []
    for part in parts[1:]:
        name, sep, slice_name = part.partition(":")
        if sep:
            stem = name.removesuffix("[x]")
            type_slice = (
                name.endswith("[x]")
                and slice_name.startswith(stem)
                and slice_name[len(stem) : len(stem) + 1].isupper()
            )
            if not type_slice:
                return None
            name = slice_name
        path.append(name)
    return tuple(path)


def _one_of(file: Path, where: str, element: dict[str, Any], prefix: str) -> Any:
    """The value of `fixed[x]` or `pattern[x]` (at most one per element), or _UNSET."""
    n = len(prefix)
    keys = [k for k in element if k.startswith(prefix) and k[n : n + 1].isupper()]
    if len(keys) > 1:
        raise _fail(file, f"{where}: more than one {prefix}[x] ({', '.join(keys)})")
    return element[keys[0]] if keys else _UNSET


class _Loader:
    """One pass over a profiles folder; every error names the file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.notes: list[str] = []
        self.code_systems: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.value_set_docs: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.sd_docs: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.value_sets: dict[str, ValueSet] = {}
        self.profiles: dict[str, Profile] = {}

    def load(self) -> ProfileSet:
        if not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: profiles folder not found")
        for file in sorted(p for p in self.folder.rglob("*.json") if p.is_file()):
            self._register(file, self._read(file))
        for url, (file, doc) in self.value_set_docs.items():
            self.value_sets[url] = self._value_set(file, doc)
        missing = sorted(
            {vs for t in CORE_BINDINGS.values() for vs in t.values()}
            - {url.removeprefix(CORE_VS) for url in self.value_sets}
        )
        if missing:
            raise ConfigError(
                f"{self.folder}: the core checks need these FHIR R4 ValueSets, which are not in "
                f"the folder (copy them from the project's profiles/): {', '.join(missing)}"
            )
        for url in self.sd_docs:
            self._profile(url, ())
        return ProfileSet(self.folder, list(self.profiles.values()), self.value_sets, self.notes)

    def _rel(self, file: Path) -> str:
        return file.relative_to(self.folder).as_posix()

    def _read(self, file: Path) -> dict[str, Any]:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _fail(file, f"cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise _fail(file, "not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise _fail(
                file, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise _fail(file, "not a FHIR resource (no resourceType)")
        return data

    def _register(self, file: Path, doc: dict[str, Any]) -> None:
        kind = doc["resourceType"]
        table = {
            "CodeSystem": self.code_systems,
            "ValueSet": self.value_set_docs,
            "StructureDefinition": self.sd_docs,
        }.get(kind)
        if table is None:
            self.notes.append(f"{self._rel(file)}: {kind} resources are not read")
            return
        if kind == "StructureDefinition" and doc.get("kind") != "resource":
            # Extension and datatype profiles come with IGs; we check resources only.
            self.notes.append(f"{self._rel(file)}: not a resource profile, not read")
            return
        url = _text(file, doc, "url")
        if url in table:
            raise _fail(file, f"url {url} is also defined in {table[url][0]}")
        table[url] = (file, doc)

    def _value_set(self, file: Path, doc: dict[str, Any]) -> ValueSet:
        url = _text(file, doc, "url")
        expansion = doc.get("expansion")
        compose = doc.get("compose")
        if isinstance(expansion, dict) and "contains" in expansion:
            pairs = _contains(file, expansion["contains"])
        elif isinstance(compose, dict) and isinstance(compose.get("include"), list):
            if compose.get("exclude"):
                raise _fail(file, "compose.exclude is not supported: list the included codes")
            pairs = []
            for i, include in enumerate(compose["include"]):
                pairs.extend(self._include(file, include, f"compose.include[{i}]"))
        else:
            raise _fail(file, "a ValueSet needs expansion.contains or compose.include")
        name = url.rstrip("/").rsplit("/", 1)[-1]
        return ValueSet(url, name, frozenset(c for _, c in pairs), frozenset(pairs))

    def _include(self, file: Path, include: Any, where: str) -> list[tuple[str, str]]:
        if not isinstance(include, dict):
            raise _fail(file, f"{where} is not an object")
        if "filter" in include or "valueSet" in include:
            raise _fail(
                file, f"{where}: filters and valueSet imports are not supported; list the codes"
            )
        system = _text(file, include, "system", f"{where}.")
        if "concept" in include:
            codes = _concepts(file, include["concept"], where)
        elif system in self.code_systems:
            cs_file, cs = self.code_systems[system]
            codes = _concepts(cs_file, cs.get("concept", []), "CodeSystem")
        else:
            raise _fail(
                file,
                f"{where} takes every code of {system}, but no CodeSystem with that url is in "
                "the folder: add it, or list the codes in concept",
            )
        return [(system, code) for code in codes]

    def _profile(self, url: str, stack: tuple[str, ...]) -> Profile:
        if url in self.profiles:
            return self.profiles[url]
        file, doc = self.sd_docs[url]
        if url in stack:
            raise _fail(file, f"baseDefinition loops back to {url}")
        rtype = _text(file, doc, "type")
        if not is_known_type(rtype):
            raise _fail(file, f"type {rtype} is not a FHIR resource type")
        if doc.get("derivation") != "constraint":
            raise _fail(file, "derivation must be 'constraint': only profiles are supported")
        base = _text(file, doc, "baseDefinition")
        inherited: tuple[_Rule, ...] = ()
        if base in self.sd_docs:
            parent = self._profile(base, (*stack, url))
            if parent.type != rtype:
                raise _fail(file, f"type {rtype} differs from the {parent.type} of base {base}")
            inherited = parent.rules
        elif base != CORE_SD + rtype:
            raise _fail(
                file,
                f"baseDefinition {base} is neither {CORE_SD}{rtype} nor a profile in the folder",
            )
        name = url.rstrip("/").rsplit("/", 1)[-1]
        rules = inherited + self._rules(file, doc, rtype, name)
        profile = self.profiles[url] = Profile(url, name, rtype, self._rel(file), rules)
        return profile

    def _rules(self, file: Path, doc: dict[str, Any], rtype: str, name: str) -> tuple[_Rule, ...]:
        differential = doc.get("differential")
        elements = differential.get("element") if isinstance(differential, dict) else None
        if not isinstance(elements, list):
            raise _fail(
                file, "differential.element is missing (profiles are read as differentials)"
            )
        rules = []
        for i, element in enumerate(elements):
            if not isinstance(element, dict):
                raise _fail(file, f"differential.element[{i}] is not an object")
            eid = element.get("id") or element.get("path")
            if not isinstance(eid, str) or eid.split(".")[0] != rtype:
                raise _fail(file, f"differential.element[{i}]: id/path must start with {rtype}")
            if "id" not in element and isinstance(element.get("sliceName"), str):
                eid = f"{eid}:{element['sliceName']}"
            path = _element_path(eid)
            if path is None:
                self.notes.append(f"{self._rel(file)}: {eid} is a slice, not checked")
                continue
            if "constraint" in element:
                self.notes.append(f"{self._rel(file)}: invariants on {eid} are not checked")
            if path:  # the root element carries nothing we check
                rule = self._rule(file, f"element {eid}", element, path, name)
                if rule.counts or rule.values:
                    rules.append(rule)
        return tuple(rules)

    def _rule(
        self, file: Path, where: str, element: dict[str, Any], path: tuple[str, ...], name: str
    ) -> _Rule:
        low = element.get("min", 0)
        if not isinstance(low, int) or isinstance(low, bool) or low < 0:
            raise _fail(file, f"{where}: min must be a whole number >= 0")
        high = element.get("max")
        if high is not None and not (isinstance(high, str) and (high == "*" or high.isdigit())):
            raise _fail(file, f"{where}: max must be a string, '*' or a number like \"1\"")
        top = None if high in (None, "*") else int(high)
        if top is not None and low > top:
            raise _fail(file, f"{where}: min {low} is above max {top}")
        must_support = element.get("mustSupport", False)
        if not isinstance(must_support, bool):
            raise _fail(file, f"{where}: mustSupport must be true or false")
        types: frozenset[str] = frozenset()
        if path[-1].endswith("[x]") and isinstance(element.get("type"), list):
            codes = [t.get("code") if isinstance(t, dict) else None for t in element["type"]]
            if not all(isinstance(c, str) and c for c in codes):
                raise _fail(file, f"{where}: every type needs a code")
            types = frozenset(c[0].upper() + c[1:] for c in codes if isinstance(c, str))
        return _Rule(
            path,
            name,
            min=low,
            max=top,
            fixed=_one_of(file, where, element, "fixed"),
            pattern=_one_of(file, where, element, "pattern"),
            value_set=self._binding(file, where, element.get("binding")),
            must_support=must_support,
            types=types,
        )

    def _binding(self, file: Path, where: str, binding: Any) -> ValueSet | None:
        if binding is None:
            return None
        strength = binding.get("strength") if isinstance(binding, dict) else None
        if strength not in ("required", "extensible", "preferred", "example"):
            raise _fail(
                file,
                f"{where}: binding.strength must be required, extensible, preferred or example",
            )
        if strength != "required":
            return None  # advice to implementers, not a rule a resource can break
        url = binding.get("valueSet")
        if not isinstance(url, str) or not url:
            raise _fail(file, f"{where}: a required binding needs binding.valueSet")
        value_set = self.value_sets.get(url.split("|")[0])
        if value_set is None:
            raise _fail(file, f"{where}: ValueSet {url} is not in the profiles folder")
        return value_set
