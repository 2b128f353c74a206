"""Tests for fhir_bridge.fhir.capabilities and the `sources check` command built on it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import pytest
import respx
import structlog
from typer.testing import CliRunner

from fhir_bridge import cli
from fhir_bridge.cli_sources import report_table, sources_app, summary
from fhir_bridge.config import DEFAULT_RESOURCE_TYPES, BearerAuth, SourceConfig
from fhir_bridge.fhir import FhirClient
from fhir_bridge.fhir.capabilities import (
    SearchProbe,
    SyncStrategy,
    build_report,
    check_server,
    probe_search,
)
from fhir_bridge.sources import check_source

DATA = Path(__file__).resolve().parents[1] / "data" / "capabilities"
BASE = "https://ehr.example.org/fhir"
OK = SearchProbe("Patient", ok=True, detail="GET Patient?_count=1: 1 entry", status=200)


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sekmet_metadata() -> dict:
    """The CapabilityStatement recorded from SEKMET 0.1.1 (smart auth on)."""
    return load("sekmet-metadata.json")


@pytest.fixture(scope="module")
def sekmet_smart() -> dict:
    """SEKMET's recorded .well-known/smart-configuration."""
    return load("sekmet-smart-configuration.json")


def report_for(metadata, smart=None, search=OK, types=DEFAULT_RESOURCE_TYPES, **kwargs):
    return build_report(
        source="ehr",
        base_url=BASE,
        resource_types=types,
        metadata=metadata,
        smart_configuration=smart,
        search=search,
        **kwargs,
    )


def bundle(*ids: str, total: int | None = None) -> dict:
    body: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ids],
    }
    if total is not None:
        body["total"] = total
    return body


# -- build_report on recorded documents ------------------------------------------------------


def test_sekmet_report_server_level(sekmet_metadata, sekmet_smart):
    """SEKMET: R4, its name and version, SMART token endpoint, system $export, Subscription."""
    report = report_for(sekmet_metadata, sekmet_smart)
    assert report.ok and report.reachable and report.auth_ok
    assert report.problem is None
    assert report.fhir_version == "4.0.1" and report.fhir_r4
    assert (report.software_name, report.software_version) == ("SEKMET FHIR R4 Tester", "0.1.0")
    assert report.smart_token_endpoint == "http://127.0.0.1:8090/auth/token"
    assert report.system_export is True
    assert report.subscriptions is True
    assert report.rest_hook is None  # R4 has no standard place to declare it; SEKMET does not


def test_sekmet_report_per_type(sekmet_metadata):
    """Every default type: search, _lastUpdated, _include, If-Match updates, incremental sync."""
    report = report_for(sekmet_metadata)
    assert [r.resource_type for r in report.resources] == list(DEFAULT_RESOURCE_TYPES)
    for res in report.resources:
        assert res.declared and res.search and res.last_updated and res.include, res
        assert res.update_if_match and res.versioning == "versioned-update", res
        assert res.update_create and res.conditional_create and res.conditional_update, res
        assert res.strategy is SyncStrategy.INCREMENTAL, res
        assert res.count is None  # SEKMET does not declare _count; one probe entry tells nothing
    by_type = {r.resource_type: r for r in report.resources}
    assert by_type["Patient"].export is True  # Patient/$export
    assert by_type["CarePlan"].export is False
    assert by_type["CoverageEligibilityRequest"].created_param == "created"
    assert by_type["Patient"].created_param is None


def test_trimmed_statement_falls_back(sekmet_metadata):
    """Without _lastUpdated: created-date fallback where a created param exists, else full."""
    report = report_for(
        load("trimmed-no-lastupdated.json"),
        types=("Patient", "CoverageEligibilityRequest", "Appointment", "Task"),
    )
    by_type = {r.resource_type: r for r in report.resources}
    cer = by_type["CoverageEligibilityRequest"]
    assert cer.strategy is SyncStrategy.CREATED_DATE and cer.created_param == "created"
    assert cer.strategy.value == "created-date fallback (misses edits)"
    assert by_type["Patient"].strategy is SyncStrategy.FULL
    assert by_type["Patient"].update and not by_type["Patient"].update_if_match  # "versioned"
    appointment = by_type["Appointment"]
    assert appointment.declared and not appointment.search
    assert appointment.strategy is SyncStrategy.FULL
    assert not by_type["Task"].declared and by_type["Task"].strategy is SyncStrategy.FULL
    assert report.subscriptions is False and report.rest_hook is False
    assert report.system_export is False and report.smart_token_endpoint is None
    assert report.software_name == "Legacy EHR"


