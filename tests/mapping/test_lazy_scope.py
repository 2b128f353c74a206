"""`when` computes a rule's names (`let`, `related`) only when it reaches them, and failures
are still reported at the step that failed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_bridge.mapping import fastpath
from fhir_bridge.mapping.engine import NoLookup
from tests.mapping.test_language import APPOINTMENT, SOURCE, compiled, rule
from tests.utils import NOW


class CountingLookup(NoLookup):
    """A lookup over given resources that counts the questions asked."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        super().__init__(resources)
        self.asked: list[str] = []

    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]:
        """Count, then answer."""
        self.asked.append(resource_type)
        return super().for_patient(resource_type, patient)


COVERAGE = {
    "resourceType": "Coverage",
    "id": "c1",
    "status": "active",
    "beneficiary": {"reference": "Patient/p1"},
}


def _pre_visit(tmp_path):
    return compiled(
        tmp_path / "maps",
        rule(
            related={"coverages": {"resource": "Coverage", "where": "status = 'active'"}},
            when="start >= %now and %coverages.empty()",
        ),
    )


def test_related_is_not_read_when_when_is_already_false(tmp_path):
    """A visit in the past settles `when` before `%coverages` is needed: no store read."""
    lookup = CountingLookup([COVERAGE])
    past = copy.deepcopy(APPOINTMENT) | {"start": "2026-01-01T09:00:00Z"}
    ev = _pre_visit(tmp_path).evaluate(past, SOURCE, NOW, lookup)
    assert (ev.matched, ev.error, lookup.asked) == (False, None, [])
    assert "%coverages" not in ev.values


def test_related_is_read_once_when_when_needs_it(tmp_path):
    """An upcoming visit reads the patient's Coverages (once) and records them."""
    lookup = CountingLookup([COVERAGE])
    ev = _pre_visit(tmp_path).evaluate(copy.deepcopy(APPOINTMENT), SOURCE, NOW, lookup)
    assert (ev.matched, ev.error, lookup.asked) == (False, None, ["Coverage"])
    assert ev.values["%coverages"] == ["Coverage/c1"]
    full = _pre_visit(tmp_path).evaluate(copy.deepcopy(APPOINTMENT), SOURCE, NOW, lookup, full=True)
    assert full.values["%coverages"] == ["Coverage/c1"]


def test_a_failing_let_is_reported_as_the_let(tmp_path):
    """A `let` computed on demand inside `when` that fails names the let."""
    bad = compiled(
        tmp_path / "maps", rule(let={"odd": "start > 5"}, when="status = 'booked' and %odd")
    )
    ev = bad.evaluate(copy.deepcopy(APPOINTMENT), SOURCE, NOW, NoLookup())
    assert ev.error is not None and ev.error.startswith("let.odd: ")
    assert ev.reason == "evaluation failed at let.odd"


def test_when_failing_after_a_let_is_reported_as_when(tmp_path):
    """Once a let computed on demand succeeded, a later failure of `when` names `when`."""
    bad = compiled(
        tmp_path / "maps",
        rule(let={"booked": "status = 'booked'"}, when="%booked and start > 5"),
    )
    ev = bad.evaluate(copy.deepcopy(APPOINTMENT), SOURCE, NOW, NoLookup())
    assert ev.error is not None and ev.error.startswith("when: ")
    assert ev.values["%booked"] == [True]


def test_shifting_a_non_text_value_steps_aside():
    """`x + 1 day` on a structure is left to fhirpathpy (never a cache error)."""
    shift = fastpath.compile_fast("period + 1 day", {})
    assert shift is not None
    with pytest.raises(fastpath.Fallback):
        shift({"resourceType": "CarePlan", "period": {"start": "2026-01-01"}}, {})
    assert fastpath.compile_fast("start + 1 day", {})({"start": "2026-01-01"}, {}) == ["2026-01-02"]


@pytest.mark.parametrize("appointment_status", ["booked", "noshow"])
def test_an_evaluation_is_freed_without_the_garbage_collector(tmp_path, appointment_status):
    """An evaluation (matched or not, with its scope kept for close cases) and the resource
    it read form no reference cycle: dropped, they are freed at once. A 10k first load left
    ~190,000 objects in such cycles for the collector."""
    import gc
    import weakref

    pre_visit = _pre_visit(tmp_path)
    appointment = copy.deepcopy(APPOINTMENT) | {"status": appointment_status}
    lookup = CountingLookup([COVERAGE])
    enabled = gc.isenabled()
    gc.disable()
    try:
        ev = pre_visit.evaluate(appointment, SOURCE, NOW, lookup, full=True)
        assert ev.scope is not None and ev.scope.env  # names computed: env holds values
        scope = weakref.ref(ev.scope)
        held = weakref.ref(ev)
        del ev
        assert held() is None and scope() is None
    finally:
        if enabled:
            gc.enable()
