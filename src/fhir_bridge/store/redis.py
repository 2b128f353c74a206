"""The Redis storage engine: the same protocol as SQLite, for several workers and machines.

A synchronous redis-py client (its connection pool is thread-safe), one per store. Key names
live in `store/keys.py`; every key of an installation shares one hash tag, so each MULTI is
single-slot (see that module for the Cluster caveat).

Atomicity, method by method:
- read-modify-writes (`put_resources`, `update_task`, `set_task_mirror`, the outbox
  bookkeeping) run under WATCH/MULTI/EXEC in `_atomic`: read the watched keys, queue the
  writes, EXEC; a concurrent change to a watched key aborts EXEC and the whole method runs
  again (up to `max_attempts`), so there is no read-modify-write race. `update_task`'s
  `change` may therefore run more than once; it must not have side effects of its own.
- `upsert_tasks` (and `upsert_task`, a page of one) is a compare-and-set per task: one
  pipelined read of the page's task hashes, then one script (`_GUARDED_WRITES`) that, task by
  task, writes only if the hash is still exactly what was read; the tasks changed meanwhile
  are read and worked out again, alone, so one contested task never makes a page start over.
- blind multi-key writes (quarantine) are a plain MULTI/EXEC.
- reads that go index -> records (`list_tasks`, `due_outbox`, ...) WATCH the index and read
  the records in EXEC, or run as one script (`resources_for_patient`), so a page never mixes
  two states of the store. `iter_resources` is consistent per page only (like SQLite's, it
  reads page by page). Ingest's batch reads (`get_tasks`, `resource_hashes`,
  `rules_with_tasks`) are one pipelined round trip of single-key reads.
- `batch()` groups nothing: each method is already atomic on its own.
- outbox delivery is shared through a Stream consumer group: a task's head entry is announced
  (XADD) in the transaction that makes it the head, consumers read with XREADGROUP, take over
  idle claims with XAUTOCLAIM and XACK once the outcome is recorded (see `claim_outbox`).

Datetimes are stored as ISO strings in UTC; sorted-set scores are exact integer microseconds.
Outbox ids come from INCRBY before EXEC, so a retried transaction leaves a gap in the ids
(never a duplicate; per task they still grow in commit order, as tasks serialise on WATCH).
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

import redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from fhir_bridge.errors import StoreError, TaskNotFound
from fhir_bridge.patients.refs import patient_reference
from fhir_bridge.patients.terms import patient_terms
from fhir_bridge.store import bodies
from fhir_bridge.store.base import (
    AuditFilter,
    AuditRecord,
    Lease,
    OutboxClaim,
    PatientReads,
    QuarantineEntry,
    Store,
    StoredResource,
    TaskCursor,
    TaskFilter,
    TaskPage,
    TaskUpsert,
)
from fhir_bridge.store.keys import OUTBOX_GROUP, SCHEMA_VERSION, Keys
from fhir_bridge.store.redis_url import connect, safe_url
from fhir_bridge.tasks.model import (
    OutboxEntry,
    OutboxStatus,
    Priority,
    Task,
    TaskChange,
    TaskDraft,
    TaskEvent,
    TaskStatus,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")
Finish = Callable[[list[Any]], _R]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# Listing order is "highest priority first": the rank digit is inverted so it sorts ascending.
_RANK = {Priority.STAT: "0", Priority.ASAP: "1", Priority.URGENT: "2", Priority.ROUTINE: "3"}


def _watch(pipe: Pipeline, *keys: str) -> None:
    """WATCH more keys (redis-py leaves `watch` unannotated)."""
    pipe.watch(*keys)  # type: ignore[no-untyped-call]


def _command(pipe: Pipeline, *args: str) -> None:
    """Queue (or send) one command given as its name and arguments."""
    pipe.execute_command(*args)  # type: ignore[no-untyped-call]


def _in_multi(pipe: Pipeline) -> bool:
    """True once `multi()` was called (a Cluster pipeline keeps the flag in its strategy)."""
    if hasattr(pipe, "explicit_transaction"):
        return bool(pipe.explicit_transaction)
    strategy = getattr(pipe, "_execution_strategy", None)
    return bool(getattr(strategy, "_explicit_transaction", False))


def _hset(pipe: Pipeline, key: str, fields: Mapping[str, str]) -> None:
    pipe.hset(key, mapping=cast(Mapping[Any, Any], fields))


def _audit_indexed(
    agent: str | None, patient: str | None, task_id: str | None
) -> list[tuple[str, str]]:
    """The (index, value) pairs an audit record is filed under, narrowest first."""
    pairs = (("patient", patient), ("task", task_id), ("agent", agent))
    return [(field, value) for field, value in pairs if value is not None]


def _translate(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn every redis-py error escaping `method` into StoreError."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"Redis {method.__name__} failed: {exc}") from exc

    return wrapper


_safe_url = safe_url  # the name `cli_worker` imports


def _patient_identifiers(patient: dict[str, Any]) -> list[str]:
    """`system|value` of each identifier of a Patient that has both, sorted, once each."""
    found = set()
    for ident in patient.get("identifier") or []:
        system, value = (ident or {}).get("system"), (ident or {}).get("value")
        if isinstance(system, str) and isinstance(value, str):
            found.add(f"{system}|{value}")
    return sorted(found)


def _flat_hashes(replies: list[list[str]]) -> list[dict[str, str]]:
    """HGETALL replies a script returned (flat field, value lists) as dicts."""
    return [dict(zip(f[::2], f[1::2], strict=True)) for f in replies]


def _records(members: Iterable[str]) -> list[tuple[str, str]]:
    """Patient records ("<source>/<id>" index members) as sorted (source, id) pairs."""
    return sorted(cast(tuple[str, str], tuple(m.split("/", 1))) for m in members)


def _facts(raw: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A facts hash decoded, by key."""
    return {k: json.loads(v) for k, v in sorted(raw.items())}


def _term_member(term: str, record: str) -> str:
    """A member of the patient-term index: the term, NUL, `source/id`."""
    return f"{term}\0{record}"


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _micros(value: datetime) -> int:
    """Exact integer microseconds since the epoch (< 2**53 until the year 2255)."""
    return (value.astimezone(UTC) - _EPOCH) // _MICRO


def _stop(start: int, limit: int) -> int:
    """The inclusive end index for `limit` items from `start` (a negative limit: no limit)."""
    return -1 if limit < 0 else start + limit - 1


def _present(fields: dict[str, str | None]) -> dict[str, str]:
    """Hash fields without the None values (a missing field reads back as None)."""
    return {k: v for k, v in fields.items() if v is not None}


def _position(priority: Priority, due: datetime | None, task_id: str) -> str:
    """A place in listing order as an index member: priority, due (none last), id."""
    if due is None:
        stamp = "~"  # after every digit
    else:
        u = due.astimezone(UTC)
        stamp = f"{u.year:04d}{u:%m%d%H%M%S%f}"
    return f"{_RANK[priority]}:{stamp}:{task_id}"


def _sort_member(task: Task) -> str:
    """The member of a task in its index sorted sets: priority, due (none last), id."""
    return _position(task.priority, task.due, task.id)


def _resource(h: dict[str, str]) -> StoredResource:
    return StoredResource(
        source=h["source"],
        resource_type=h["type"],
        id=h["id"],
        version_id=h.get("version_id"),
        last_updated=h.get("last_updated"),
        content_hash=h["hash"],
        body=bodies.loads(h["body"]),
    )


def _task_fields(task: Task) -> dict[str, str]:
    return _present(
        {
            "id": task.id,
            "rule_id": task.rule_id,
            "source": task.source,
            "focus_type": task.focus_type,
            "focus_id": task.focus_id,
            "focus_version": task.focus_version,
            "patient": task.patient,
            "queue": task.queue,
            "kind": task.kind,
            "title": task.title,
            "priority": task.priority.value,
            "due": _ts(task.due),
            "status": task.status.value,
            "assignee": task.assignee,
            "created_at": _ts(task.created_at),
            "updated_at": _ts(task.updated_at),
            "version": str(task.version),
            "mirror_id": task.mirror_id,
            "mirror_version": task.mirror_version,
            "description": task.description,
            "labels": json.dumps(list(task.labels)),
        }
    )


# Lua the scripts below share (each script is this text followed by its own).
# part: one key segment escaped as `keys._part` does; hash_json: a hash as one JSON object
# ('' when there is no such hash); task_json: the task an index member ("...:<id>") names;
# patient_resources: the hashes of a patient's resources in an index range (by type/id).
_LUA = """
local function part(s) return (string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A')) end
local function hash_json(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return '' end
  local h = {}
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  return cjson.encode(h)
end
local function task_json(prefix, member)
  return hash_json(prefix .. part(string.match(member, '[^:]*$')))
end
local function patient_resources(index, low, high, prefix)
  local out = {}
  for i, m in ipairs(redis.call('ZRANGEBYLEX', index, low, high)) do
    local slash = string.find(m, '/', 1, true)
    local rtype, rid = string.sub(m, 1, slash - 1), string.sub(m, slash + 1)
    out[i] = redis.call('HGETALL', prefix .. ':' .. part(rtype) .. ':' .. part(rid))
  end
  return out
end
"""
# Each hash of KEYS as one JSON object (an empty string for a missing one). A page of 50 tasks
# read with HGETALL is ~2,100 reply items for redis-py's pure-Python parser to decode (most
# of the page's cost, more than Redis's own work); this is 50 strings for `json.loads`.
_HASHES_AS_JSON = (
    _LUA
    + """
local out = {}
for i, key in ipairs(KEYS) do out[i] = hash_json(key) end
return out
"""
)


# KEYS: the audit sequence, the records hash, then every index the record goes in; ARGV: the
# record as JSON. Its new id.
_ADD_AUDIT = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
for i = 3, #KEYS do redis.call('ZADD', KEYS[i], id, id) end
return id
"""

# KEYS: a task index; ARGV: start, stop (ZRANGE's), the task key prefix, "1" to read tasks
# ("0": the size only). The index's size and the tasks of that range, each hash as JSON (as
# `_HASHES_AS_JSON`); index members end in ":<task id>".
_INDEX_PAGE = (
    _LUA
    + """
