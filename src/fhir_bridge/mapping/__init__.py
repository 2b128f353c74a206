"""Mapping room: declarative rules (YAML + FHIRPath) that turn resources into tasks."""

from fhir_bridge.mapping.engine import CompiledRule, Decision, RuleSet
from fhir_bridge.mapping.model import MappingFile, Rule, TaskTemplate

__all__ = ["CompiledRule", "Decision", "MappingFile", "Rule", "RuleSet", "TaskTemplate"]
