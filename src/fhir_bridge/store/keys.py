"""Every Redis key the bridge uses, in one place (like `arq/constants.py`).

All keys of one installation start with the hash tag ``{<prefix>}:`` (``{fhir-bridge}:task:…``).
Redis Cluster hashes only the part between the first ``{`` and ``}``, so **every key of an
installation lives in one slot**. That is deliberate for this first slice: `update_task`
writes the task hash, its history, its queue/status/rule/assignee/patient indexes, the
outbox entries, the task's pending list and the global due set in one MULTI/EXEC, and
`list_tasks` unions and intersects indexes of different queues and statuses; under a single
tag all of that is legal on a Cluster too, with no CROSSSLOT errors. The price is that a
Cluster does not spread one installation over several shards: the layout is Cluster-safe,
but one installation scales like one node (several installations, i.e. prefixes, do spread).
`RedisStore` connects to a Cluster with `redis.cluster.RedisCluster` (``redis+cluster://``,
`store/redis_url.py`); the outbox stream, its retry set and the Lua scripts are under the same
tag (the two scripts that read entry hashes without declaring them stay in the same slot).

Spreading later means a tag per task (task, history, pending outbox list), per queue
(its indexes) and per patient, with the cross-slot index maintenance moved out of the
transaction (a Streams consumer that applies index changes idempotently). The key builders
below are the only place that then changes, together with a `migrate` step.

Layout (``T`` is ``{<prefix>}``; parts are escaped so a ``:`` inside a name cannot make two
keys collide):

    T:meta                              hash    schema_version
    T:res:<source>:<type>:<id>          hash    source, type, id, hash, body, version_id,
                                                last_updated, stored_at, patient; a Patient
                                                also identifiers, terms (JSON lists)
    T:res-ids:<source>:<type>           zset    resource ids (score 0: lexicographic order)
    T:res-patient:<source>:<patient>    zset    "<type>/<id>" of the resources about a patient
    T:res-counts:<source>               hash    resource type -> count
    T:pid:<system|value>                set     Patient records "<source>/<id>" with it
    T:pterms                            zset    "<term>\\0<source>/<id>" (score 0): Patient
                                                search terms (`patients.terms`)
    T:sources                           set     sources with stored resources
    T:cursor:<source>:<type>            hash    value, updated_at
    T:quarantine                        hash    member -> entry (JSON)
    T:quarantine:by-time[:<source>]     zset    member, score -(at in µs): newest first
    T:task:<id>                         hash    the task's fields (None fields absent)
    T:task-events:<id>                  list    history events (JSON), oldest first
    T:tasks:all                         zset    sort member (score 0: lexicographic order)
    T:tasks:queue:<queue>               zset      "
    T:tasks:queue-status:<queue>:<st>   zset      "
    T:tasks:status:<st>                 zset      "
    T:tasks:rule:<rule>                 zset      "
    T:tasks:assignee:<who>              zset      "
    T:tasks:patient:<reference>         zset      "
    T:queues                            set     queue names that ever had a task
    T:outbox:seq                        string  last outbox id (INCRBY)
    T:outbox:entry:<id>                 hash    the entry's fields
    T:outbox:all                        zset    entry ids, score = id
    T:outbox:status:<status>            zset    entry ids, score = id
    T:outbox:task:<task id>             zset    entry ids of one task, score = id
    T:outbox:pending:<task id>          list    pending entry ids of one task, oldest first
    T:outbox:due                        zset    the head of every pending list,
                                                score = next_attempt_at in µs
    T:outbox:stream                     stream  announcements {entry, task, round}: this head
                                                may be delivered now; consumer group
                                                `OUTBOX_GROUP`, acked messages are XDELeted
    T:outbox:scheduled                  zset    heads waiting for a retry time (score µs),
                                                moved into the stream once due
    T:audit:seq                         string  last audit record id (INCR)
    T:audit                             hash    id -> record (JSON)
    T:audit:all                         zset    record ids, score = id
    T:audit:by:<agent|patient|task>:<v> zset    record ids of one agent/patient/task, score = id
    T:tmp:<token>                       zset    scratch for list_tasks, never outlives a MULTI
    T:lease:<name>                      string  "<token>:<owner>", expires (PX): a worker lease
    T:lease-seq                         string  the fencing token counter (INCR)
    T:fence:<name>                      string  highest token a fenced write was accepted with

Outbox delivery goes through a Redis Stream with one consumer group: entries stay in their
hashes, the per-task pending list keeps a task's writes in order, and only a task's head entry
is ever announced on `outbox:stream`, in the MULTI that makes it the head (so a task's writes
still go out one by one). Each announcement carries the entry's `round` (a counter in its
hash, bumped by every announcement), so a stale message (an older round, an entry no longer
the head or no longer pending) is recognised and only acknowledged. A failed attempt waits
in `outbox:scheduled` until its `next_attempt_at`, then is announced again.
"""