local total = redis.call('ZCARD', KEYS[1])
local out = {}
if ARGV[4] == '1' then
  for i, m in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])) do
    out[i] = task_json(ARGV[3], m)
  end
end
return {total, out}
"""
)


def _hashes(reply: list[str]) -> list[dict[str, str]]:
    """The reply of `_HASHES_AS_JSON` as HGETALL replies (an empty dict: no such hash)."""
    return [cast(dict[str, str], json.loads(h)) if h else {} for h in reply]


def _task(h: dict[str, str]) -> Task:
    return Task(
        id=h["id"],
        rule_id=h["rule_id"],
        source=h["source"],
        focus_type=h["focus_type"],
        focus_id=h["focus_id"],
        focus_version=h.get("focus_version"),
        patient=h.get("patient"),
        queue=h["queue"],
        kind=h["kind"],
        title=h["title"],
        priority=Priority(h["priority"]),
        due=_dt(h.get("due")),
        status=TaskStatus(h["status"]),
        assignee=h.get("assignee"),
        created_at=datetime.fromisoformat(h["created_at"]),
        updated_at=datetime.fromisoformat(h["updated_at"]),
        version=int(h["version"]),
        mirror_id=h.get("mirror_id"),
        mirror_version=h.get("mirror_version"),
        description=h.get("description"),
        labels=tuple(json.loads(h.get("labels", "[]"))),
    )


def _event_json(event: TaskEvent) -> str:
    return json.dumps(
        {
            "task_id": event.task_id,
            "at": _ts(event.at),
            "actor": event.actor,
            "action": event.action,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "detail": event.detail,
        }
    )


def _event(raw: str) -> TaskEvent:
    e = json.loads(raw)
    return TaskEvent(
        task_id=e["task_id"],
        at=datetime.fromisoformat(e["at"]),
        actor=e["actor"],
        action=e["action"],
        from_status=e["from_status"],
        to_status=e["to_status"],
        detail=e["detail"],
    )


def _entry(h: dict[str, str]) -> OutboxEntry:
    return OutboxEntry(
        id=int(h["id"]),
        task_id=h["task_id"],
        source=h["source"],
        action=h["action"],
        payload=json.loads(h["payload"]),
        status=OutboxStatus(h["status"]),
        attempts=int(h["attempts"]),
        next_attempt_at=datetime.fromisoformat(h["next_attempt_at"]),
        last_error=h.get("last_error"),
        created_at=datetime.fromisoformat(h["created_at"]),
        delivered_at=_dt(h.get("delivered_at")),
        detail=json.loads(h["detail"]) if h.get("detail") else None,
    )


def _quarantine_member(source: str, resource_type: str, key: str) -> str:
    # The id comes first so that ties in time list by id, as in SQLite; JSON keeps it unambiguous.
    return json.dumps([key, source, resource_type])


# One Redis command as its name, key and arguments.
_Command = tuple[str, ...]
# Tasks per `_GUARDED_WRITES` script: bounds how long one script keeps Redis busy.
_GUARDED_CHUNK = 200


@dataclass(frozen=True)
class _Guarded:
    """Writes to apply only if `key` (a hash) still holds `expected` ({}: does not exist)."""

    position: int  # of the draft in its batch
    key: str
    expected: dict[str, str]
    writes: list[_Command]


@dataclass(frozen=True)
class _ResourceWrite:
    """One resource to store: its key and fields, and the index changes it needs."""

    source: str
    rtype: str
    rid: str
    digest: str
    patient: str | None
    key: str
    fields: dict[str, str]
    idents: tuple[str, ...]
    terms: tuple[str, ...]  # a Patient's search terms (`patients.terms`)

    @classmethod
    def of(cls, k: Keys, source: str, resource: dict[str, Any], digest: str) -> _ResourceWrite:
        rtype, rid = resource["resourceType"], resource["id"]
        meta = resource.get("meta") or {}
        patient = patient_reference(resource)
        fields = _present(
            {
                "source": source,
                "type": rtype,
                "id": rid,
                "hash": digest,
                "body": bodies.dumps(resource),
                "version_id": meta.get("versionId"),
                "last_updated": meta.get("lastUpdated"),
                "stored_at": _ts(datetime.now(UTC)),
                "patient": patient,
            }
        )
        idents = tuple(_patient_identifiers(resource)) if rtype == "Patient" else ()
        if idents:
            fields["identifiers"] = json.dumps(list(idents))
        terms = tuple(patient_terms(resource)) if rtype == "Patient" else ()
        if terms:
            fields["terms"] = json.dumps(list(terms))
        key = k.resource(source, rtype, rid)
        return cls(source, rtype, rid, digest, patient, key, fields, idents, terms)

    def queue(
        self,
        pipe: Pipeline,
        k: Keys,
        old_hash: str | None,
        old_patient: str | None,
        old_idents: str | None,
        old_terms: str | None,
        unmapped: str | None = None,
    ) -> None:
        """Queue the writes (inside MULTI) over what was stored before; a new resource's
        count, id index and source entry are left to the caller (one command per page).
        `unmapped`: the mark `Store.mark_mapped` clears ("new" or "changed"), if any."""
        member, record = f"{self.rtype}/{self.rid}", f"{self.source}/{self.rid}"
        for ident in set(json.loads(old_idents or "[]")) - set(self.idents):
            pipe.srem(k.patient_identifier(ident), record)
        for ident in self.idents:
            pipe.sadd(k.patient_identifier(ident), record)
        gone = set(json.loads(old_terms or "[]")) - set(self.terms)
        if gone:
            pipe.zrem(k.patient_terms, *(_term_member(t, record) for t in gone))
        if self.terms:
            pipe.zadd(k.patient_terms, {_term_member(t, record): 0 for t in self.terms})
        if old_hash is not None and old_patient is not None and old_patient != self.patient:
            pipe.zrem(k.resource_patient(self.source, old_patient), member)
        if self.patient is not None:
            pipe.zadd(k.resource_patient(self.source, self.patient), {member: 0})
        if old_hash is not None:  # no stale field may survive (a new one has no key yet)
            pipe.delete(self.key)
        _hset(pipe, self.key, self.fields)
        if unmapped is not None:
            pipe.hset(self.key, "unmapped", unmapped)


class RedisStore(Store):
    """Storage in Redis under one key prefix.

    :param url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
        ``redis+cluster://`` URL (`store/redis_url.py`; ignored when `client` is given).
    :param key_prefix: namespace of this installation's keys (several may share a server).
    :param client: a ready client created with ``decode_responses=True`` (the caller keeps
        ownership: `close` leaves it open).
    :param outbox_visibility_timeout: seconds an outbox claim may stay unacknowledged before
        another consumer takes it over (XAUTOCLAIM min-idle-time).
    :raises StoreError: Redis cannot be reached or holds data of another schema version.
    """

    max_attempts = 64  # WATCH conflicts tolerated per call before giving up
    # Transactions that found a watched key changed, plus tasks whose compare-and-set in
    # `upsert_tasks` found their task changed, since the store was opened (for benchmarks).
    conflicts = 0

    def __init__(
        self,
        url: str,
        key_prefix: str = "fhir-bridge",
        client: redis.Redis | None = None,
        outbox_visibility_timeout: float = 60.0,
    ) -> None:
        self.keys = Keys(key_prefix)
        self._owns_client = client is None
        if outbox_visibility_timeout <= 0:
            raise ValueError("outbox_visibility_timeout must be positive")
        self.outbox_visibility_timeout = outbox_visibility_timeout
        self._idle_ms = max(1, round(outbox_visibility_timeout * 1000))
        self._group_ready = False
        try:
            if client is None:
                client = connect(
                    url,
                    decode_responses=True,
                    socket_connect_timeout=5,
                    socket_timeout=30,
                    health_check_interval=30,
                )
            self._redis = client
            kwargs = getattr(client, "get_connection_kwargs", lambda: {"decode_responses": True})
            if not kwargs().get("decode_responses"):
                raise ValueError("the Redis client must be created with decode_responses=True")
            client.hsetnx(self.keys.meta, "schema_version", str(SCHEMA_VERSION))
            stored = cast(str | None, client.hget(self.keys.meta, "schema_version"))
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot open Redis store at {_safe_url(url)}: {exc}") from exc
        if stored != str(SCHEMA_VERSION):
            raise StoreError(
                f"Redis keys under {self.keys.root} have schema version {stored}; "
                f"this bridge uses {SCHEMA_VERSION} (migrate first)"
            )
        self._index_patient_identifiers()
        self._index_patient_terms()

    # -- plumbing ----------------------------------------------------------------------------
    def _atomic(self, body: Callable[[Pipeline], Finish[_R]], *watch: str) -> _R:
        """Run `body` under WATCH and EXEC what it queued, again from scratch on a conflict.

        `body` reads in immediate mode (it may WATCH more keys), calls `multi()` if it writes,
        queues commands, and returns a function that maps EXEC's replies to the result. EXEC
        is sent even when nothing was queued, so a read-only outcome is checked too.
        """
        for _ in range(self.max_attempts):
            with self._redis.pipeline(transaction=True) as pipe:
                try:
                    if watch:
                        _watch(pipe, *watch)
                    finish = body(pipe)
                    if not _in_multi(pipe):
                        pipe.multi()
                    replies = pipe.execute()
                except WatchError:
                    self.conflicts += 1
                    continue
                return finish(replies)
        raise StoreError(f"gave up after {self.max_attempts} conflicting concurrent changes")

    @staticmethod
    def _hash(pipe: Pipeline | redis.Redis, key: str) -> dict[str, str]:
        return cast(dict[str, str], pipe.hgetall(key))

    def close(self) -> None:
        if self._owns_client:
            self._redis.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        # Every method is already one atomic round of Redis commands; grouping them would only
        # save round trips, and the protocol lets a failed batch keep what completed.
        yield

    # -- resources ---------------------------------------------------------------------------
    @_translate
    def put_resource(self, source: str, resource: dict[str, Any], content_hash: str) -> bool:
        return self.put_resources(source, [(resource, content_hash)])[0]

    @_translate
    def put_resources(
        self,
        source: str,
        items: Sequence[tuple[dict[str, Any], str]],
        *,
        unmapped: bool = False,
    ) -> list[bool]:
        # One transaction for a page: WATCH its keys, read what is stored in one pipelined
        # round trip (after the WATCH, so a concurrent write still aborts EXEC), queue every
        # write, EXEC once. One round trip per resource made Redis ingest ~3x slower.
        if not items:
            return []
        writes = [_ResourceWrite.of(self.keys, source, r, digest) for r, digest in items]
        keys = list(dict.fromkeys(w.key for w in writes))

        def body(pipe: Pipeline) -> Finish[list[bool]]:
            with self._redis.pipeline(transaction=False) as reads:
                for key in keys:
                    reads.hmget(key, ["hash", "patient", "identifiers", "terms", "unmapped"])
                stored = dict(zip(keys, cast(list[list[str | None]], reads.execute()), strict=True))
            pipe.multi()
            done = []
            new_ids: dict[str, dict[str, int]] = {}  # per type, the page's new resource ids
            fresh: set[str] = set()  # keys written as new by this page
            for w in writes:
                old_hash, old_patient, old_idents, old_terms, mark = stored[w.key]
                if old_hash == w.digest and mark is None:
                    done.append(False)
                    continue
                # "new" until mapped, also on a retry: its `trigger: new` rules are still due.
                new = old_hash is None or mark == "new" or w.key in fresh
                if new:
                    fresh.add(w.key)  # a later, different copy in the page stays new
                mark = ("new" if new else "changed") if unmapped else None
                w.queue(pipe, self.keys, old_hash, old_patient, old_idents, old_terms, mark)
                if old_hash is None:
                    new_ids.setdefault(w.rtype, {})[w.rid] = 0
                stored[w.key] = [  # a later copy in the page: mapped with this one
                    w.digest,
                    w.patient,
                    w.fields.get("identifiers"),
                    w.fields.get("terms"),
                    None,
                ]
                done.append(True)
            for rtype, ids in new_ids.items():
                pipe.hincrby(self.keys.resource_counts(source), rtype, len(ids))
                pipe.zadd(self.keys.resource_ids(source, rtype), cast(Mapping[Any, Any], ids))
            if new_ids:
                pipe.sadd(self.keys.sources, source)
            return lambda _: done

        return self._atomic(body, *keys)

    @_translate
    def mark_mapped(self, source: str, keys: Sequence[tuple[str, str]]) -> None:
        if not keys:
            return
        with self._redis.pipeline(transaction=False) as writes:
            for rtype, rid in keys:  # HDEL of a resource deleted meanwhile creates nothing
                writes.hdel(self.keys.resource(source, rtype, rid), "unmapped")
            writes.execute()

    @_translate
    def resource_hashes(
        self, source: str, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, str]:
        ids = list(dict.fromkeys(resource_ids))
        with self._redis.pipeline(transaction=False) as reads:
            for rid in ids:
                reads.hmget(self.keys.resource(source, resource_type, rid), ["hash", "unmapped"])
            found = cast(list[list[str | None]], reads.execute()) if ids else []
        # A resource whose first ingest never finished (marked "new") is not known yet.
        return {
            rid: h
            for rid, (h, mark) in zip(ids, found, strict=True)
            if h is not None and mark != "new"
        }

    @_translate
    def delete_resource(self, source: str, resource_type: str, resource_id: str) -> bool:
        k = self.keys
        key, member = (
            k.resource(source, resource_type, resource_id),
            f"{resource_type}/{resource_id}",
        )

        def body(pipe: Pipeline) -> Finish[bool]:
            old_hash, old_patient, old_idents, old_terms = cast(
                list[str | None], pipe.hmget(key, ["hash", "patient", "identifiers", "terms"])
            )
            if old_hash is None:
                return lambda _: False
            pipe.multi()
            record = f"{source}/{resource_id}"
            for ident in json.loads(old_idents or "[]"):
                pipe.srem(k.patient_identifier(ident), record)
            if terms := json.loads(old_terms or "[]"):
                pipe.zrem(k.patient_terms, *(_term_member(t, record) for t in terms))
            pipe.hincrby(k.resource_counts(source), resource_type, -1)
            pipe.zrem(k.resource_ids(source, resource_type), resource_id)
            if old_patient is not None:
                pipe.zrem(k.resource_patient(source, old_patient), member)
            pipe.delete(key)
            return lambda _: True

        return self._atomic(body, key)

    @_translate
    def get_resource(
        self, source: str, resource_type: str, resource_id: str
    ) -> StoredResource | None:
        h = self._hash(self._redis, self.keys.resource(source, resource_type, resource_id))
        return _resource(h) if h else None

    @_translate
    def get_resources(self, keys: Sequence[tuple[str, str, str]]) -> list[StoredResource | None]:
        with self._redis.pipeline(transaction=False) as reads:
            for key in keys:
                reads.hgetall(self.keys.resource(*key))
            found = cast(list[dict[str, str]], reads.execute()) if keys else []
        return [_resource(h) if h else None for h in found]

    @_translate
    def resources_for_patient(
        self, source: str, patient: str, resource_type: str | None = None
    ) -> list[StoredResource]:
        # One script (one round trip, atomic): the index members, then each resource's hash.
        # "<type>/" up to, not including, "<type>0": '0' is the character after '/'.
        index = self.keys.resource_patient(source, patient)
        low, high = (
            ("-", "+") if resource_type is None else (f"[{resource_type}/", f"({resource_type}0")
        )
        prefix = self.keys.resource(source, "", "")[:-2]  # "T:res:<source>", parts escaped
        reply = self._redis.eval(_PATIENT_RESOURCES, 1, index, low, high, prefix)
        return [_resource(h) for h in _flat_hashes(cast(list[list[str]], reply)) if h]

    @_translate
    def patient_reads(
        self, source: str, patient_id: str, fact_kind: str, trusted: Sequence[str]
    ) -> PatientReads | None:
        k = self.keys
        patient = f"Patient/{patient_id}"
        keys = [
            k.resource(source, "Patient", patient_id),
            k.facts(fact_kind),
            k.resource_patient(source, patient),
            k.tasks_patient(patient),
        ]
        prefixes = [k.resource(source, "", "")[:-2], k.task(""), k.patient_identifier("")]
        reply = self._redis.eval(_PATIENT_READS, len(keys), *keys, *prefixes, *trusted)
        if not reply:
            return None
        first, facts, idents, resources, tasks = cast(list[Any], reply)
        found = [_resource(h) for h in _flat_hashes([first, *resources]) if h]
        (pairs,) = _flat_hashes([facts])
        return PatientReads(
            patient=found[0],
            facts=_facts(pairs),
            identifiers={
                cast(tuple[str, str], tuple(key.split("|", 1))): _records(members)
                for key, members in zip(idents[::2], idents[1::2], strict=True)
            },
            resources=found[1:],
            tasks=[_task(h) for h in _hashes(tasks) if h],
        )

    @_translate
    def _resource_page(
        self, source: str, resource_type: str, after: str | None
    ) -> tuple[list[StoredResource], str | None]:
        """Up to 500 resources of one source and type whose ids sort after `after`, and the
        last id read (None when there are no more)."""
        k = self.keys
        low = "-" if after is None else f"({after}"
        index = k.resource_ids(source, resource_type)
        ids = cast(list[str], self._redis.zrangebylex(index, low, "+", start=0, num=500))
        with self._redis.pipeline(transaction=True) as pipe:
            for rid in ids:
                pipe.hgetall(k.resource(source, resource_type, rid))
            hashes = pipe.execute() if ids else []
        return [_resource(h) for h in hashes if h], (ids[-1] if ids else None)

    def _sources(self, client: Pipeline | redis.Redis) -> list[str]:
        return sorted(cast(set[str], client.smembers(self.keys.sources)))

    @_translate
    def _translated_sources(self) -> list[str]:
        return self._sources(self._redis)

    def iter_resources(
        self, resource_type: str, source: str | None = None
    ) -> Iterator[StoredResource]:
        # Keyset paging (after the last id seen), like SQLite's: resources stored meanwhile
        # are neither skipped nor repeated because of the ones before them.
        for src in [source] if source is not None else self._translated_sources():
            page, after = self._resource_page(src, resource_type, None)
            while after is not None:
                yield from page
                page, after = self._resource_page(src, resource_type, after)

    @_translate
    def resource_counts(self, source: str | None = None) -> dict[str, int]:
        def body(pipe: Pipeline) -> Finish[dict[str, int]]:
            sources = [source] if source is not None else self._sources(pipe)
            pipe.multi()
            for s in sources:
                pipe.hgetall(self.keys.resource_counts(s))

            def finish(replies: list[Any]) -> dict[str, int]:
                counts: dict[str, int] = {}
                for per_type in replies:
                    for rtype, n in per_type.items():
                        counts[rtype] = counts.get(rtype, 0) + int(n)
                return {rtype: n for rtype, n in counts.items() if n}  # deletions leave zeros

            return finish

        return self._atomic(body, self.keys.sources)

    # -- cursors -----------------------------------------------------------------------------
    @_translate
    def get_cursor(self, source: str, resource_type: str) -> str | None:
        return cast(str | None, self._redis.hget(self.keys.cursor(source, resource_type), "value"))

    @_translate
    def set_cursor(self, source: str, resource_type: str, value: str | None) -> None:
        key = self.keys.cursor(source, resource_type)
        if value is None:
            self._redis.delete(key)
        else:
            now = _ts(datetime.now(UTC))
            self._redis.hset(key, mapping={"value": value, "updated_at": cast(str, now)})

    # -- quarantine --------------------------------------------------------------------------
    # -- audit trail -------------------------------------------------------------------------
    @_translate
    def add_audit(self, record: AuditRecord) -> int:
        k = self.keys
        indexes = [
            k.audit_index(f, v)
            for f, v in _audit_indexed(record.agent, record.patient, record.task_id)
        ]
        keys = [k.audit_seq, k.audit, k.audit_index(), *indexes]
        # One script: every history read writes one, before the history is sent.
        return int(self._redis.eval(_ADD_AUDIT, len(keys), *keys, json.dumps(record.to_json())))

    @_translate
    def list_audit(
        self, filters: AuditFilter | None = None, limit: int = 100, cursor: int | None = None
    ) -> tuple[list[AuditRecord], int | None]:
        f = filters or AuditFilter()
        # Walk the narrowest index newest first; the other parts are checked on each record.
        field, value = next(iter(_audit_indexed(f.agent, f.patient, f.task_id)), (None, None))
        index = self.keys.audit_index(field, value)
        top: str = f"({cursor}" if cursor is not None else "+inf"
        found: list[AuditRecord] = []
        chunk = max(limit + 1, 100)
        while len(found) <= limit:
            ids = cast(
                list[str], self._redis.zrevrangebyscore(index, top, "-inf", start=0, num=chunk)
            )
            if not ids:
                break
            bodies = cast(list[str | None], self._redis.hmget(self.keys.audit, ids))
            for record_id, body in zip(ids, bodies, strict=True):
                if body is None:
                    continue
                record = AuditRecord.from_json(json.loads(body), int(record_id))
                if f.matches(record):
                    found.append(record)
            top = f"({ids[-1]}"
        records = found[:limit]
        return records, records[-1].id if len(found) > limit and records else None

    @_translate
    def add_quarantine(self, entry: QuarantineEntry) -> None:
        # Entries without an id are keyed by their content, so none overwrites another.
        key = (
            entry.resource_id
            or "(no id) "
            + hashlib.sha256(json.dumps(entry.body, sort_keys=True).encode()).hexdigest()[:16]
        )
        member = _quarantine_member(entry.source, entry.resource_type, key)
        value = json.dumps(
            {
                "source": entry.source,
                "resource_type": entry.resource_type,
                "resource_id": entry.resource_id,
                "version_id": entry.version_id,
                "issues": entry.issues,
                "body": entry.body,
                "at": _ts(entry.at),
            }
        )
        score = -_micros(entry.at)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.quarantine, member, value)
            pipe.zadd(self.keys.quarantine_by_time(), {member: score})
            pipe.zadd(self.keys.quarantine_by_time(entry.source), {member: score})
            pipe.execute()

    @_translate
    def list_quarantine(
        self, source: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[QuarantineEntry], int]:
        index = self.keys.quarantine_by_time(source)

        def body(pipe: Pipeline) -> Finish[tuple[list[QuarantineEntry], int]]:
            total = pipe.zcard(index)
            members = cast(list[str], pipe.zrange(index, offset, _stop(offset, limit)))
            members = members if limit else []
            pipe.multi()
            if members:
                pipe.hmget(self.keys.quarantine, members)

            def finish(replies: list[Any]) -> tuple[list[QuarantineEntry], int]:
                values = replies[0] if replies else []
                entries = []
                for raw in values:
                    e = json.loads(raw)
                    e["at"] = datetime.fromisoformat(e["at"])
                    entries.append(QuarantineEntry(**e))
                return entries, total

            return finish

        return self._atomic(body, index)

    @_translate
    def release_quarantine(self, source: str, resource_type: str, resource_id: str) -> None:
        self.release_quarantines(source, [(resource_type, resource_id)])

    @_translate
    def release_quarantines(self, source: str, keys: Sequence[tuple[str, str]]) -> None:
        # Blind deletes: one MULTI of three variadic commands for the whole page.
        members = list(dict.fromkeys(_quarantine_member(source, t, i) for t, i in keys))
        if not members:
            return
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.quarantine, *members)
            pipe.zrem(self.keys.quarantine_by_time(), *members)
            pipe.zrem(self.keys.quarantine_by_time(source), *members)
            pipe.execute()

    # -- tasks -------------------------------------------------------------------------------
    def _indexes(self, task: Task) -> list[str]:
        """The sorted sets a task is listed in."""
        k = self.keys
        keys = [
            k.tasks_all,
            k.tasks_queue(task.queue),
            k.tasks_queue_status(task.queue, task.status.value),
            k.tasks_status(task.status.value),
            k.tasks_rule(task.rule_id),
        ]
        if task.assignee:
            keys.append(k.tasks_assignee(task.assignee))
        if task.patient:
            keys.append(k.tasks_patient(task.patient))
        return keys

    def _task_writes(
        self, old: Task | None, new: Task, fields: dict[str, str] | None = None
    ) -> list[_Command]:
        """The commands that replace `old` (None: no such key) by `new`, indexes included;
        `fields` are `new`'s hash fields when the caller has them already."""
        member, indexes = _sort_member(new), self._indexes(new)
        key = self.keys.task(new.id)
        writes: list[_Command] = []
        if old is not None:
            old_member = _sort_member(old)
            writes += [
                ("ZREM", index, old_member)
                for index in self._indexes(old)
                if index not in indexes or old_member != member
            ]
            writes.append(("DEL", key))
        flat = fields if fields is not None else _task_fields(new)
        writes.append(("HSET", key, *(x for pair in flat.items() for x in pair)))
        writes += [("ZADD", index, "0", member) for index in indexes]
        writes.append(("SADD", self.keys.queues, new.queue))
        return writes

    def _queue_task(self, pipe: Pipeline, old: Task | None, new: Task) -> None:
        """Queue (after MULTI) the writes that replace `old` by `new`, indexes included."""
        for command in self._task_writes(old, new):
            _command(pipe, *command)

    def _read_task(self, pipe: Pipeline | redis.Redis, task_id: str) -> Task | None:
        h = self._hash(pipe, self.keys.task(task_id))
        return _task(h) if h else None

    @_translate
    def upsert_task(self, draft: TaskDraft, now: datetime) -> TaskUpsert:
        return self.upsert_tasks([draft], now)[0]

    @_translate
    def upsert_tasks(self, drafts: Sequence[TaskDraft], now: datetime) -> list[TaskUpsert]:
        # Compare-and-set per task, a page at a time: read the page's task hashes in one
        # pipelined round trip, work out each upsert, then one script checks each task's hash
        # is still what was read and applies that task's writes (hash, indexes, history
        # event); a task changed meanwhile is skipped and reported. Only those are read and
        # worked out again, so a concurrent change costs a retry of its own task, not of the
        # page (one WATCH over the page would abort the whole EXEC), and no update is lost.
        results: list[TaskUpsert | None] = [None] * len(drafts)
        todo = list(range(len(drafts)))
        for _ in range(self.max_attempts):
            if todo:
                todo = self._upsert_round(drafts, todo, now, results)
            if not todo:
                return cast(list[TaskUpsert], results)
            self.conflicts += len(todo)
        raise StoreError(f"gave up after {self.max_attempts} conflicting concurrent changes")

    def _upsert_round(
        self,
        drafts: Sequence[TaskDraft],
        todo: list[int],
        now: datetime,
        results: list[TaskUpsert | None],
    ) -> list[int]:
        """One read + compare-and-set round over `drafts[i]` for i in `todo` (in order);
        fills `results` and returns the positions to try again (their task changed)."""
        ids = list(dict.fromkeys(drafts[i].id for i in todo))
        with self._redis.pipeline(transaction=False) as reads:
            for task_id in ids:
                reads.hgetall(self.keys.task(task_id))
            read = cast(list[dict[str, str]], reads.execute())
        # Per task: its hash as the next write must find it, and the task it holds.
        state: dict[str, tuple[dict[str, str], Task | None]] = {
            task_id: (h, _task(h) if h else None) for task_id, h in zip(ids, read, strict=True)
        }
        guarded: list[_Guarded] = []
        for i in todo:
            draft = drafts[i]
            expected, current = state[draft.id]
            detail = {"focus_version": draft.focus_version}
            if current is None:
                task = Task.from_draft(draft, now)
                event = TaskEvent(
                    task.id, now, "bridge", "created", None, task.status.value, detail
                )
                results[i] = TaskUpsert(task, created=True, updated=False)
            else:
                refreshed = current.refreshed(draft, now)
                if refreshed is None:  # one hash, read atomically: nothing to write or check
                    results[i] = TaskUpsert(current, created=False, updated=False)
                    continue
                task = refreshed
                event = TaskEvent(task.id, now, "bridge", "refreshed", None, None, detail)
                results[i] = TaskUpsert(task, created=False, updated=True)
            fields = _task_fields(task)
            writes = self._task_writes(current, task, fields)
            writes.append(("RPUSH", self.keys.task_events(task.id), _event_json(event)))
            guarded.append(_Guarded(i, self.keys.task(task.id), expected, writes))
            state[draft.id] = (fields, task)
        failed = self._apply_guarded(guarded)
        # A draft after a failed one of the same task was worked out on top of it: again too.
        first_failed: dict[str, int] = {}
        for i in failed:
            first_failed.setdefault(drafts[i].id, i)
        return [i for i in todo if first_failed.get(drafts[i].id, len(drafts)) <= i]

    def _apply_guarded(self, guarded: Sequence[_Guarded]) -> list[int]:
        """Run `_GUARDED_WRITES` over `guarded` in order, at most `_GUARDED_CHUNK` a script;
        the positions of those whose key no longer held what they expected."""
        failed: list[int] = []
        for start in range(0, len(guarded), _GUARDED_CHUNK):
            chunk = guarded[start : start + _GUARDED_CHUNK]
            keys: dict[str, int] = {}

            def slot(key: str, keys: dict[str, int] = keys) -> str:
                return str(keys.setdefault(key, len(keys) + 1))

            args: list[str] = [str(len(chunk))]
            for g in chunk:
                args += [slot(g.key), str(len(g.expected))]
                args += [x for pair in g.expected.items() for x in pair]
                args.append(str(len(g.writes)))
                for name, key, *rest in g.writes:
                    args += [name, slot(key), str(len(rest)), *rest]
            reply = self._redis.eval(_GUARDED_WRITES, len(keys), *keys, *args)
            failed += [chunk[int(n) - 1].position for n in cast(list[int], reply)]
        return failed

    @_translate
    def get_task(self, task_id: str) -> Task | None:
        return self._read_task(self._redis, task_id)

    @_translate
    def get_tasks(self, task_ids: Sequence[str]) -> dict[str, Task]:
        # One pipelined round trip; each task's hash is read atomically, as get_task reads it.
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        with self._redis.pipeline(transaction=False) as reads:
            for task_id in ids:
                reads.hgetall(self.keys.task(task_id))
            hashes = cast(list[dict[str, str]], reads.execute())
        return {task_id: _task(h) for task_id, h in zip(ids, hashes, strict=True) if h}

    @_translate
    def rules_with_tasks(
        self,
        source: str,
        focus_type: str,
        rule_ids: Sequence[str],
        focus_ids: Sequence[str] | None = None,
    ) -> set[str]:
        # The rules with any task at all (`tasks:rule:<rule>`, one EXISTS each, pipelined): a
        # rule makes tasks on one resource type, but of every source, and on any resource (no
        # index by focus), so this may name a rule whose tasks are all elsewhere, which only
        # costs ingest its shortcut. Read live, never cached: another process may have made
        # the first task a moment ago.
        wanted = list(dict.fromkeys(rule_ids))
        if not wanted:
            return set()
        with self._redis.pipeline(transaction=False) as reads:
            for rule_id in wanted:
                reads.exists(self.keys.tasks_rule(rule_id))
            found = cast(list[int], reads.execute())
        return {rule_id for rule_id, n in zip(wanted, found, strict=True) if n}

    def _select(
        self, bases: list[str], narrow: list[str], offset: int, limit: int
    ) -> tuple[int, list[str]]:
        """Total and one page of index members from the union of `bases`, intersected with
        every key of `narrow` (a negative `limit`: every member from `offset`).

        One MULTI on a connection of its own: the scratch key never outlives it.
        """
        with self._redis.pipeline(transaction=True) as sel:
            index, scratch, setup = bases[0], None, 0
            if len(bases) > 1 or narrow:
                index = scratch = self.keys.temp(uuid.uuid4().hex)
                if len(bases) > 1:
                    sel.zunionstore(scratch, bases)
                    setup += 1
                if narrow:
                    sel.zinterstore(scratch, [scratch if len(bases) > 1 else bases[0], *narrow])
                    setup += 1
            sel.zcard(index)
            if limit:
                sel.zrange(index, offset, _stop(offset, limit))
            if scratch is not None:
                sel.delete(scratch)
            replies = sel.execute()
        members = replies[setup + 1] if limit else []
        return int(replies[setup]), members

    @_translate
    def _list_tasks(
        self, f: TaskFilter, limit: int, offset: int, after: TaskCursor | None
    ) -> TaskPage:
        queue, statuses, rule_id, kind, assignee = (
            f.queue,
            f.statuses,
            f.rule_id,
            f.kind,
            f.assignee,
        )
        patient, label, due_after, due_before = f.patient, f.label, f.due_after, f.due_before
        k = self.keys
        if statuses:
            unique = [TaskStatus(s).value for s in dict.fromkeys(statuses)]
            bases = [
                k.tasks_queue_status(queue, s) if queue is not None else k.tasks_status(s)
                for s in unique
            ]
        else:
            bases = [k.tasks_queue(queue) if queue is not None else k.tasks_all]
        narrow = [
            key(value)
            for key, value in (
                (k.tasks_rule, rule_id),
                (k.tasks_assignee, assignee),
                (k.tasks_patient, patient),
            )
            if value is not None
        ]
        if bases == [k.tasks_all] and narrow:
            # Every task is in `all`: read the narrower index itself (a patient's tasks are a
            # ZRANGE of a few members, not a ZINTERSTORE with every task into a scratch key).
            bases, narrow = narrow[:1], narrow[1:]
        # Kind, label and due range have no index: those filters read the candidates' hashes.
        rest = TaskFilter(kind=kind, label=label, due_after=due_after, due_before=due_before)
        unindexed = rest != TaskFilter()
        start = _position(after.priority, after.due, after.id) if after is not None else None

        def window(members: list[str]) -> tuple[list[str], bool]:
            later = [m for m in members if start is None or m > start]
            return later[offset : offset + limit], offset + limit < len(later)

        if start is None and not unindexed and len(bases) == 1 and not narrow:
            # The common listings (a queue and status, a patient's tasks): one index, read
            # with its task hashes by one script (one round trip, atomic) instead of WATCH,
            # a MULTI and an EXEC.
            prefix = k.task("")  # "T:task:"
            stop, read = _stop(offset, limit), "1" if limit else "0"
            reply = self._redis.eval(_INDEX_PAGE, 1, bases[0], offset, stop, prefix, read)
            total, found = cast(tuple[int, list[str]], reply)
            tasks = [_task(h) for h in _hashes(found) if h]
            return TaskPage(tasks, int(total), offset + len(found) < int(total))

        def body(pipe: Pipeline) -> Finish[TaskPage]:
            if start is None and not unindexed:
                total, members = self._select(bases, narrow, offset, limit)
                more = offset + len(members) < total
            else:
                total, members = self._select(bases, narrow, 0, -1)
                if not unindexed:
                    members, more = window(members)
            pipe.multi()
            if members:
                keys = [k.task(m.rsplit(":", 1)[1]) for m in members]
                pipe.eval(_HASHES_AS_JSON, len(keys), *keys)
            if not unindexed:
                return lambda replies: TaskPage(
                    [_task(h) for h in _hashes(replies[0] if members else []) if h], total, more
                )

            def finish(replies: list[Any]) -> TaskPage:
                found = zip(members, _hashes(replies[0] if members else []), strict=True)
                tasks = {m: _task(h) for m, h in found if h}
                kept = [m for m, t in tasks.items() if rest.matches(t)]
                page, more = window(kept)
                return TaskPage([tasks[m] for m in page], len(kept), more)

            return finish

        return self._atomic(body, *bases, *narrow)

    @_translate
    def queue_counts(self) -> dict[str, dict[str, int]]:
        statuses = [s.value for s in TaskStatus]

        def body(pipe: Pipeline) -> Finish[dict[str, dict[str, int]]]:
            queues = sorted(cast(set[str], pipe.smembers(self.keys.queues)))
            pipe.multi()
            for q in queues:
                for s in statuses:
                    pipe.zcard(self.keys.tasks_queue_status(q, s))

            def finish(replies: list[Any]) -> dict[str, dict[str, int]]:
                counts: dict[str, dict[str, int]] = {}
                cells = iter(replies)
                for q in queues:
                    for s in statuses:
                        n = next(cells)
                        if n:
                            counts.setdefault(q, {})[s] = n
                return counts

            return finish

        return self._atomic(body, self.keys.queues)

    @_translate
    def update_task(self, task_id: str, change: Callable[[Task], TaskChange]) -> Task:
        k = self.keys

        def body(pipe: Pipeline) -> Finish[Task]:
            current = self._read_task(pipe, task_id)
            if current is None:
                raise TaskNotFound(f"no task {task_id}")
            result = change(current)
            if result.task.id != task_id:
                raise ValueError(f"a change to task {task_id} returned task {result.task.id}")
            # Serialise everything first: a payload that is not JSON fails before any write.
            event = _event_json(result.event)
            payloads = [json.dumps(d.payload) for d in result.outbox]
            ids: list[int] = []
            has_head: dict[str, bool] = {}
            if result.outbox:
                pending = {d.task_id: k.outbox_pending(d.task_id) for d in result.outbox}
                _watch(pipe, *pending.values())
                has_head = {t: bool(pipe.llen(key)) for t, key in pending.items()}
                last = pipe.incrby(k.outbox_seq, len(result.outbox))
                ids = list(range(last - len(result.outbox) + 1, last + 1))
            at, score = cast(str, _ts(result.event.at)), _micros(result.event.at)
            pipe.multi()
            self._queue_task(pipe, current, result.task)
            pipe.rpush(k.task_events(result.event.task_id), event)
            for entry_id, draft, payload in zip(ids, result.outbox, payloads, strict=True):
                fields = {
                    "id": str(entry_id),
                    "task_id": draft.task_id,
                    "source": draft.source,
                    "action": draft.action,
                    "payload": payload,
                    "status": OutboxStatus.PENDING.value,
                    "attempts": "0",
                    "next_attempt_at": at,
                    "created_at": at,
                }
                _hset(pipe, k.outbox_entry(entry_id), fields)
                for index in (
                    k.outbox_all,
                    k.outbox_status(OutboxStatus.PENDING.value),
                    k.outbox_task(draft.task_id),
                ):
                    pipe.zadd(index, {str(entry_id): entry_id})
                pipe.rpush(k.outbox_pending(draft.task_id), str(entry_id))
                if not has_head[draft.task_id]:
                    pipe.zadd(k.outbox_due, {str(entry_id): score})
                    self._announce(pipe, str(entry_id), draft.task_id, 1)
                    has_head[draft.task_id] = True
            return lambda _: result.task

        return self._atomic(body, k.task(task_id))

    @_translate
    def set_task_mirror(self, task_id: str, mirror_id: str, mirror_version: str | None) -> None:
        key = self.keys.task(task_id)

        def body(pipe: Pipeline) -> Finish[None]:
            exists = pipe.exists(key)
            pipe.multi()
            if exists:
                pipe.hset(key, "mirror_id", mirror_id)
                if mirror_version is None:
                    pipe.hdel(key, "mirror_version")
                else:
                    pipe.hset(key, "mirror_version", mirror_version)
            return lambda _: None

        self._atomic(body, key)

    @_translate
    def task_history(self, task_id: str) -> list[TaskEvent]:
        raw = cast(list[str], self._redis.lrange(self.keys.task_events(task_id), 0, -1))
        return [_event(e) for e in raw]

    @_translate
    def task_histories(self, task_ids: Sequence[str]) -> dict[str, list[TaskEvent]]:
        ids = list(dict.fromkeys(task_ids))
        out: dict[str, list[TaskEvent]] = {}
        for start in range(0, len(ids), 1000):  # one round trip per thousand tasks
            chunk = ids[start : start + 1000]
            with self._redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.lrange(self.keys.task_events(task_id), 0, -1)
                replies = cast(list[list[str]], pipe.execute())
            for task_id, raw in zip(chunk, replies, strict=True):
                out[task_id] = [_event(e) for e in raw]
        return out

    # -- outbox ------------------------------------------------------------------------------
    def _read_entries(self, index: str, pick: Callable[[Pipeline], list[int]]) -> list[OutboxEntry]:
        """Entries whose ids `pick` reads from `index` (watched), fetched in one EXEC."""

        def body(pipe: Pipeline) -> Finish[list[OutboxEntry]]:
            ids = pick(pipe)
            pipe.multi()
            for entry_id in ids:
                pipe.hgetall(self.keys.outbox_entry(entry_id))
            return lambda replies: [_entry(h) for h in replies if h]

        return self._atomic(body, index)

    @_translate
    def due_outbox(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        # `outbox:due` holds only the head of each task's pending list: the oldest pending
        # entry per task. Sorting by id after the time filter matches SQLite's order.
        def pick(pipe: Pipeline) -> list[int]:
            heads = cast(list[str], pipe.zrangebyscore(self.keys.outbox_due, "-inf", _micros(now)))
            ids = sorted(int(m) for m in heads)
            return ids if limit < 0 else ids[:limit]

        return self._read_entries(self.keys.outbox_due, pick)

    def _outbox_change(
        self,
        entry_id: int,
        fields: dict[str, str],
        *,
        drop: Sequence[str] = (),
        status: OutboxStatus | None = None,
        next_attempt_at: datetime | None = None,
        count: bool = True,
        only_from: Sequence[OutboxStatus] | None = None,
    ) -> bool:
        """Count an attempt on an entry, set `fields`; a final `status` leaves the pending list.

        Keeps `outbox:due` pointing at the head of the task's pending list, with its time.
        `count=False` leaves the attempts alone; `only_from` restricts the statuses the entry
        may be in (otherwise nothing changes and the result is False).
        """
        k, member = self.keys, str(entry_id)
        key = k.outbox_entry(entry_id)

        def body(pipe: Pipeline) -> Finish[bool]:
            entry = self._hash(pipe, key)
            if not entry or (
                only_from is not None and entry["status"] not in {s.value for s in only_from}
            ):
                return lambda _: False
            pending_key = k.outbox_pending(entry["task_id"])
            _watch(pipe, pending_key)
            pending = cast(list[str], pipe.lrange(pending_key, 0, -1))
            leaves = status is not None and member in pending
            remaining = [p for p in pending if p != member] if leaves else pending
            head, new_head = pending[0] if pending else None, remaining[0] if remaining else None
            new_score: int | None = None
            new_round = 0
            if new_head is not None and new_head != head:
                _watch(pipe, k.outbox_entry(new_head))
                next_at, old_round = cast(
                    list[str | None],
                    pipe.hmget(k.outbox_entry(new_head), ["next_attempt_at", "round"]),
                )
                new_score = _micros(datetime.fromisoformat(cast(str, next_at)))
                new_round = int(old_round or 0) + 1
            elif new_head == member and next_attempt_at is not None:
                new_score = _micros(next_attempt_at)
            pipe.multi()
            if count:
                pipe.hincrby(key, "attempts", 1)
            _hset(pipe, key, fields)
            if drop:
                pipe.hdel(key, *drop)
            if status is not None and status.value != entry["status"]:
                pipe.zrem(k.outbox_status(entry["status"]), member)
                pipe.zadd(k.outbox_status(status.value), {member: entry_id})
            if leaves:
                pipe.lrem(pending_key, 0, member)
            if head is not None and head != new_head:
                pipe.zrem(k.outbox_due, head)
                pipe.zrem(k.outbox_scheduled, head)
            if new_head is not None and new_score is not None:
                pipe.zadd(k.outbox_due, {new_head: new_score})
                if new_round:  # a new head: announce it now (it may be due already)
                    self._announce(pipe, new_head, entry["task_id"], new_round)
                else:  # the head waits for its retry time, then is announced again
                    pipe.zadd(k.outbox_scheduled, {new_head: new_score})
            return lambda _: True

        return self._atomic(body, key)

    @_translate
    def outbox_delivered(self, entry_id: int, now: datetime) -> None:
        fields = {"status": OutboxStatus.DELIVERED.value, "delivered_at": cast(str, _ts(now))}
        self._outbox_change(entry_id, fields, drop=["last_error"], status=OutboxStatus.DELIVERED)

    @_translate
    def outbox_retry(self, entry_id: int, error: str, next_attempt_at: datetime) -> None:
        fields = {"last_error": error, "next_attempt_at": cast(str, _ts(next_attempt_at))}
        self._outbox_change(entry_id, fields, next_attempt_at=next_attempt_at)

    @_translate
    def outbox_dead(self, entry_id: int, error: str) -> None:
        fields = {"status": OutboxStatus.DEAD.value, "last_error": error}
        self._outbox_change(entry_id, fields, status=OutboxStatus.DEAD)

    @_translate
    def list_outbox(
        self, status: OutboxStatus | None = None, task_id: str | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        k = self.keys
        if task_id is not None:
            index = k.outbox_task(task_id)
        elif status is not None:
            index = k.outbox_status(status.value)
        else:
            index = k.outbox_all

        def pick(pipe: Pipeline) -> list[int]:
            # A task's own entries are few: read them all and filter by status afterwards.
            stop = -1 if task_id is not None else _stop(0, limit)
            return [int(m) for m in cast(list[str], pipe.zrange(index, 0, stop))] if limit else []

        entries = self._read_entries(index, pick)
        if task_id is not None and status is not None:
            entries = [e for e in entries if e.status is status]
        return entries if limit < 0 else entries[:limit]

    @_translate
    def get_outbox(self, entry_id: int) -> OutboxEntry | None:
        h = self._hash(self._redis, self.keys.outbox_entry(entry_id))
        return _entry(h) if h else None

    @_translate
    def outbox_park(
        self, entry_id: int, status: OutboxStatus, error: str, detail: dict[str, Any]
    ) -> None:
        if status not in (OutboxStatus.DEAD, OutboxStatus.CONFLICT):
            raise ValueError(f"an entry is parked as dead or conflict, not {status.value}")
        fields = {"status": status.value, "last_error": error, "detail": json.dumps(detail)}
        self._outbox_change(entry_id, fields, status=status)

    @_translate
    def outbox_discard(self, entry_id: int, reason: str) -> bool:
        fields = {"status": OutboxStatus.DISCARDED.value, "last_error": reason}
        return self._outbox_change(
            entry_id,
            fields,
            status=OutboxStatus.DISCARDED,
            count=False,
            only_from=(OutboxStatus.PENDING, OutboxStatus.DEAD, OutboxStatus.CONFLICT),
        )

    @_translate
    def outbox_requeue(self, entry_id: int, now: datetime) -> bool:
        k, member = self.keys, str(entry_id)
        key = k.outbox_entry(entry_id)

        def body(pipe: Pipeline) -> Finish[bool]:
            entry = self._hash(pipe, key)
            if entry.get("status") not in (OutboxStatus.DEAD.value, OutboxStatus.CONFLICT.value):
                return lambda _: False
            pending_key = k.outbox_pending(entry["task_id"])
            _watch(pipe, pending_key)
            pending = cast(list[str], pipe.lrange(pending_key, 0, -1))
            # Back in its place by id: a task's writes still go out oldest first.
            ordered = sorted({*pending, member}, key=int)
            head, new_head = (pending[0] if pending else None), ordered[0]
            pipe.multi()
            _hset(
                pipe,
                key,
                {
                    "status": OutboxStatus.PENDING.value,
                    "attempts": "0",
                    "next_attempt_at": cast(str, _ts(now)),
                },
            )
            pipe.zrem(k.outbox_status(entry["status"]), member)
            pipe.zadd(k.outbox_status(OutboxStatus.PENDING.value), {member: entry_id})
            pipe.delete(pending_key)
            pipe.rpush(pending_key, *ordered)
            if new_head != head:  # then the new head is this entry
                if head is not None:
                    pipe.zrem(k.outbox_due, head)
                    pipe.zrem(k.outbox_scheduled, head)
                pipe.zadd(k.outbox_due, {new_head: _micros(now)})
                self._announce(pipe, member, entry["task_id"], int(entry.get("round", 0)) + 1)
            return lambda _: True

        return self._atomic(body, key)

    # -- outbox claims: a Redis Stream with one consumer group --------------------------------
    def _announce(self, pipe: Pipeline, entry_id: str, task_id: str, round_: int) -> None:
        """Queue (after MULTI) the announcement that head `entry_id` may be delivered now."""
        pipe.hset(self.keys.outbox_entry(entry_id), "round", str(round_))
        fields = {"entry": entry_id, "task": task_id, "round": str(round_)}
        pipe.xadd(self.keys.outbox_stream, cast(dict[Any, Any], fields))

    def _ensure_group(self) -> None:
        """Create the consumer group if it is missing; its creator has the pending heads that
        were never announced (written before streams) announced, or every pending head when
        the stream itself was missing."""
        k = self.keys
        keys = [k.outbox_stream, k.outbox_scheduled, k.outbox_due]
        self._redis.eval(_CREATE_GROUP, len(keys), *keys, OUTBOX_GROUP, k.outbox_entry(""))
        self._group_ready = True

    def _grouped(self, call: Callable[[], _R]) -> _R:
        """Run a consumer-group command, creating the group first when it is missing."""
        if not self._group_ready:
            self._ensure_group()
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        self._ensure_group()
        return call()

    def _read_group(self, consumer: str, limit: int) -> list[tuple[str, dict[str, str]]]:
        """Messages for `consumer`: first those idle past the visibility timeout in another
        consumer's pending list (XAUTOCLAIM), then new ones (XREADGROUP)."""
        stream = self.keys.outbox_stream
        found: list[tuple[str, dict[str, str]]] = []
        start = "0-0"
        for _ in range(10):  # each XAUTOCLAIM looks at up to 10 x count pending entries

            def reclaim(at: str = start, count: int = limit - len(found)) -> list[Any]:
                return self._redis.xautoclaim(
                    stream, OUTBOX_GROUP, consumer, self._idle_ms, at, count=count
                )

            reply = self._grouped(reclaim)
            start = cast(str, reply[0])
            found += [(m, f) for m, f in cast(list[tuple[str, Any]], reply[1]) if f]
            if start == "0-0" or len(found) >= limit:
                break
        if len(found) < limit:
            count = limit - len(found)

            def read() -> list[Any]:
                streams: dict[Any, Any] = {stream: ">"}
                reply = self._redis.xreadgroup(OUTBOX_GROUP, consumer, streams, count=count)
                return cast(list[Any], reply or [])

            for _stream, messages in self._grouped(read):
                found += [(m, f) for m, f in cast(list[tuple[str, Any]], messages) if f]
        return found

    def _check_claims(
        self, messages: list[tuple[str, dict[str, str]]], now: datetime
    ) -> list[OutboxClaim]:
        """The claims the messages stand for, checked in one script: a stale message (its
        entry left pending, is not its task's head or was announced again since) is only
        acknowledged, and an entry that is not due yet goes back to wait for its time."""
        k = self.keys
        keys, args = [k.outbox_stream, k.outbox_scheduled, k.outbox_due], [OUTBOX_GROUP]
        args.append(str(_micros(now)))
        for message_id, fields in messages:
            entry_id = fields.get("entry", "")
            keys += [k.outbox_entry(entry_id), k.outbox_pending(fields.get("task", ""))]
            args += [message_id, entry_id, fields.get("round", "")]
        replies = cast(list[list[str]], self._redis.eval(_CHECK_CLAIMS, len(keys), *keys, *args))
        claims = []
        for (message_id, _), flat in zip(messages, replies, strict=True):
            if flat:
                claims.append(
                    OutboxClaim(_entry(dict(zip(flat[::2], flat[1::2], strict=True))), message_id)
                )
        return claims

    @_translate
    def claim_outbox(self, consumer: str, now: datetime, limit: int = 100) -> list[OutboxClaim]:
        k = self.keys
        if not self._group_ready:
            self._ensure_group()
        # Heads whose retry time has come are announced again first (atomically, in Lua).
        keys = [k.outbox_scheduled, k.outbox_stream]
        self._redis.eval(_PROMOTE, len(keys), *keys, _micros(now), 1000, k.outbox_entry(""))
        messages = self._read_group(consumer, limit)
        return self._check_claims(messages, now) if messages else []

    @_translate
    def ack_outbox(self, claim: OutboxClaim) -> None:
        if claim.receipt is None:
            return
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.outbox_stream, OUTBOX_GROUP, claim.receipt)
            pipe.xdel(self.keys.outbox_stream, claim.receipt)
            pipe.execute()

    @_translate
    def touch_outbox(self, consumer: str, claims: Sequence[OutboxClaim]) -> int:
        receipts = [c.receipt for c in claims if c.receipt is not None]
        if not receipts:
            return len(claims)
        stream = self.keys.outbox_stream
        held = self._redis.eval(_TOUCH, 1, stream, OUTBOX_GROUP, consumer, *receipts)
        return int(cast(int, held)) + len(claims) - len(receipts)

    @_translate
    def outbox_consumer_done(self, consumer: str) -> None:
        try:
            self._redis.eval(_FORGET_CONSUMER, 1, self.keys.outbox_stream, OUTBOX_GROUP, consumer)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise

    # -- bulk reads and restore (for `store/migrate.py`) --------------------------------------
    @_translate
    def iter_cursors(self) -> Iterator[tuple[str, str, str]]:
        k = self.keys
        found = []
        for key in cast(Iterator[str], self._redis.scan_iter(match=k.cursor_pattern, count=500)):
            value = cast(str | None, self._redis.hget(key, "value"))
            if value is not None:
                found.append((*k.parse_cursor(key), value))
        return iter(sorted(found))

    @_translate
    def wipe(self) -> int:
        """Delete every key of this installation (the schema version is written again).

        :returns: how many keys were deleted.
        """
        deleted, batch = 0, []
        for key in cast(Iterator[str], self._redis.scan_iter(match=self.keys.pattern, count=500)):
            batch.append(key)
            if len(batch) == 500:
                deleted += int(self._redis.delete(*batch))
                batch = []
        if batch:
            deleted += int(self._redis.delete(*batch))
        self._redis.hsetnx(self.keys.meta, "schema_version", str(SCHEMA_VERSION))
        return deleted

    @_translate
    def restore_task(self, task: Task, events: Sequence[TaskEvent]) -> None:
        """Write a task exactly as given (id, version, timestamps) with its whole history,
        replacing any task of the same id (a migration step, not a coordinator action)."""
        k = self.keys

        def body(pipe: Pipeline) -> Finish[None]:
            current = self._read_task(pipe, task.id)
            pipe.multi()
            self._queue_task(pipe, current, task)
            pipe.delete(k.task_events(task.id))
            if events:
                pipe.rpush(k.task_events(task.id), *(_event_json(e) for e in events))
            return lambda _: None

        self._atomic(body, k.task(task.id))

    @_translate
    def restore_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        """Write outbox entries exactly as given (ids, statuses, attempts, errors, detail) into a
        store that holds none of their ids yet; rebuilds each task's pending list and the due
        set, and moves the id counter past the highest id."""
        k = self.keys
        by_task: dict[str, list[OutboxEntry]] = {}
        for e in entries:
            by_task.setdefault(e.task_id, []).append(e)
        for task_id, own in by_task.items():
            own.sort(key=lambda e: e.id)
            pending_key = k.outbox_pending(task_id)

            def body(
                pipe: Pipeline, own: list[OutboxEntry] = own, pk: str = pending_key
            ) -> Finish[None]:
                old = [int(m) for m in cast(list[str], pipe.lrange(pk, 0, -1))]
                fresh = [e.id for e in own if e.status is OutboxStatus.PENDING]
                pending = sorted({*old, *fresh})
                times = {e.id: e.next_attempt_at for e in own}
                pipe.multi()
                for e in own:
                    _hset(pipe, k.outbox_entry(e.id), _entry_fields(e))
                    for index in (
                        k.outbox_all,
                        k.outbox_status(e.status.value),
                        k.outbox_task(e.task_id),
                    ):
                        pipe.zadd(index, {str(e.id): e.id})
                if pending != old:
                    pipe.delete(pk)
                    pipe.rpush(pk, *(str(i) for i in pending))
                if pending and (not old or pending[0] != old[0]):
                    if old:
                        pipe.zrem(k.outbox_due, str(old[0]))
                        pipe.zrem(k.outbox_scheduled, str(old[0]))
                    pipe.zadd(k.outbox_due, {str(pending[0]): _micros(times[pending[0]])})
                    self._announce(pipe, str(pending[0]), own[0].task_id, 1)
                return lambda _: None

            self._atomic(body, pending_key)
        if entries:
            top = max(e.id for e in entries)
            self._redis.eval(_RAISE_COUNTER, 1, k.outbox_seq, str(top))

    @_translate
    def restore_audit(self, records: Sequence[AuditRecord]) -> None:
        """Write audit records with the ids they have (a migration step) and move the id
        counter past the highest, so records added later sort after them."""
        k = self.keys
        with self._redis.pipeline(transaction=True) as pipe:
            for record in records:
                if record.id is None:
                    raise ValueError("restore_audit needs records with their ids")
                rid = str(record.id)
                pipe.hset(k.audit, rid, json.dumps(record.to_json()))
                pipe.zadd(k.audit_index(), {rid: record.id})
                for field, value in _audit_indexed(record.agent, record.patient, record.task_id):
                    pipe.zadd(k.audit_index(field, value), {rid: record.id})
            pipe.execute()
        if records:
            top = max(cast(int, r.id) for r in records)
            self._redis.eval(_RAISE_COUNTER, 1, k.audit_seq, str(top))

    # -- leases and fenced writes (see `store/leases.py`) -------------------------------------
    @property
    def client(self) -> redis.Redis:
        """The redis-py client (for the lease manager, which shares this store's keys)."""
        return self._redis

    @_translate
    def ping(self) -> bool:
        """True when Redis answers (raises StoreError when it cannot be reached)."""
        return bool(self._redis.ping())

    @_translate
    def set_cursor_fenced(
        self, source: str, resource_type: str, value: str | None, lease: Lease
    ) -> bool:
        k = self.keys
        keys = [k.lease(lease.name), k.cursor(source, resource_type), k.fence(lease.name)]
        now = cast(str, _ts(datetime.now(UTC)))
        args = [lease.value, str(lease.token), value or "", now]
        return bool(self._redis.eval(_SET_CURSOR_FENCED, len(keys), *keys, *args))

    # -- patient identifiers -----------------------------------------------------------------
    @_translate
    def _index_patient_identifiers(self) -> None:
        """Build the identifier index once for keys written before it existed (idempotent:
        several processes opening at once only repeat the same SADDs)."""
        if self._redis.hget(self.keys.meta, "patient_identifier_index"):
            return
        for stored in self.iter_resources("Patient"):
            for ident in _patient_identifiers(stored.body):
                self._redis.sadd(
                    self.keys.patient_identifier(ident), f"{stored.source}/{stored.id}"
                )
        self._redis.hset(self.keys.meta, "patient_identifier_index", "1")

    @_translate
    def _index_patient_terms(self) -> None:
        """Build the search-term index once for Patients written before it existed
        (idempotent, like `_index_patient_identifiers`)."""
        if self._redis.hget(self.keys.meta, "patient_terms_index"):
            return
        for stored in self.iter_resources("Patient"):
            record = f"{stored.source}/{stored.id}"
            terms = patient_terms(stored.body)
            key = self.keys.resource(stored.source, "Patient", stored.id)
            members = [_term_member(t, record) for t in terms]
            if members:  # only while the Patient is still stored (a delete may have come)
                self._redis.eval(
                    _ADD_TERMS, 2, key, self.keys.patient_terms, json.dumps(terms), *members
                )
        self._redis.hset(self.keys.meta, "patient_terms_index", "1")

    @_translate
    def patients_with_term(self, term: str, prefix: bool) -> set[tuple[str, str]]:
        # Members are "<term>\0<record>": an exact term is the range of "<term>\0"; a prefix
        # the range up to "<prefix>\xff" (a byte no UTF-8 text holds). Bytes, so that redis-py
        # does not encode \xff as two UTF-8 bytes.
        low = term.encode() + (b"" if prefix else b"\0")
        members = cast(
            list[str],
            self._redis.zrangebylex(self.keys.patient_terms, b"[" + low, b"[" + low + b"\xff"),
        )
        return set(_records(m.rsplit("\0", 1)[1] for m in members))

    @_translate
    def patients_with_identifier(self, system: str, value: str) -> list[tuple[str, str]]:
        members = cast(
            set[str], self._redis.smembers(self.keys.patient_identifier(f"{system}|{value}"))
        )
        return _records(members)

    # -- facts -------------------------------------------------------------------------------
    @_translate
    def put_fact(self, kind: str, key: str, value: dict[str, Any] | None) -> bool:
        if value is None:
            return bool(self._redis.hdel(self.keys.facts(kind), key))
        body = json.dumps(value, sort_keys=True)
        # One HSET: last writer wins, like SQLite's upsert; "changed" is a best-effort answer.
        before = self._redis.hget(self.keys.facts(kind), key)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.fact_kinds, kind)
            pipe.hset(self.keys.facts(kind), key, body)
            pipe.execute()
        return before != body

    @_translate
    def get_fact(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = cast(str | None, self._redis.hget(self.keys.facts(kind), key))
        return cast(dict[str, Any], json.loads(raw)) if raw is not None else None

    @_translate
    def list_facts(self, kind: str) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], self._redis.hgetall(self.keys.facts(kind)))
        return _facts(raw)

    @_translate
    def _fact_kinds(self) -> list[str]:
        return sorted(cast(set[str], self._redis.smembers(self.keys.fact_kinds)))

    def iter_facts(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for kind in self._fact_kinds():
            for key, value in self.list_facts(kind).items():
                yield kind, key, value


def _entry_fields(entry: OutboxEntry) -> dict[str, str]:
    """The hash fields of an outbox entry (the inverse of `_entry`)."""
    return _present(
        {
            "id": str(entry.id),
            "task_id": entry.task_id,
            "source": entry.source,
            "action": entry.action,
            "payload": json.dumps(entry.payload),
            "status": entry.status.value,
            "attempts": str(entry.attempts),
            "next_attempt_at": _ts(entry.next_attempt_at),
            "last_error": entry.last_error,
            "created_at": _ts(entry.created_at),
            "delivered_at": _ts(entry.delivered_at),
            "detail": json.dumps(entry.detail) if entry.detail is not None else None,
        }
    )


# KEYS: lease, cursor, fence; ARGV: lease value, token, cursor value ('' forgets), updated_at.
# Refused (0) unless the lease is still held with this grant and no newer token wrote before.
_SET_CURSOR_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local fence = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[2]) < fence then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'value', ARGV[3], 'updated_at', ARGV[4])
end
return 1
"""


# KEYS: stream, scheduled, due; ARGV: group, entry key prefix. Creates the group (reading from
# the start of the stream). Its creator puts into `scheduled`, to be announced, the pending
# heads never announced (written before streams) or, when there was no stream at all, every
# pending head.
_CREATE_GROUP = """
local had_stream = redis.call('EXISTS', KEYS[1]) == 1
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'BUSYGROUP') then return 0 end
  return redis.error_reply(ok.err)