def test_removing_lastupdated_from_sekmet_changes_the_strategy(sekmet_metadata):
    """The same SEKMET statement minus _lastUpdated on Patient gives 'full re-pull' for it."""
    trimmed = copy.deepcopy(sekmet_metadata)
    for res in trimmed["rest"][0]["resource"]:
        if res["type"] in ("Patient", "CoverageEligibilityRequest"):
            res["searchParam"] = [p for p in res["searchParam"] if p["name"] != "_lastUpdated"]
    by_type = {r.resource_type: r for r in report_for(trimmed).resources}
    assert by_type["Patient"].strategy is SyncStrategy.FULL
    assert by_type["CoverageEligibilityRequest"].strategy is SyncStrategy.CREATED_DATE
    assert by_type["CarePlan"].strategy is SyncStrategy.INCREMENTAL


def test_lastupdated_declared_for_all_resources_counts():
    """_lastUpdated in rest.searchParam (for every type) makes each searchable type incremental."""
    metadata = load("trimmed-no-lastupdated.json")
    metadata["rest"][0]["searchParam"] = [{"name": "_lastUpdated", "type": "date"}]
    by_type = {
        r.resource_type: r for r in report_for(metadata, types=("Patient", "Appointment")).resources
    }
    assert by_type["Patient"].strategy is SyncStrategy.INCREMENTAL
    assert by_type["Appointment"].strategy is SyncStrategy.FULL  # not searchable at all


@pytest.mark.parametrize(
    ("declared", "honoured", "expected"),
    [(True, None, True), (False, True, True), (False, False, False), (False, None, None)],
)
def test_count_support_from_declaration_or_probe(declared, honoured, expected):
    """_count: declared, or shown by the probe; unknown when neither tells."""
    metadata = load("trimmed-no-lastupdated.json")
    if declared:
        metadata["rest"][0]["resource"][0]["searchParam"].append({"name": "_count"})
    probe = SearchProbe("Patient", ok=True, detail="", status=200, count_honoured=honoured)
    (patient,) = report_for(metadata, search=probe, types=("Patient",)).resources
    assert patient.count is expected


def test_rest_hook_is_read_when_declared(sekmet_metadata):
    """A Subscription entry that mentions rest-hook marks the channel as supported."""
    metadata = copy.deepcopy(sekmet_metadata)
    for res in metadata["rest"][0]["resource"]:
        if res["type"] == "Subscription":
            res["documentation"] = "Channels: rest-hook"
    assert report_for(metadata).rest_hook is True


def test_unreachable_server_report():
    """No answer at all: not reachable, not ok, nothing declared, full re-pull everywhere."""
    report = report_for(None, search=None, unreachable="GET /fhir/metadata: ConnectError")
    assert not report.reachable and not report.ok and not report.auth_ok
    assert report.problem == "GET /fhir/metadata: ConnectError"
    assert all(r.strategy is SyncStrategy.FULL and not r.declared for r in report.resources)


def test_failed_auth_is_not_ok(sekmet_metadata):
    """Reachable but the authenticated search failed: the report is not ok."""
    probe = SearchProbe("Patient", ok=False, detail="HTTP 401", status=401)
    report = report_for(sekmet_metadata, search=probe)
    assert report.reachable and not report.auth_ok and not report.ok


def test_not_a_capability_statement_is_a_problem():
    """A /metadata body of another resource type is reported, not trusted."""
    report = report_for({"resourceType": "OperationOutcome"})
    assert report.problem == "GET /metadata did not return a CapabilityStatement"
    assert report.fhir_version is None and not report.fhir_r4


def test_other_fhir_versions_are_flagged(sekmet_metadata):
    """A server speaking STU3 is not R4."""
    metadata = dict(sekmet_metadata, fhirVersion="3.0.2")
    assert report_for(metadata).fhir_r4 is False


def test_build_report_is_pure(sekmet_metadata, sekmet_smart):
    """Same inputs, equal reports, inputs untouched."""
    before = copy.deepcopy(sekmet_metadata)
    assert report_for(sekmet_metadata, sekmet_smart) == report_for(sekmet_metadata, sekmet_smart)
    assert sekmet_metadata == before


