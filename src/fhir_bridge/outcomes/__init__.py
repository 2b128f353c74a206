"""Outcome figures and the daily huddle list, computed from the store (docs/family.md)."""

from fhir_bridge.outcomes.huddle import Huddle, huddle
from fhir_bridge.outcomes.metrics import Outcomes, outcomes

__all__ = ["Huddle", "Outcomes", "huddle", "outcomes"]