end
local heads = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #heads, 2 do
  if not had_stream or not redis.call('HGET', ARGV[2] .. heads[i], 'round') then
    redis.call('ZADD', KEYS[2], heads[i + 1], heads[i])
  end
end
return 1
"""

# KEYS: scheduled, stream; ARGV: now (µs), limit, entry key prefix. Announces the heads whose
# retry time has come with a new round; entries that left pending meanwhile are dropped. The
# entry hashes share the installation's hash tag, so they are in the same slot as KEYS.
_PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == 'pending' then
    local round = redis.call('HINCRBY', key, 'round', 1)
    local task = redis.call('HGET', key, 'task_id')
    redis.call('XADD', KEYS[2], '*', 'entry', id, 'task', task, 'round', tostring(round))
  end
end
return #ids
"""

# KEYS: every key the groups touch; ARGV: the number of groups, then per group: the index in
# KEYS of its guarded hash, the number n of fields it must hold and n field/value pairs (n = 0:
# the key must not exist), the number of writes and per write its command name, the index in
# KEYS of its key, the number of further arguments and those arguments. Groups run in order;
# a group whose hash is not exactly as expected writes nothing. Returns the numbers (from 1) of
# those groups. One script, so no other client's command runs between a check and its writes.
_GUARDED_WRITES = """
local allowed = {DEL = true, HSET = true, ZADD = true, ZREM = true, SADD = true, RPUSH = true}
local failed = {}
local a = 2
for g = 1, tonumber(ARGV[1]) do
  local key = KEYS[tonumber(ARGV[a])]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local ok
  if n == 0 then
    ok = redis.call('EXISTS', key) == 0
  else
    ok = redis.call('HLEN', key) == n
    if ok then
      local fields = {}
      for j = 1, n do fields[j] = ARGV[a + 2 * j - 2] end
      local values = redis.call('HMGET', key, unpack(fields))
      for j = 1, n do
        if values[j] ~= ARGV[a + 2 * j - 1] then ok = false; break end
      end
    end
    a = a + 2 * n
  end
  local writes = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, writes do
    local name, wkey, count = ARGV[a], KEYS[tonumber(ARGV[a + 1])], tonumber(ARGV[a + 2])
    if not allowed[name] then return redis.error_reply('not an allowed write: ' .. name) end
    if ok then redis.call(name, wkey, unpack(ARGV, a + 3, a + 2 + count)) end
    a = a + 3 + count
  end
  if not ok then failed[#failed + 1] = g end
end
return failed
"""

