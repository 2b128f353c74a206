"""The mapping file format: YAML rules that turn FHIR resources into coordinator tasks.

The full reference, with an example of every feature, is `docs/mapping-reference.md`. In short:

    rules:
      - id: no-show-outreach            # unique across all files; part of the task identity
        resource: Appointment           # the FHIR resource type the rule reads
        let:                            # named FHIRPath values, usable below as %name
          patient_ref: "participant.actor.reference.where(startsWith('Patient/')).first()"
        related:                        # the same patient's resources already in the store
          coverages: {resource: Coverage, where: "status = 'active'"}
        when: "status = 'noshow' and start >= %now - 30 days"
        close_when: {status: cancelled, reason: "No longer a recent no-show"}
        task:
          queue: scheduling
          kind: no-show-outreach
          title: "Call about the missed {{ serviceType.coding.display.first() }} visit"
          priority: urgent              # or a FHIRPath giving routine|urgent|asap|stat
          due: "%now + 2 days"
          patient: "%patient_ref"
        on_status:
          completed:
            - create: {resourceType: Communication, status: completed, ...}

Queues must be declared in `queues.yaml` beside the rules, so a typo in a queue name is an
error, not a new queue nobody watches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_bridge.tasks.model import Priority, TaskStatus

SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
NAME = r"^[a-z_][a-z0-9_]{0,63}$"
# Names fhirpathpy or FHIRPath itself gives a meaning to; a `let` or `related` may not take them.
RESERVED_NAMES = frozenset(
    {"now", "context", "resource", "rootResource", "ucum", "sct", "loinc", "source", "focus"}
    | {"family", "task"}  # contacts (mapping.engine.FAMILY); the task, in on_status actions
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskTemplate(_Strict):
    """What task a matching resource becomes. Text fields take `{{ FHIRPath }}` interpolation."""

    queue: str = Field(pattern=SLUG)
    kind: str = Field(pattern=SLUG)
    title: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=4000)
    priority: str = Field(
        default=Priority.ROUTINE.value,
        description="routine | urgent | asap | stat, or a FHIRPath giving one of them",
    )
    due: str | None = Field(default=None, description="FHIRPath giving a date or dateTime")
    patient: str = Field(description="FHIRPath giving the patient reference, e.g. Patient/123")
    labels: tuple[str, ...] = ()
    assignee: str | None = Field(default=None, description="template giving a coordinator id")


class Related(_Strict):
    """Resources of the same patient from the same source, already in the store."""

    resource: str
    where: str | None = Field(default=None, description="FHIRPath filter on each related resource")


class CloseWhen(_Strict):
    """How an open task closes itself when its resource changes.

    By default a task closes (cancelled) when its resource no longer meets `when`. Give
    `condition` to close on something more specific (e.g. the appointment got booked).
    """

    condition: str | None = None
    status: Literal["completed", "cancelled"] = "cancelled"
    reason: str = Field(default="the condition that opened this task no longer holds", min_length=1)


class UpdateFocus(_Strict):
    """Set elements of the task's focus resource: element path -> FHIRPath value."""

    set: dict[str, str] = Field(min_length=1)


class CreateResource(_Strict):
    """Create a resource; string values take `{{ FHIRPath }}` interpolation."""

    model_config = ConfigDict(extra="allow", frozen=True)

    resourceType: str  # FHIR spells it so


class TaskOutput(_Strict):
    """Add an output to the FHIR Task mirror: a type text and a FHIRPath value."""

    type: str = Field(min_length=1)
    value: str


class Action(_Strict):
    """One write-back action; exactly one key is set."""

    update_focus: UpdateFocus | None = None
    create: CreateResource | None = None
    task_output: TaskOutput | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        given = [
            k for k in ("update_focus", "create", "task_output") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("an action has exactly one of: update_focus, create, task_output")
        return self

    @property
    def kind(self) -> str:
        """Which action this is."""
        for name in ("update_focus", "create", "task_output"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated to have one action")  # pragma: no cover


class Rule(_Strict):
    """One rule: a resource type, a FHIRPath condition and a task template."""

    id: str = Field(pattern=SLUG)
    resource: str
    description: str | None = None
    let: dict[str, str] = Field(default_factory=dict)
    related: dict[str, Related] = Field(default_factory=dict)
    when: str = Field(min_length=1)
    trigger: Literal["always", "new"] = Field(
        default="always",
        description="'new': only for a resource first seen after the source's initial load",
    )
    close_when: tuple[CloseWhen, ...] | Literal["never"] = Field(
        default=(CloseWhen(),),
        description="cases tried in order when 'when' stops holding; the first that holds wins",
    )
    reopen_on_change: bool = Field(
        default=False, description="a new version of the resource reopens a closed task"
    )
    task: TaskTemplate
    on_status: dict[TaskStatus, tuple[Action, ...]] = Field(default_factory=dict)

    @field_validator("close_when", mode="before")
    @classmethod
    def _one_case(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _names(self) -> Rule:
        import re

        names = [*self.let, *self.related]
        for name in names:
            if not re.match(NAME, name):
                raise ValueError(f"name {name!r} must be lower_snake_case")
            if name in RESERVED_NAMES:
                raise ValueError(f"name {name!r} is reserved")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names defined twice in let/related: {', '.join(dupes)}")
        return self


class MappingFile(_Strict):
    """The top level of a mapping file."""

    rules: list[Rule] = Field(min_length=1)


class Queue(_Strict):
    """A coordinator queue."""

    title: str
    description: str | None = None


class QueuesFile(_Strict):
    """`queues.yaml`: every queue rules may fill."""

    queues: dict[str, Queue] = Field(min_length=1)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as plain JSON-able data (for explain output)."""
    return model.model_dump(mode="json", exclude_none=True)
