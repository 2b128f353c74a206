"""fhir_bridge: FHIR interoperability middleware for patient care coordination."""
