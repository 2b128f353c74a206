"""Stored resource bodies as JSON text, for both engines.

orjson is several times faster than json both ways, but it would change some bodies: it
refuses to write integers beyond 64 bits and reads them as floats, and it rejects NaN and lone
surrogates. So a body is written by orjson unless it cannot be, and read by orjson unless it
holds a run of 19 digits or more (in a number, or in a string: rare, and json reads those
right too) or orjson refuses it; json does the rest, exactly as before. The run is found by
mapping every digit to "0" and every other byte to " " (bytes.translate) and searching the
result: a quarter of the time of a regular expression, which cost as much as orjson's parse.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def dumps(body: dict[str, Any]) -> str:
    """Compact JSON text of a resource body."""
    try:
        return orjson.dumps(body).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(body, separators=(",", ":"))


def loads(text: str) -> Any:
    """The body a `dumps` text (or a json.dumps one) holds, value for value."""
    # `find`, not `in`: bytes `in` tries its operand as an integer first (a TypeError raised
    # and cleared per call).
    if text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO).find(_LONG_RUN) < 0:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN and other things json reads
    return json.loads(text)
