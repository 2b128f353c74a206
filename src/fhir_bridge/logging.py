"""structlog set-up: JSON off a terminal, readable on one, and never a patient's data.

Logs carry resource types, ids, counts, statuses and timings. The redaction processor is a
safety net for a developer who passes PHI by mistake: it drops values under keys that name
PHI-bearing FHIR elements (name, birthDate, address, telecom, identifier values, free text)
and any query string, and says so in the line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are PHI or may carry PHI (FHIR element names and our own field names).
PHI_KEYS = frozenset(
    {
        "name",
        "family",
        "given",
        "birthdate",
        "birth_date",
        "address",
        "telecom",
        "phone",
        "email",
        "identifier",
        "identifier_value",
        "text",
        "note",
        "comment",
        "description",
        "body",
        "resource",
        "query",
        "params",
        "payload",
    }
)
REDACTED = "[redacted]"


def redact_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values under PHI-bearing keys, and strip query strings from URLs."""
    for key in list(event_dict):
        if key.lower() in PHI_KEYS:
            event_dict[key] = REDACTED
        elif key.lower().endswith("url") and isinstance(event_dict[key], str):
            event_dict[key] = event_dict[key].split("?", 1)[0]
    return event_dict


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog for the process.

    :param level: minimum level name (DEBUG, INFO, WARNING, ...).
    :param json: force JSON (True) or console (False) output; default: JSON unless stderr is a TTY.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_phi,
    ]
    if json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a structlog logger bound to a component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
