"""Facts people set by hand, on both engines: set, change, read, list by kind, remove."""

from __future__ import annotations


def test_put_get_list_and_remove(engine_store) -> None:
    store = engine_store
    assert store.get_fact("patient-link", "a") is None
    assert store.put_fact("patient-link", "b", {"by": "ann", "n": 1}) is True
    assert store.put_fact("patient-link", "a", {"by": "bob"}) is True
    assert store.put_fact("other-kind", "a", {"x": True}) is True
    # the same value again is no change; a different one is
    assert store.put_fact("patient-link", "a", {"by": "bob"}) is False
    assert store.put_fact("patient-link", "b", {"by": "ann", "n": 2}) is True
    assert store.get_fact("patient-link", "b") == {"by": "ann", "n": 2}
    assert store.list_facts("patient-link") == {"a": {"by": "bob"}, "b": {"by": "ann", "n": 2}}
    assert list(store.list_facts("patient-link")) == ["a", "b"]  # by key
    assert store.put_fact("patient-link", "a", None) is True
    assert store.put_fact("patient-link", "a", None) is False
    assert store.list_facts("patient-link") == {"b": {"by": "ann", "n": 2}}
    assert store.list_facts("other-kind") == {"a": {"x": True}}
    assert store.list_facts("nothing") == {}


def test_facts_survive_reopening(tmp_path) -> None:
    from fhir_bridge.store.sqlite import SqliteStore

    path = tmp_path / "f.db"
    first = SqliteStore(path)
    first.put_fact("k", "key", {"v": 1})
    first.close()
    again = SqliteStore(path)
    assert again.get_fact("k", "key") == {"v": 1}
    again.close()
