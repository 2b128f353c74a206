"""Validation room: parse every resource as FHIR R4(B) and say exactly why one fails."""

from fhir_bridge.validate.parse import Issue, is_known_type, validate_resource

__all__ = ["Issue", "is_known_type", "validate_resource"]
