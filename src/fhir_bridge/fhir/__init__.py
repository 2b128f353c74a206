"""FHIR REST access: the async client, its result types and authentication helpers."""

from fhir_bridge.fhir.auth import bearer_auth
from fhir_bridge.fhir.client import FhirClient, Page, RetryPolicy, WriteResult

__all__ = ["FhirClient", "Page", "RetryPolicy", "WriteResult", "bearer_auth"]
