"""Mapping room: declarative rules (YAML + FHIRPath) that turn resources into tasks."""

from fhir_bridge.mapping.engine import (
    CompiledRule,
    Evaluation,
    Lookup,
    NoLookup,
    Problem,
    RuleSet,
    compile_folder,
)
from fhir_bridge.mapping.model import MappingFile, Rule, TaskTemplate

__all__ = [
    "CompiledRule",
    "Evaluation",
    "Lookup",
    "MappingFile",
    "NoLookup",
    "Problem",
    "Rule",
    "RuleSet",
    "TaskTemplate",
    "compile_folder",
]
