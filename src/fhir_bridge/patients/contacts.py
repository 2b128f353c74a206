"""A patient's family contacts, and whether the patient authorized sharing news with each.

Contacts are the `Patient.contact` entries and the patient's `RelatedPerson`s. Whether the
bridge may prepare a message for one is decided, in this order:

1. an active `Consent` (scope `patient-privacy`) whose provision names the contact as actor:
   `permit` authorizes, `deny` refuses (a coordinator cannot override the patient's refusal);
2. a coordinator's flag (a store fact of kind `family-sharing`, set through the API);
3. otherwise NOT authorized.

Every answer states its reason ("Consent/c1 (active, permit)", "set by coordinator ann on
2026-11-26", "no consent on file"). Pure apart from `rule_contacts`, which reads through the
lookup a mapping rule is given; no PHI is logged here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from fhir_bridge.patients.text import concept_text

if TYPE_CHECKING:
    from fhir_bridge.store.base import Store, StoredResource

FACT_KIND = "family-sharing"
PRIVACY_SCOPE = "patient-privacy"


class _Lookup(Protocol):
    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Contact:
    """One family contact as a coordinator (and a family rule) sees it."""

    reference: str  # RelatedPerson/<id>, or Patient/<id>/contact/<n> for a Patient.contact
    kind: str  # related-person | patient-contact
    source: str
    version_id: str | None  # of the RelatedPerson, or of the Patient holding the contact
    name: str | None
    given: str | None
    relationship: str | None
    channel: str | None  # the preferred telecom system: phone, sms, email ...
    telecom: str | None  # the value of that telecom
    language: str | None  # BCP-47 code, e.g. es, en-US
    authorized: bool
    basis: str

    @property
    def recipient(self) -> str:
        """What a FHIR Communication to them names as recipient: the RelatedPerson, or for a
        Patient.contact (no resource of its own) the Patient whose contact it is."""
        return self.reference.split("/contact/")[0]

    def as_scope(self) -> dict[str, Any]:
        """The contact as FHIRPath sees it in a rule's `%family`."""
        scope = {k: v for k, v in asdict(self).items() if v is not None}
        return scope | {"recipient": self.recipient}


def fact_key(source: str, reference: str) -> str:
    """The key of a coordinator's flag on a contact of `source`."""
    return f"{source}|{reference}"


def flag_value(authorized: bool, by: str, at: str) -> dict[str, Any]:
    """The fact a coordinator's decision is stored as."""
    return {"authorized": authorized, "by": by, "at": at}


# -- reading FHIR ------------------------------------------------------------------------------


def _text(concepts: Any) -> str | None:
    """The first readable text among one or several CodeableConcepts."""
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if (text := concept_text(concept)) is not None:
            return text
    return None


def _name(value: Any) -> tuple[str | None, str | None]:
    names = value if isinstance(value, list) else [value]
    for name in names:
        if isinstance(name, dict):
            given = [str(g) for g in name.get("given") or []]
            full = name.get("text") or " ".join([*given, str(name.get("family") or "")]).strip()
            return (str(full) or None), (given[0] if given else None)
    return None, None


def _preferred_telecom(telecoms: Any) -> tuple[str | None, str | None]:
    usable = [t for t in telecoms or [] if isinstance(t, dict) and t.get("value")]
    if not usable:
        return None, None
    best = min(usable, key=lambda t: (t.get("rank") is None, t.get("rank") or 0))
    return best.get("system"), str(best["value"])


def _language(communication: Any) -> str | None:
    entries = [c for c in communication or [] if isinstance(c, dict)]
    entries.sort(key=lambda c: c.get("preferred") is not True)
    for entry in entries:
        for coding in (entry.get("language") or {}).get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])
    return None


def _version(body: Mapping[str, Any]) -> str | None:
    value = (body.get("meta") or {}).get("versionId")
    return str(value) if value is not None else None


# -- consent -----------------------------------------------------------------------------------


def _is_privacy(consent: Mapping[str, Any]) -> bool:
    codings = (consent.get("scope") or {}).get("coding") or []
    return any(isinstance(c, dict) and c.get("code") == PRIVACY_SCOPE for c in codings)


def _provisions(provision: Any, inherited: str) -> Iterable[tuple[str, str]]:
    """(actor reference, permit|deny) for a provision and its nested ones."""
    if not isinstance(provision, dict):
        return
    kind = str(provision.get("type") or inherited)
    for actor in provision.get("actor") or []:
        ref = ((actor or {}).get("reference") or {}).get("reference")
        if isinstance(ref, str):
            yield ref, kind
    for nested in provision.get("provision") or []:
        yield from _provisions(nested, kind)


def consent_decisions(consents: Iterable[Mapping[str, Any]]) -> dict[str, tuple[bool | None, str]]:
    """Per actor reference: (True/False from an active consent, or None when only a consent
    not in force names them) and the reason. The most recent active consent wins."""
    out: dict[str, tuple[bool | None, str]] = {}
    ordered = sorted(consents, key=lambda c: str(c.get("dateTime") or ""), reverse=True)
    for consent in ordered:
        if not _is_privacy(consent):
            continue
        status = str(consent.get("status") or "unknown")
        ref = f"Consent/{consent.get('id')}"
        for actor, kind in _provisions(consent.get("provision"), "permit"):
            if status == "active":
                if out.get(actor, (None, ""))[0] is None:
                    out[actor] = (kind == "permit", f"{ref} (active, {kind})")
            elif actor not in out:
                out[actor] = (None, f"{ref} ({status}): not in force")
    return out


