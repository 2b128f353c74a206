"""Tests for fhir_bridge.store.redis_url: every `storage.redis_url` form, and clear errors.

No live Sentinel or Cluster is needed: parsing is checked on its own, and the Sentinel client
redis-py builds connects lazily (its settings are read back without a server).
"""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from fhir_bridge.config import StorageConfig
from fhir_bridge.errors import ConfigError
from fhir_bridge.store.redis_url import RedisTarget, connect, parse_redis_url, safe_url


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:secret@redis.example:6380/2",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_plain_urls_are_left_to_redis_py(url):
    """redis://, rediss:// and unix:// URLs are redis-py's own forms, passed on unchanged."""
    assert parse_redis_url(url) == RedisTarget("plain", url)


def test_sentinel_url_with_password_hosts_service_and_db():
    """A Sentinel URL names the Sentinels, the monitored service and the database."""
    url = "redis+sentinel://:p%40ss@s1.example:26379,s2.example:26380,s3.example/mymaster/3"
    target = parse_redis_url(url)
    assert target.kind == "sentinel"
    assert target.hosts == (("s1.example", 26379), ("s2.example", 26380), ("s3.example", 26379))
    assert (target.service, target.db, target.password, target.ssl) == (
        "mymaster",
        3,
        "p@ss",
        False,
    )
    assert "p@ss" not in repr(target)


def test_sentinel_url_with_user_tls_and_default_db():
    """rediss+sentinel:// turns TLS on; without /db the database is 0."""
    target = parse_redis_url("rediss+sentinel://bridge:pw@[::1]:26379/cache")
    assert (target.hosts, target.service, target.db) == ((("::1", 26379),), "cache", 0)
    assert (target.username, target.password, target.ssl) == ("bridge", "pw", True)


def test_cluster_url_lists_start_up_nodes():
    """A Cluster URL lists start-up nodes (default port 6379) and has no database."""
    target = parse_redis_url("redis+cluster://:pw@n1.example:7000,n2.example")
    assert target.kind == "cluster"
    assert target.hosts == (("n1.example", 7000), ("n2.example", 6379))
    assert (target.password, target.db) == ("pw", 0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:secret@host:6379/0", "scheme must be one of"),
        ("127.0.0.1:6379", "scheme must be one of"),
        ("redis+sentinel://:secret@s1:26379", "needs /service_name"),
        ("redis+sentinel://:secret@s1:26379/svc/one", "database 'one' is not a number"),
        ("redis+sentinel://:secret@s1:26379/svc/0/extra", "needs /service_name"),
        ("redis+sentinel://:secret@/svc", "no host given"),
        ("redis+sentinel://:secret@s1:port/svc", "port 'port' is not a number"),
        ("redis+sentinel://:secret@s1:70000/svc", "out of range"),
        ("redis+sentinel://:secret@s1:26379,,s2/svc", "a host is missing"),
        ("redis+cluster://:secret@n1:7000/0", "has no path"),
        ("redis://:secret@host:6379/notadb", "redis://:***@host:6379/notadb: database"),
        ("redis://:secret@host:port/0", "redis://:***@host:port/0: "),
    ],
)
def test_malformed_urls_say_what_is_wrong_without_the_password(url, message):
    """Each malformed URL fails with a message naming the problem and never the password."""
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_config_error_names_the_key_and_hides_the_password(tmp_path):
    """A bad storage.redis_url in a settings file is a ConfigError naming the key, no password."""
    from fhir_bridge.config import load_settings

    path = tmp_path / "bridge.yaml"
    path.write_text("storage:\n  engine: redis\n  redis_url: redis+sentinel://:secret@s1:26379\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    text = str(caught.value)
    assert "storage.redis_url" in text and "needs /service_name" in text
    assert "secret" not in text
    assert StorageConfig(redis_url="redis+cluster://n1:7000").redis_url == "redis+cluster://n1:7000"


def test_safe_url_masks_every_password_form():
    """The password is replaced by *** whether or not a user name is given."""
    assert safe_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert safe_url("redis+sentinel://:pw@a:1,b:2/m") == "redis+sentinel://:***@a:1,b:2/m"
    assert safe_url("redis://h:1/0") == "redis://h:1/0"


def test_connect_builds_a_sentinel_master_client_without_connecting():
    """connect() on a Sentinel URL gives a client of the service's primary, with the URL's
    password and database (connections are opened on first use only)."""
    client = connect(
        "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/4",
        decode_responses=True,
        socket_timeout=3,
    )
    try:
        assert isinstance(client, redis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        kwargs = pool.connection_kwargs
        assert (kwargs["password"], kwargs["db"], kwargs["decode_responses"]) == ("pw", 4, True)
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    finally:
        client.close()