from __future__ import annotations

import re

# Bump when the layout changes; `T:meta` records the version the data was written with.
SCHEMA_VERSION = 1

# The consumer group of `Keys.outbox_stream`: every write-back consumer reads through it.
OUTBOX_GROUP = "writeback"

_PREFIX = re.compile(r"^[A-Za-z0-9:_.-]{1,64}$")


def _part(value: str) -> str:
    """A name made safe as one key segment: `%` and `:` percent-encoded, the rest kept."""
    return value.replace("%", "%25").replace(":", "%3A")


class Keys:
    """Key names of one installation, all under the hash tag ``{prefix}``.

    :param prefix: the namespace (`StorageConfig.key_prefix`); letters, digits and ``:_.-``.
    """

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"invalid Redis key prefix {prefix!r}: use 1-64 of A-Z a-z 0-9 : _ . -"
            )
        self.prefix = prefix
        self.root = "{" + prefix + "}"

    def _key(self, *parts: str) -> str:
        return ":".join((self.root, *(_part(p) for p in parts)))

    @property
    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key of the installation (glob characters escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.root) + ":*"

    def temp(self, token: str) -> str:
        """A scratch key (same slot as everything else)."""
        return self._key("tmp", token)

    # -- meta, resources, cursors, quarantine ---------------------------------------------------
    @property
    def meta(self) -> str:
        """Installation metadata (schema version)."""
        return self._key("meta")

    def resource(self, source: str, resource_type: str, resource_id: str) -> str:
        """The latest stored version of one resource."""
        return self._key("res", source, resource_type, resource_id)

    def resource_ids(self, source: str, resource_type: str) -> str:
        """The ids of the stored resources of one source and type, for paging through them."""
        return self._key("res-ids", source, resource_type)

    def resource_patient(self, source: str, patient: str) -> str:
        """The stored resources of one source about one patient (``Patient/<id>``)."""
        return self._key("res-patient", source, patient)

    def resource_counts(self, source: str) -> str:
        """Per resource type, how many resources of `source` are stored."""
        return self._key("res-counts", source)

    @property
    def sources(self) -> str:
        """The sources that have stored resources."""
        return self._key("sources")

    def cursor(self, source: str, resource_type: str) -> str:
        """The `_lastUpdated` cursor of one source and type."""
        return self._key("cursor", source, resource_type)

    @property
    def quarantine(self) -> str:
        """All quarantine entries, by member."""
        return self._key("quarantine")

    def quarantine_by_time(self, source: str | None = None) -> str:
        """Quarantine members, newest first (all sources, or one)."""
        if source is None:
            return self._key("quarantine", "by-time")
        return self._key("quarantine", "by-time", source)

    # -- tasks -------------------------------------------------------------------------------
    def task(self, task_id: str) -> str:
        """One task's fields."""
        return self._key("task", task_id)

    def task_events(self, task_id: str) -> str:
        """One task's history, oldest first."""
        return self._key("task-events", task_id)

    @property
    def tasks_all(self) -> str:
        """Every task, in listing order."""
        return self._key("tasks", "all")

    def tasks_queue(self, queue: str) -> str:
        """The tasks of one queue, in listing order."""
        return self._key("tasks", "queue", queue)

    def tasks_queue_status(self, queue: str, status: str) -> str:
        """The tasks of one queue in one status, in listing order."""
        return self._key("tasks", "queue-status", queue, status)

    def tasks_status(self, status: str) -> str:
        """The tasks in one status (all queues), in listing order."""
        return self._key("tasks", "status", status)

    def tasks_rule(self, rule_id: str) -> str:
        """The tasks one mapping rule made, in listing order."""
        return self._key("tasks", "rule", rule_id)

    def tasks_assignee(self, assignee: str) -> str:
        """The tasks assigned to one coordinator, in listing order."""
        return self._key("tasks", "assignee", assignee)

    def tasks_patient(self, patient: str) -> str:
        """The tasks about one patient (a reference such as ``Patient/p1``), in listing order."""
        return self._key("tasks", "patient", patient)

    @property
    def queues(self) -> str:
        """Queue names that have (or had) tasks."""
        return self._key("queues")

    def patient_identifier(self, identifier: str) -> str:
        """The Patient records (`source/id`) carrying `system|value`, a set."""
        return self._key("pid", identifier)

    @property
    def patient_terms(self) -> str:
        """Patient search terms, a sorted set of `<term>\\0<source>/<id>` members, all score 0:
        ZRANGEBYLEX answers prefix searches (`patients.terms`)."""
        return self._key("pterms")

    # -- facts people set by hand -------------------------------------------------------------
    @property
    def fact_kinds(self) -> str:
        """The kinds that hold facts, a set (so migrate can list them)."""
        return self._key("facts-kinds")

    def facts(self, kind: str) -> str:
        """Every fact of `kind` (patient links, ...), a hash by key."""
        return self._key("facts", kind)

    # -- audit trail -------------------------------------------------------------------------
    @property
    def audit_seq(self) -> str:
        """The audit record id counter."""
        return self._key("audit", "seq")

    @property
    def audit(self) -> str:
        """Every audit record, by id."""
        return self._key("audit")

    def audit_index(self, field: str | None = None, value: str | None = None) -> str:
        """Record ids (score = id): all of them, or those of one agent, patient or task."""
        if field is None or value is None:
            return self._key("audit", "all")
        return self._key("audit", "by", field, value)

    # -- outbox ------------------------------------------------------------------------------
    @property
    def outbox_seq(self) -> str:
        """The outbox id counter."""
        return self._key("outbox", "seq")

    def outbox_entry(self, entry_id: int | str) -> str:
        """One outbox entry's fields."""
        return self._key("outbox", "entry", str(entry_id))

    @property
    def outbox_all(self) -> str:
        """Every outbox entry id, oldest first."""
        return self._key("outbox", "all")

    def outbox_status(self, status: str) -> str:
        """The outbox entry ids in one status, oldest first."""
        return self._key("outbox", "status", status)

    def outbox_task(self, task_id: str) -> str:
        """Every outbox entry id of one task, oldest first."""
        return self._key("outbox", "task", task_id)

    def outbox_pending(self, task_id: str) -> str:
        """The pending entry ids of one task, oldest first (the head is the one to deliver)."""
        return self._key("outbox", "pending", task_id)

    @property
    def outbox_due(self) -> str:
        """The head of each task's pending list, scored by its next attempt time (µs)."""
        return self._key("outbox", "due")

    @property
    def outbox_stream(self) -> str:
        """Announcements of deliverable head entries, read through the `OUTBOX_GROUP` group."""
        return self._key("outbox", "stream")

    @property
    def outbox_scheduled(self) -> str:
        """Head entries waiting for their retry time (score µs) before being announced again."""
        return self._key("outbox", "scheduled")

    # -- scans and leases (added for migrate and workers) ------------------------------------
    @property
    def cursor_pattern(self) -> str:
        """A SCAN MATCH pattern for every cursor key of the installation."""
        return self.pattern[:-1] + "cursor:*"

    def parse_cursor(self, key: str) -> tuple[str, str]:
        """The (source, resource type) of a key made by `cursor`."""
        rest = key[len(self.root) + len(":cursor:") :]
        source, resource_type = rest.split(":")
        return _unpart(source), _unpart(resource_type)

    def lease(self, name: str) -> str:
        """A worker lease (value ``<token>:<owner>``, expires by PX)."""
        return self._key("lease", name)

    @property
    def lease_seq(self) -> str:
        """The fencing token counter shared by every lease of the installation (INCR)."""
        return self._key("lease-seq")

    def fence(self, name: str) -> str:
        """The highest fencing token a write guarded by lease `name` has been accepted with."""
        return self._key("fence", name)


def _unpart(value: str) -> str:
    """The inverse of `_part`."""
    return re.sub("%(25|3A)", lambda m: "%" if m.group(1) == "25" else ":", value)