def _decide(
    source: str,
    reference: str,
    consents: Mapping[str, tuple[bool | None, str]],
    flags: Mapping[str, Mapping[str, Any]],
) -> tuple[bool, str]:
    decided, reason = consents.get(reference, (None, ""))
    if decided is not None:
        return decided, reason
    flag = flags.get(fact_key(source, reference))
    if flag is not None:
        verb = "set" if flag.get("authorized") else "withheld"
        day = str(flag.get("at") or "")[:10]
        return bool(flag.get("authorized")), f"{verb} by coordinator {flag.get('by')} on {day}"
    return False, reason + ("; " if reason else "") + "no consent on file"


def contacts_of(
    source: str,
    patient: Mapping[str, Any] | None,
    related_persons: Iterable[Mapping[str, Any]],
    consents: Iterable[Mapping[str, Any]],
    flags: Mapping[str, Mapping[str, Any]],
) -> list[Contact]:
    """Every contact of one patient record of `source`: RelatedPersons first, then the
    Patient.contact entries (whose language is the patient's own: FHIR has none for them)."""
    decisions = consent_decisions(consents)

    def contact(
        ref: str, kind: str, version: str | None, entry: Mapping[str, Any], language: str | None
    ) -> Contact:
        name, given = _name(entry.get("name"))
        channel, telecom = _preferred_telecom(entry.get("telecom"))
        authorized, basis = _decide(source, ref, decisions, flags)
        return Contact(
            ref, kind, source, version, name, given, _text(entry.get("relationship")),
            channel, telecom, language, authorized, basis,
        )  # fmt: skip

    out = [
        contact(
            f"RelatedPerson/{rp.get('id')}",
            "related-person",
            _version(rp),
            rp,
            _language(rp.get("communication")),
        )
        for rp in related_persons
        if rp.get("active") is not False
    ]
    if patient is not None:
        language = _language(patient.get("communication"))
        for n, entry in enumerate(patient.get("contact") or []):
            if isinstance(entry, dict):
                ref = f"Patient/{patient.get('id')}/contact/{n}"
                out.append(contact(ref, "patient-contact", _version(patient), entry, language))
    return out


class _StoredFlags(Mapping[str, Mapping[str, Any]]):
    """Coordinators' flags read one key at a time from the store, only for the contacts no
    Consent decides: `%family` runs on the ingest path, where listing every flag of the
    installation per evaluation would cost a scan per resource."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        found = self._store.get_fact(FACT_KIND, key)
        if found is None:
            raise KeyError(key)
        return cast(Mapping[str, Any], found)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.list_facts(FACT_KIND))

    def __len__(self) -> int:
        return len(self._store.list_facts(FACT_KIND))


def rule_contacts(lookup: _Lookup, patient: str | None) -> list[dict[str, Any]]:
    """`%family` of a mapping rule: the patient's authorized contacts, preferred first
    (consented before flagged, then as listed).

    The lookup gives the patient's Patient, RelatedPerson and Consent resources of the
    rule's source; coordinators' flags come from its store when it has one (the sync's
    `StoreLookup` does; golden tests have none, so only Consents decide there).
    """
    if not patient:
        return []
    source = str(getattr(lookup, "source", "") or "")
    store = getattr(lookup, "store", None)
    flags: Mapping[str, Mapping[str, Any]] = {}
    if store is not None and hasattr(store, "get_fact"):
        flags = _StoredFlags(store)
    records = lookup.for_patient("Patient", patient)
    found = contacts_of(
        source,
        records[0] if records else None,
        lookup.for_patient("RelatedPerson", patient),
        lookup.for_patient("Consent", patient),
        flags,
    )
    chosen = [c for c in found if c.authorized]
    chosen.sort(key=lambda c: not c.basis.startswith("Consent/"))
    return [c.as_scope() for c in chosen]


def record_contacts(store: Store, source: str, patient_id: str) -> list[Contact]:
    """Every contact of the Patient record `patient_id` of `source`, as stored now."""
    found = store.resources_for_patient(source, f"Patient/{patient_id}")
    return contacts_among(store, source, patient_id, found)


def contacts_among(
    store: Store, source: str, patient_id: str, found: Iterable[StoredResource]
) -> list[Contact]:
    """The contacts of the Patient record `patient_id` of `source` from its resources `found`
    (as `Store.resources_for_patient` gives them), for a caller that has read them already;
    coordinators' flags are read from `store`, only for contacts no Consent decides."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for stored in found:
        by_type.setdefault(stored.resource_type, []).append(stored.body)
    patient = next((p for p in by_type.get("Patient", []) if p.get("id") == patient_id), None)
    return contacts_of(
        source,
        patient,
        by_type.get("RelatedPerson", []),
        by_type.get("Consent", []),
        _StoredFlags(store),
    )
