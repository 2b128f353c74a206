"""Plain-language messages for families, from templates kept in `mappings/messages/<lang>.yaml`.

    # mappings/messages/en.yaml
    language: en
    weekdays: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday]
    months: [January, February, ...]
    datetime: "{weekday} {day} {month} at {time}"     # how a dateTime value is written
    date: "{weekday} {day} {month}"                    # how a date value is written
    words: {check-up: check-up}                        # optional: plain words for values
    plain: {medicine: " [0-9].*$"}                     # optional: what to cut from a value
    messages:
      appointment-booked: "{patient}'s {visit}[ with {clinician}] is booked for {when}."

Rules call the FHIRPath function `message(key, language, name1, value1, name2, value2, ...)`:
the template `key` in `language` (else its primary subtag, `es` for `es-MX`, else English)
with each `{name}` replaced by its value. A `[...]` part is left out when a placeholder in
it has no value. Dates and dateTimes become words in that language, at the time of day the
EHR wrote (in its offset); a value listed under `words` becomes the word given there; `plain`
cuts what matches its regular expression from the value of that placeholder (strengths and
forms from a medicine's name), English's `plain` applying where a language has none. Why a
function and not FHIRPath text: weekday and month names cannot be written in FHIRPath.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fhir_bridge.errors import MappingError

MESSAGES_DIR = "messages"
FALLBACK = "en"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


class _Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str = Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)*$")
    weekdays: tuple[str, ...] = Field(min_length=7, max_length=7)
    months: tuple[str, ...] = Field(min_length=12, max_length=12)
    datetime: str = "{weekday} {day} {month} at {time}"
    date: str = "{weekday} {day} {month}"
    words: dict[str, str] = Field(default_factory=dict)
    plain: dict[str, str] = Field(default_factory=dict)
    messages: dict[str, str] = Field(min_length=1)


@dataclass
class Messages:
    """Every message catalogue of a mapping folder, by language."""

    catalogues: dict[str, _Catalogue] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Messages:
        """Read every `*.yaml` catalogue in `folder` (none is fine)."""
        found = cls()
        if not folder.is_dir():
            return found
        for path in sorted(folder.glob("*.yaml")):
            try:
                catalogue = _Catalogue.model_validate(yaml.safe_load(path.read_text("utf-8")))
            except (OSError, yaml.YAMLError, ValidationError) as exc:
                first = str(exc).splitlines()[0]
                raise MappingError(f"not a message catalogue: {first}", file=str(path)) from None
            found.catalogues[catalogue.language] = catalogue
        return found

    def keys(self) -> frozenset[str]:
        """Every message key of every language."""
        return frozenset(k for c in self.catalogues.values() for k in c.messages)

    def _catalogue(self, language: str | None, key: str) -> _Catalogue | None:
        wanted = [language or "", (language or "").split("-")[0], FALLBACK]
        for code in wanted:
            found = self.catalogues.get(code)
            if found is not None and key in found.messages:
                return found
        return None

    def render(self, key: str, language: str | None, values: dict[str, Any]) -> str:
        """The message `key` in `language` with `values` filled in.

        :raises ValueError: no catalogue has `key` (an evaluation error of the rule).
        """
        catalogue = self._catalogue(language, key)
        if catalogue is None:
            raise ValueError(f"no message {key!r} in mappings/{MESSAGES_DIR}")
        fallback = self.catalogues.get(FALLBACK)
        cuts = {**(fallback.plain if fallback else {}), **catalogue.plain}
        for name, pattern in cuts.items():
            if isinstance(values.get(name), str):
                values = values | {name: re.sub(pattern, "", values[name]).strip()}
        words = {k: _words(catalogue, v) for k, v in values.items() if v not in (None, "")}

        def optional(match: re.Match[str]) -> str:
            inner = match.group(1)
            wanted = _PLACEHOLDER.findall(inner)
            return inner if all(n in words for n in wanted) else ""

        text = _OPTIONAL.sub(optional, catalogue.messages[key])
        return _PLACEHOLDER.sub(lambda m: words.get(m.group(1), ""), text).strip()

    def functions(self) -> dict[str, dict[str, Any]]:
        """The fhirpathpy user function `message(key, language, name, value, ...)`."""
        return {"message": {"fn": self._call, "variadic": "Any", "messages": self.keys()}}

    def _call(self, _inputs: list[Any], *args: Any) -> list[str]:
        plain = [_one(a) for a in args]
        if len(plain) < 2 or len(plain) % 2:
            raise ValueError("message() takes a key, a language, then name/value pairs")
        key, language, rest = plain[0], plain[1], plain[2:]
        values = {str(rest[i]): rest[i + 1] for i in range(0, len(rest), 2)}
        return [self.render(str(key), str(language) if language else None, values)]


def _one(value: Any) -> Any:
    """A FHIRPath argument (a list of items) as one plain value, None when empty."""
    items = value if isinstance(value, list) else [value]
    items = [getattr(i, "data", i) for i in items]
    return items[0] if items else None


def _words(catalogue: _Catalogue, value: Any) -> str:
    text = str(value)
    when = _moment(text)
    if when is not None:
        moment, has_time = when
        parts = {
            "weekday": catalogue.weekdays[moment.weekday()],
            "day": str(moment.day),
            "month": catalogue.months[moment.month - 1],
            "year": str(moment.year),
            "time": moment.strftime("%H:%M"),
        }
        pattern = catalogue.datetime if has_time else catalogue.date
        return _PLACEHOLDER.sub(lambda m: parts.get(m.group(1), m.group(0)), pattern)
    return catalogue.words.get(text, text)


def _moment(text: str) -> tuple[date, bool] | None:
    """A FHIR date (YYYY-MM-DD) or dateTime with a time, else None."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return date.fromisoformat(text), False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?", text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")), True
    return None