# -- probing with respx ----------------------------------------------------------------------


@pytest.fixture
def api(sekmet_metadata, sekmet_smart):
    """A server with SEKMET's documents and a Patient search holding five matches."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{BASE}/metadata", name="metadata").respond(200, json=sekmet_metadata)
        mock.get(f"{BASE}/.well-known/smart-configuration", name="smart").respond(
            200, json=sekmet_smart
        )
        mock.get(host="ehr.example.org", path="/fhir/Patient", name="search").respond(
            200, json=bundle("p1", total=5)
        )
        yield mock


def bearer_source(**kwargs) -> SourceConfig:
    auth = BearerAuth(type="bearer", token="t0ken-secret")
    return SourceConfig(name="ehr", base_url=BASE, auth=auth, **kwargs)


async def test_check_source_probes_with_credentials(api):
    """Public documents go without credentials; the _count=1 search carries them."""
    report = await check_source(bearer_source())
    assert report.ok
    assert "Authorization" not in api["metadata"].calls.last.request.headers
    assert "Authorization" not in api["smart"].calls.last.request.headers
    search = api["search"].calls.last.request
    assert search.headers["Authorization"] == "Bearer t0ken-secret"
    assert search.url.params["_count"] == "1"
    assert report.search == SearchProbe(
        "Patient", ok=True, detail="GET Patient?_count=1: 1 entry", status=200, count_honoured=True
    )
    assert all(r.count for r in report.resources)  # one of five: _count is honoured


async def test_check_searches_the_first_configured_type(api):
    """The probe searches the first configured resource type."""
    api.get(host="ehr.example.org", path="/fhir/Appointment", name="appt").respond(
        200, json=bundle()
    )
    report = await check_source(bearer_source(resource_types=("Appointment", "Patient")))
    assert api["appt"].called and not api["search"].called
    assert report.search is not None and report.search.detail.endswith("0 entries")


async def test_check_without_smart_configuration(api):
    """A 404 for smart-configuration is normal: no token endpoint, still ok."""
    api["smart"].respond(404)
    report = await check_source(bearer_source())
    assert report.ok and report.smart_token_endpoint is None


async def test_check_unreachable_server_skips_the_search(api):
    """A connection error on /metadata: unreachable, and no authenticated search is tried."""
    api["metadata"].side_effect = httpx.ConnectError("nope")
    report = await check_source(bearer_source())
    assert not report.reachable and report.search is None
    assert report.problem == "GET /fhir/metadata: ConnectError"
    assert not api["search"].called and not api["smart"].called


async def test_check_5xx_metadata_is_unreachable(api):
    """A 503 on /metadata counts as unreachable."""
    api["metadata"].respond(503)
    report = await check_source(bearer_source())
    assert not report.reachable and "HTTP 5xx" in (report.problem or "")


async def test_check_protected_metadata_is_fetched_with_credentials(api, sekmet_metadata):
    """A gateway that wants credentials for /metadata: it is fetched again through the client."""
    api["metadata"].side_effect = [
        httpx.Response(401),
        httpx.Response(200, json=sekmet_metadata),
    ]
    report = await check_source(bearer_source())
    assert report.ok and report.problem is None and report.fhir_version == "4.0.1"
    assert api["metadata"].calls.last.request.headers["Authorization"] == "Bearer t0ken-secret"


async def test_check_reports_rejected_credentials(api):
    """A 401 on the search: reachable, not ok, the server's reason in the detail."""
    api["search"].respond(
        401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "Token expired"}],
        },
    )
    report = await check_source(bearer_source())
    assert report.reachable and not report.ok
    assert report.search is not None and report.search.status == 401
    assert "Token expired" in report.search.detail
    assert "t0ken-secret" not in report.search.detail


async def test_probe_sees_an_ignored_count(api):
    """Three entries for _count=1: the server ignores _count."""
    api["search"].respond(200, json=bundle("a", "b", "c"))
    async with FhirClient(BASE) as client:
        probe = await probe_search(client, "Patient")
    assert probe.ok and probe.count_honoured is False


