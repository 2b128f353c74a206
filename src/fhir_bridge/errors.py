"""The exception tree of fhir_bridge, split by what the caller should do next.

    FhirBridgeError
    ├── ConfigError                 bad configuration file or value: fix the file and restart
    ├── FhirRequestError            a FHIR server call failed (status, OperationOutcome text)
    │   ├── TemporaryFhirError      408/429/5xx, connection and timeout errors: retry later
    │   └── FatalFhirError          any other failure: retrying the same request will not help
    │       ├── ResourceNotFound        404 / 410
    │       ├── PreconditionFailed      412: the version we read is stale (If-Match)
    │       └── MalformedResponse       the body is not the FHIR JSON we asked for
    ├── ResourceInvalid             a resource fails parsing or a profile (goes to quarantine)
    ├── MappingError                a mapping file is broken (names file, rule and key)
    ├── QueueError                  a task operation is not possible
    │   ├── TaskNotFound
    │   ├── IllegalTransition       the state machine forbids the change
    │   └── TaskConflict            someone else holds the task / the task changed meanwhile
    └── StoreError                  the storage engine failed

Messages never contain PHI: they name resource types, ids, HTTP status codes and
OperationOutcome text (which servers write for operators, not for patients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FhirBridgeError(Exception):
    """Root of every error fhir_bridge raises on purpose."""


class ConfigError(FhirBridgeError):
    """A configuration file or value is wrong; the message names file, key path and expectation."""


class FhirRequestError(FhirBridgeError):
    """A request to a FHIR server failed.

    :param status: HTTP status code, or ``None`` when no response arrived.
    :param outcome: readable text taken from the server's OperationOutcome, if any.
    :param retry_after: seconds the server asked us to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: str | None = None,
        retry_after: float | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.outcome = outcome
        self.retry_after = retry_after
        self.url = url
        text = message
        if outcome:
            text = f"{message}: {outcome}"
        super().__init__(text)


class TemporaryFhirError(FhirRequestError):
    """A failure that may go away: 408, 429, 500-504, connection errors, timeouts."""


class FatalFhirError(FhirRequestError):
    """A failure that retrying the same request will not fix."""


class ResourceNotFound(FatalFhirError):
    """The resource does not exist (404) or was deleted (410)."""


class PreconditionFailed(FatalFhirError):
    """412: the resource changed since the version we read (If-Match failed)."""


class MalformedResponse(FatalFhirError):
    """The server answered 2xx with a body that is not the FHIR JSON expected."""


class ResourceInvalid(FhirBridgeError):
    """A resource failed parsing or a profile check.

    :param issues: OperationOutcome-shaped issues
        (``severity``, ``code``, ``expression``, ``diagnostics``).
    """

    def __init__(self, message: str, issues: Sequence[dict[str, Any]]) -> None:
        self.issues = list(issues)
        super().__init__(message)


class MappingError(FhirBridgeError):
    """A mapping file is broken. The message names the file, the rule and the key."""

    def __init__(
        self, message: str, *, file: str, rule: str | None = None, key: str | None = None
    ) -> None:
        self.file = file
        self.rule = rule
        self.key = key
        where = file
        if rule:
            where += f": rule {rule!r}"
        if key:
            where += f": key {key!r}"
        super().__init__(f"{where}: {message}")


class QueueError(FhirBridgeError):
    """A task operation cannot be done."""


class TaskNotFound(QueueError):
    """No task with that id."""


class IllegalTransition(QueueError):
    """The task state machine forbids the requested change.

    :param allowed: the statuses the task may move to from its current status.
    """

    def __init__(self, message: str, *, current: str, allowed: Sequence[str]) -> None:
        self.current = current
        self.allowed = list(allowed)
        super().__init__(message)


class TaskConflict(QueueError):
    """The task is held by someone else or changed since it was read."""


class StoreError(FhirBridgeError):
    """The storage engine failed (disk, connection, corruption)."""
