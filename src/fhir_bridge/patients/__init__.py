"""Patients room: who a resource is about, and (later) cross-source identity."""

from fhir_bridge.patients.refs import patient_reference

__all__ = ["patient_reference"]
