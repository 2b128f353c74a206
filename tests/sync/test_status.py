"""Tests for fhir_bridge.sync.status: each (source, type) outcome kept in the store, and a
source's state worked out from its types."""

from __future__ import annotations

from datetime import timedelta

from fhir_bridge.config import SourceConfig
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync import status
from fhir_bridge.sync.engine import TypeReport
from fhir_bridge.sync.ingest import IngestResult
from tests.utils import NOW

EHR = SourceConfig(
    name="ehr", base_url="http://127.0.0.1:9/ehr", resource_types=("Patient", "Appointment")
)
LAB = SourceConfig(name="lab", base_url="http://127.0.0.1:9/lab", resource_types=("Patient",))


def test_a_source_never_synced_is_unknown_not_failing():
    store = SqliteStore(":memory:")
    state = status.states(store, [EHR])["ehr"]
    assert (state.last_run, state.last_ok, state.runs, state.types) == (None, None, 0, {})
    store.close()


def test_types_add_up_to_the_source_state():
    """A failing type makes the source failing with its error; the source is synced up to the
    oldest type's last success, and not at all until every type has succeeded once."""
    store = SqliteStore(":memory:")
    t0, t1, t2 = NOW, NOW + timedelta(minutes=5), NOW + timedelta(minutes=10)
    patients = TypeReport("Patient", result=IngestResult(received=3, stored=2))
    status.record(store, "ehr", patients, t0)
    state = status.states(store, [EHR, LAB])["ehr"]
    assert (state.last_ok, state.last_success, state.runs) == (True, None, 1)  # Appointment: never
    assert state.types["Patient"]["stored"] == 2
    status.record(store, "ehr", TypeReport("Appointment", error="GET Appointment: HTTP 503"), t1)
    state = status.states(store, [EHR])["ehr"]
    assert (state.last_ok, state.last_error, state.last_run) == (
        False,
        "GET Appointment: HTTP 503",
        t1.isoformat(),
    )
    status.record(store, "ehr", TypeReport("Appointment", error="GET Appointment: HTTP 503"), t2)
    assert status.states(store, [EHR])["ehr"].types["Appointment"]["failures_in_a_row"] == 2
    status.record(store, "ehr", TypeReport("Appointment"), t2)
    state = status.states(store, [EHR, LAB])["ehr"]
    assert (state.last_ok, state.last_error, state.runs) == (True, None, 3)
    assert state.last_success == t0.isoformat()  # Patient last succeeded at t0
    assert state.types["Appointment"]["failures_in_a_row"] == 0
    assert status.states(store, [LAB])["lab"].last_ok is None  # other sources untouched
    store.close()
