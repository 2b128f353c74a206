"""API room: the FastAPI app coordinators and operators talk to."""

from fhir_bridge.api.main import create_app

__all__ = ["create_app"]
