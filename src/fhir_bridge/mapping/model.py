"""The mapping file format: YAML files of rules that turn FHIR resources into coordinator tasks.

    rules:
      - id: no-show-outreach            # unique across all files; part of the task identity
        resource: Appointment           # FHIR resource type the rule reads
        when: "status = 'noshow'"       # FHIRPath, true -> a task
        task:
          queue: scheduling
          kind: no-show-outreach
          title: "Call about the missed {{ serviceType.first().text }} visit"   # {{ FHIRPath }}
          priority: urgent              # routine | urgent | asap | stat
          due: "%now + 2 days"          # FHIRPath giving a date/dateTime (optional)
          patient: "participant.actor.reference.where(startsWith('Patient/')).first()"

`%now` is the evaluation time (pinned in tests). The full rule language grows in its own issue.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fhir_bridge.tasks.model import Priority

RULE_ID = r"^[a-z0-9][a-z0-9-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskTemplate(_Strict):
    """What task a matching resource becomes."""

    queue: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    kind: str = Field(pattern=RULE_ID)
    title: str = Field(min_length=1, max_length=300)
    priority: Priority = Priority.ROUTINE
    due: str | None = None
    patient: str


class Rule(_Strict):
    """One rule: a resource type, a FHIRPath condition and a task template."""

    id: str = Field(pattern=RULE_ID)
    resource: str
    when: str = Field(min_length=1)
    task: TaskTemplate
    description: str | None = None


class MappingFile(_Strict):
    """The top level of a mapping file."""

    rules: list[Rule] = Field(min_length=1)
