"""Capture every log line as the production JSON renderer writes it (processors included)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from fhir_bridge.logging import configure_logging


class JsonLines:
    """The rendered text of a capture, and its lines decoded."""

    def __init__(self, buffer: io.StringIO) -> None:
        self.buffer = buffer

    @property
    def text(self) -> str:
        """Everything written so far, exactly as rendered."""
        return self.buffer.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        """Each line as a JSON object (every line must be one)."""
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@contextmanager
def json_log_lines(level: str = "DEBUG") -> Iterator[JsonLines]:
    """Configure logging as production does (JSON, redaction) into a buffer; undo afterwards.

    Unlike `structlog.testing.capture_logs`, every processor runs, so the capture shows what
    an operator's log store would receive, including standard-library loggers.
    """
    buffer = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    old_handlers = list(root.handlers)
    httpx_level = logging.getLogger("httpx").level
    configure_logging(level, json=True, stream=buffer)
    try:
        yield JsonLines(buffer)
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in old_handlers:
                root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("httpx").setLevel(httpx_level)
