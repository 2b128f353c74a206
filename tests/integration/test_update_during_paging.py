"""Resources change on SEKMET while the bridge pages through them: none may be missed."""

from __future__ import annotations

import time

import httpx
import pytest

from fhir_bridge.fhir import FhirClient
from fhir_bridge.sync.engine import sync_source
from tests.integration.test_end_to_end import make_bridge
from tests.integration.test_faults import assert_no_duplicate_tasks, server_versions
from tests.sandbox_fixtures import seeded_server
from tests.utils import sample

pytestmark = pytest.mark.integration


class EditsWhilePaging(httpx.AsyncBaseTransport):
    """The real network; right after Patient page `after_page` is served, `edit()` runs."""

    def __init__(self, url: str, after_page: int) -> None:
        """Wrap a real transport; edit `url` after Patient page `after_page`."""
        self.inner = httpx.AsyncHTTPTransport()
        self.url = url
        self.after_page = after_page
        self.pages = 0
        self.edited: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send; after the chosen Patient page, change resources on the server."""
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/Patient"):
            self.pages += 1
            if self.pages == self.after_page:
                self.edit()
        return response

    def edit(self) -> None:
        """Update the first two patients (they move to the end of _lastUpdated order), update
        one further on, and add a new one."""
        patients = sample("Patient")
        with httpx.Client() as http:
            by_updated = http.get(f"{self.url}/Patient?_sort=_lastUpdated&_count=100").json()
            ids = [e["resource"]["id"] for e in by_updated["entry"]]
            changed = [ids[0], ids[1], ids[20]]
            for pid in changed:
                current = http.get(f"{self.url}/Patient/{pid}").json()
                current["gender"] = "unknown" if current.get("gender") != "unknown" else "other"
                assert http.put(f"{self.url}/Patient/{pid}", json=current).status_code == 200
            new = patients[0] | {"id": "added-while-paging"}
            new.pop("meta", None)
            assert http.put(f"{self.url}/Patient/{new['id']}", json=new).status_code == 201
        self.edited = [*changed, new["id"]]

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.inner.aclose()


async def test_updates_during_paging_are_all_stored_by_the_next_run(sekmet_factory, tmp_path):
    """Patients updated and added while the bridge pages through them (5 a page) are all in
    the store at their latest version after that run and one more, none tasked twice, even
    when the data is older than the overlap."""
    url = seeded_server(sekmet_factory)
    time.sleep(1.2)  # the seeded data is now older than the 1 s overlap, like real data
    bridge = make_bridge(url, tmp_path, overlap=1, resource_types=("Patient",))
    source = bridge.settings.sources[0].model_copy(update={"page_size": 5})
    editing = EditsWhilePaging(url, after_page=2)
    try:
        async with FhirClient(source.url, source=source.name, transport=editing) as client:
            first = await sync_source(source, client, bridge.ingestor)
            assert first.ok and editing.edited, "the edits happened during the first run"
            second = await sync_source(source, client, bridge.ingestor)
        assert second.ok
        on_server = server_versions(url, ("Patient",))
        assert len(on_server) == len(sample("Patient")) + 1
        stale = {
            key: v
            for key, v in on_server.items()
            if (s := bridge.store.get_resource("sekmet", *key)) is None or s.version_id != v
        }
        assert stale == {}, f"missed or stale: {sorted(stale)}"
        assert_no_duplicate_tasks(bridge)
    finally:
        bridge.close()
