"""Validation room: parse every resource as FHIR R4(B) and say exactly why one fails."""

from fhir_bridge.validate.parse import Issue, is_known_type, validate_resource
from fhir_bridge.validate.profiles import ProfileSet

__all__ = ["Issue", "ProfileSet", "is_known_type", "validate_resource"]
