"""The content hash of a resource, and the canonical JSON text it hashes.

Here rather than in `sync.ingest` so the parse pool's workers compute it next to the parse
without importing the store and the rules.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson


def content_hash(resource: dict[str, Any]) -> str:
    """A hash of the resource's content, blind to `meta.versionId` and `meta.lastUpdated`.

    Servers bump the version on a no-op PUT; hashing without those two keeps such a
    re-save from re-running every rule.
    """
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = {**resource, "meta": meta}
    return hashlib.sha256(canonical_json(resource)).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON of `value`, the text `content_hash` hashes.

    orjson writes it several times faster than `json`, and byte for byte the same as
    `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, which earlier
    versions hashed, except for floats in exponent form (`1e-07` there, `1e-7` here): such a
    resource, rare in FHIR, has its rules run once more after an upgrade. What orjson refuses
    (integers beyond 64 bits, lone surrogates) goes through `json`.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")
