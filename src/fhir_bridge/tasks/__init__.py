"""Tasks room: the task model, its state machine and (in `service`) the queue operations.

The package root exports only the pure model, so `store/` can import it without a cycle.
"""

from fhir_bridge.tasks.model import (
    Priority,
    Task,
    TaskDraft,
    TaskEvent,
    TaskStatus,
    allowed_transitions,
    check_transition,
    task_id,
)

__all__ = [
    "Priority",
    "Task",
    "TaskDraft",
    "TaskEvent",
    "TaskStatus",
    "allowed_transitions",
    "check_transition",
    "task_id",
]
