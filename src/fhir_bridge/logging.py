"""structlog set-up: JSON off a terminal, readable on one, and never a patient's data.

Logs carry resource types, ids, counts, statuses and timings. The redaction processor is a
safety net for a developer who passes PHI by mistake: it drops values under keys that name
PHI-bearing FHIR elements (name, birthDate, address, telecom, identifier values, free text)
and any query string, and says so in the line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values are PHI or may carry PHI (FHIR element names and our own field names),
# compared after lower-casing and dropping "_" and "-" (so birthDate, birth_date, BIRTH-DATE).
PHI_KEYS = frozenset(
    {
        "name",
        "family",
        "given",
        "prefix",
        "suffix",
        "patientname",
        "familyname",
        "givenname",
        "firstname",
        "lastname",
        "fullname",
        "birthdate",
        "dateofbirth",
        "dob",
        "address",
        "addressline",
        "line",
        "postalcode",
        "zip",
        "telecom",
        "phone",
        "phonenumber",
        "mobile",
        "email",
        "identifier",
        "identifiervalue",
        "ssn",
        "mrn",
        "text",
        "note",
        "comment",
        "description",
        "body",
        "resource",
        "query",
        "querystring",
        "params",
        "payload",
    }
)
REDACTED = "[redacted]"
# Keys structlog itself writes; never touched.
_KEEP = frozenset({"level", "timestamp", "logger", "component"})
# A query string after a URL or a FHIR path ("Patient?family=Roe", "https://x/fhir?name=Roe").
_QUERY_RE = re.compile(r"\?[^\s?#\"'<>]*=[^\s#\"'<>]*")
# A FHIR search parameter that carries a person's data, with its value ("family=Roe").
_SEARCH_RE = re.compile(
    r"\b(family|given|name|birthdate|birth-date|phone|email|telecom|identifier|ssn|mrn"
    r"|address(?:-[a-z]+)?)((?::[a-z-]+)?)=[^&\s\"'<>]*",
    re.IGNORECASE,
)
_MAX_DEPTH = 8


def _normal(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def scrub_text(value: str) -> str:
    """`value` without query strings and without values of person-bearing search parameters."""
    if "=" not in value:
        return value
    value = _QUERY_RE.sub("", value)
    return _SEARCH_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}", value)


def _redact(key: str | None, value: Any, depth: int) -> Any:
    if key is not None and _normal(key) in PHI_KEYS:
        return REDACTED
    if isinstance(value, str):
        if key is not None and key.lower().endswith("url"):
            return value.split("?", 1)[0]
        return scrub_text(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool | None) else REDACTED
    if isinstance(value, dict):
        return {
            k: _redact(k if isinstance(k, str) else None, v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(None, v, depth + 1) for v in value]
    return value


def redact_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values under PHI-bearing keys (at any depth) and strip query strings and
    person-bearing search values from every string, so a mistake never reaches the log."""
    for key in list(event_dict):
        if key in _KEEP:
            continue
        if key == "event":  # our event names are snake_case; a stdlib message may quote a URL
            event_dict[key] = _scrub_all(event_dict[key])
            continue
        if key == "exception":
            # A structured traceback: its frames' "name" is a function name, not a person's.
            event_dict[key] = _scrub_all(event_dict[key])
            continue
        event_dict[key] = _redact(key, event_dict[key], 0)
    return event_dict


def _scrub_all(value: Any) -> Any:
    """Scrub every string in `value` without looking at keys."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_all(v) for v in value]
    return value


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (pytest swaps it between tests)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(
    level: str = "INFO", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog, and route the standard library's loggers (httpx, uvicorn) through
    the same processors, redaction included.

    :param level: minimum level name (DEBUG, INFO, WARNING, ...).
    :param json: force JSON (True) or console (False) output; default: JSON unless stderr is a TTY.
    :param stream: where lines go; default: the current standard error.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[structlog.typing.Processor] = [redact_phi]
    if json:
        tail.append(structlog.processors.dict_tracebacks)
        tail.append(redact_phi)  # again: the traceback text may quote a value
    tail.append(renderer)
    level_no = logging.getLevelName(level.upper())
    structlog.configure(
        processors=shared + tail,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream)
        if stream is not None
        else _StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    # httpx logs every request URL at INFO; our own fhir_request line says it without the query.
    logging.getLogger("httpx").setLevel(max(level_no, logging.WARNING))


_HANDLER_NAME = "fhir_bridge"


class _StderrLoggerFactory:
    """A structlog PrintLogger on the current standard error, looked up per logger."""

    def __call__(self, *_args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a structlog logger bound to a component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