# KEYS: a `res-patient` index; ARGV: lex range low, high, the resource key prefix up to the
# source (`T:res:<source>`). The fields of each listed resource ("<type>/<id>") in index order
# (an empty list for one gone meanwhile); the resource keys share the index's hash tag.
_PATIENT_RESOURCES = (
    _LUA
    + """
return patient_resources(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: a Patient's hash, a facts hash, the Patient's resource index, its task index; ARGV:
# the resource key prefix of its source, the task key prefix, the identifier key prefix, then
# the trusted identifier systems. Nothing when the Patient is not stored; else its hash, the
# facts, [system|value, records]... for its identifiers of trusted systems (read from the
# body: a read-ahead, the caller asks the store for any other), its resources' hashes (as
# _PATIENT_RESOURCES) and its tasks as JSON (as _INDEX_PAGE).
_PATIENT_READS = (
    _LUA
    + """
local patient = redis.call('HGETALL', KEYS[1])
if #patient == 0 then return {} end
local idents = {}
if #ARGV > 3 then
  local trusted = {}
  for i = 4, #ARGV do trusted[ARGV[i]] = true end
  local body
  for j = 1, #patient, 2 do if patient[j] == 'body' then body = patient[j + 1] end end
  local ok, doc = pcall(cjson.decode, body or '')
  if ok and type(doc) == 'table' and type(doc.identifier) == 'table' then
    for _, ident in ipairs(doc.identifier) do
      if type(ident) == 'table' and type(ident.system) == 'string'
          and type(ident.value) == 'string' and ident.value ~= '' and trusted[ident.system] then
        local key = ident.system .. '|' .. ident.value
        idents[#idents + 1] = key
        idents[#idents + 1] = redis.call('SMEMBERS', ARGV[3] .. part(key))
      end
    end
  end
end
local resources = patient_resources(KEYS[3], '-', '+', ARGV[1])
local tasks = {}
for i, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do tasks[i] = task_json(ARGV[2], m) end
return {patient, redis.call('HGETALL', KEYS[2]), idents, resources, tasks}
"""
)

# KEYS: a Patient's hash, the patient-term index; ARGV: its terms as JSON, then its index
# members. Adds both only if the Patient is still stored (HSET would create a bare hash).
_ADD_TERMS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'terms', ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[2], 0, ARGV[i]) end
return 1
"""

# KEYS: stream; ARGV: group, consumer, message ids. Resets the idle time of the messages still
# pending for this consumer (XCLAIM to itself), so they are not reclaimed while delivered.
_TOUCH = """
local held = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held = held + 1
  end
end
return held
"""

# KEYS: stream; ARGV: group, consumer. Deletes the consumer only when nothing is pending for it.
_FORGET_CONSUMER = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: a counter; ARGV: a value. Raises the counter to the value (never lowers it).
_RAISE_COUNTER = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: stream, scheduled, due, then per message its entry hash and its task's pending list;
# ARGV: group, now (µs), then per message its id, entry id and round. Per message: the entry's
# fields when it is ours to deliver (pending, its task's head, this round, due), else an empty
# reply after acknowledging the message (and, for a current head not due yet, putting it back
# in `scheduled`). Atomic, so a promotion cannot slip in between check and claim.
_CHECK_CLAIMS = """
local out = {}
for i = 1, (#KEYS - 3) / 2 do
  local entry, pending = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local mid, id, round = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local mine = false
  if redis.call('HGET', entry, 'status') == 'pending'
      and redis.call('LINDEX', pending, 0) == id
      and redis.call('HGET', entry, 'round') == round then
    local at = redis.call('ZSCORE', KEYS[3], id)
    if at and tonumber(at) > tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[2], at, id)
    else
      mine = true
    end
  end
  if mine then
    redis.call('ZREM', KEYS[2], id)
    out[i] = redis.call('HGETALL', entry)
  else
    redis.call('XACK', KEYS[1], ARGV[1], mid)
    redis.call('XDEL', KEYS[1], mid)
    out[i] = {}
  end
end
return out
"""