async def test_check_server_with_a_mock_transport(sekmet_metadata):
    """check_server works on an injected transport (no respx), for callers' own tests."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=sekmet_metadata)
        if request.url.path.endswith("/Patient"):
            return httpx.Response(200, json=bundle())
        return httpx.Response(404)

    transport = httpx.MockTransport(handler)
    client = FhirClient(BASE, transport=transport)
    report = await check_server(client, BASE, ("Patient",), source="x", transport=transport)
    assert report.ok and report.smart_token_endpoint is None
    assert [r.strategy for r in report.resources] == [SyncStrategy.INCREMENTAL]


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def runner():
    """A CliRunner; structlog's configuration (set by the command) is reset afterwards."""
    yield CliRunner()
    structlog.reset_defaults()


def write_config(tmp_path: Path, base_url: str = BASE, token: str = "t0ken-secret") -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "sources:\n"
        f"  - name: ehr\n    base_url: {base_url}\n"
        f"    auth: {{type: bearer, token: {token}}}\n"
        "    resource_types: [Patient, CoverageEligibilityRequest]\n"
    )
    return path


def test_cli_check_prints_report_and_exits_0(api, runner, tmp_path):
    """sources check: a table per source and an OK line with the strategies; exit 0."""
    result = runner.invoke(
        sources_app, ["check", "-c", str(write_config(tmp_path))], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "source ehr" in result.output
    assert "authenticated search" in result.output
    assert "CoverageEligibilityRequest sync strategy" in result.output
    assert (
        "ehr: OK: reachable, auth ok; sync strategy: incremental _lastUpdated "
        "(Patient, CoverageEligibilityRequest)" in result.output
    )
    assert "t0ken-secret" not in result.output


def test_cli_check_exits_1_when_credentials_are_rejected(api, runner, tmp_path):
    """A 401 on the search: exit 1 and a line that says the credentials were rejected."""
    api["search"].respond(401)
    result = runner.invoke(
        sources_app, ["check", "ehr", "-c", str(write_config(tmp_path))], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 1
    assert "ehr: FAILED: credentials rejected (HTTP 401)" in result.output


def test_cli_check_exits_1_when_unreachable(api, runner, tmp_path):
    """An unreachable source: exit 1 and an 'unreachable' line."""
    api["metadata"].side_effect = httpx.ConnectTimeout("slow")
    result = runner.invoke(sources_app, ["check", "-c", str(write_config(tmp_path))])
    assert result.exit_code == 1
    assert "ehr: FAILED: unreachable: GET /fhir/metadata: ConnectTimeout" in result.output


def test_cli_check_honours_the_parent_config_option(api, runner, tmp_path, monkeypatch):
    """Without its own -c, the command reads the file given to `fhir-bridge -c FILE`."""
    monkeypatch.setattr(cli._State, "config", write_config(tmp_path))
    result = runner.invoke(sources_app, ["check"])
    assert result.exit_code == 0, result.output
    assert "ehr: OK" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "nope"], "no source named 'nope'"),
        (["check", "-c", "/does/not/exist.yaml"], "file not found"),
    ],
)
def test_cli_check_config_mistakes_exit_2(runner, tmp_path, args, message):
    """An unknown source name or a missing file: one error line, exit 2."""
    if "-c" not in args:
        args = [*args, "-c", str(write_config(tmp_path))]
    result = runner.invoke(sources_app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_report_notes_are_not_rich_markup(sekmet_metadata):
    """Server text with [brackets] is shown literally, not eaten as rich markup."""
    from rich.console import Console

    probe = SearchProbe("Patient", ok=False, detail="scopes ['system/*.read'] [bold]x[/]")
    report = report_for(sekmet_metadata, search=probe)
    console = Console(width=200, record=True)
    console.print(report_table(report))
    text = console.export_text()
    assert "scopes ['system/*.read'] [bold]x[/]" in text
    assert summary(report).startswith("ehr: FAILED: authenticated search failed: scopes")


def test_unknown_count_says_which_search_could_not_tell(sekmet_metadata):
    """An undeclared _count the probe could not settle names the probe's search and why."""
    from rich.console import Console

    probe = SearchProbe("Patient", ok=True, detail="", status=200, count_honoured=None)
    report = report_for(sekmet_metadata, search=probe, types=("Patient", "Appointment"))
    assert {r.count for r in report.resources} == {None}
    console = Console(width=200, record=True)
    console.print(report_table(report))
    text = console.export_text()
    assert text.count("not declared, and GET Patient?_count=1 had fewer than 2 matches") == 2
