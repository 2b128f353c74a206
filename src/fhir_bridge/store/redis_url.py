"""`storage.redis_url`: which Redis to talk to, and the redis-py client for it.

redis-py parses ``redis://``, ``rediss://`` (TLS) and ``unix://`` itself (`Redis.from_url`), but
has no URL form for Sentinel, and `RedisCluster.from_url` takes one node only. So:

- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` (and
  ``rediss+sentinel://`` for TLS): `redis.sentinel.Sentinel(...).master_for(service_name)`.
  The password is the primary's; the Sentinels themselves are asked without one.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (and ``rediss+cluster://``):
  `redis.cluster.RedisCluster` with those start-up nodes (a Cluster has no database number).

Messages never contain the password (`safe_url`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

Kind = Literal["plain", "sentinel", "cluster"]
_PLAIN = ("redis", "rediss", "unix")
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
SCHEMES = (*_PLAIN, *_SCHEMES)


def safe_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if "@" not in parts.netloc:
        return url
    userinfo, hosts = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else None
    shown = f"{user}:***@" if user else ":***@" if ":" in userinfo else "***@"
    return urlunsplit(parts._replace(netloc=shown + hosts))


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `storage.redis_url`."""

    kind: Kind
    url: str  # as given (plain kinds are handed to redis-py as they are)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def _hosts(netloc: str, url: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise ValueError(f"{safe_url(url)}: a host is missing in the host list")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"{safe_url(url)}: port {port!r} is not a number") from None
        if not 0 < number < 65536:
            raise ValueError(f"{safe_url(url)}: port {number} is out of range")
        hosts.append((host, number))
    return tuple(hosts)


def parse_redis_url(url: str) -> RedisTarget:
    """Check a Redis URL and take it apart.

    :raises ValueError: the URL is malformed (the message names what, without the password).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _PLAIN:
        try:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
            path = urlsplit(url).path.strip("/")
        except ValueError as exc:
            raise ValueError(f"{safe_url(url)}: {exc}") from None
        if scheme != "unix" and path and not path.isdigit():
            # redis-py would quietly use database 0 instead
            raise ValueError(f"{safe_url(url)}: database {path!r} is not a number")
        return RedisTarget("plain", url)
    if scheme not in _SCHEMES:
        raise ValueError(
            f"{safe_url(url)}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    kind, ssl = _SCHEMES[scheme]
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    userinfo, _, hostlist = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    if not hostlist:
        raise ValueError(f"{safe_url(url)}: no host given")
    hosts = _hosts(hostlist, url, 26379 if kind == "sentinel" else 6379)
    parts = [p for p in path.split("/") if p]
    if kind == "cluster":
        if parts:
            raise ValueError(f"{safe_url(url)}: a Cluster URL has no path (no database number)")
        return RedisTarget(kind, url, hosts, None, 0, username, password, ssl)
    if not parts or len(parts) > 2:
        raise ValueError(
            f"{safe_url(url)}: a Sentinel URL needs /service_name[/db] after the hosts"
        )
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{safe_url(url)}: database {parts[1]!r} is not a number")
        db = int(parts[1])
    return RedisTarget(kind, url, hosts, unquote(parts[0]), db, username, password, ssl)


def connect(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for `url`; `options` are connection options (timeouts, decoding).

    :raises ValueError: the URL is malformed.
    """
    target = parse_redis_url(url)
    if target.kind == "plain":
        return redis.Redis.from_url(url, **options)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.ssl:
        auth["ssl"] = True
    if target.kind == "cluster":
        options.pop("health_check_interval", None)
        nodes = [ClusterNode(host, port) for host, port in target.hosts]  # type: ignore[no-untyped-call]
        cluster = RedisCluster(startup_nodes=nodes, **auth, **options)
        return cluster  # type: ignore[return-value]  # same command API as redis.Redis
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.ssl:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.hosts), sentinel_kwargs=sentinel_options, **sentinel_options
    )
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(target.service), db=target.db, **auth, **options
    )
    return cast(redis.Redis, master)
