"""The integration engineer's tools: mappings check, mappings test, mappings explain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fhir_bridge.cli import app
from fhir_bridge.mapping import RuleSet
from fhir_bridge.mapping.fixtures import run_folder
from tests.utils import ROOT

runner = CliRunner()

BROKEN = """\
rules:
  - id: one
    resource: Appointment
    when: "status = = 'noshow'"
    task:
      queue: scheduling
      kind: one
      title: One
      patient: "participant.actor.reference.first()"

  - id: two
    resource: Appointment
    when: "status = 'noshow'"
    task:
      queue: schedulin
      kind: two
      title: Two
      patient: "participant.actor.reference.first()"

  - id: one
    resource: Appointment
    when: "status = 'booked'"
    task:
      queue: scheduling
      kind: three
      title: Three
      patient: "participant.actor.reference.first()"
"""


def broken_folder(tmp_path: Path) -> Path:
    """A mapping folder with the default queues and one file holding three mistakes."""
    folder = tmp_path / "maps"
    folder.mkdir()
    shutil.copy(ROOT / "mappings" / "queues.yaml", folder / "queues.yaml")
    (folder / "bad.yaml").write_text(BROKEN)
    return folder


def test_check_reports_three_errors_with_their_lines_and_exits_1(tmp_path):
    """A FHIRPath typo, an unknown queue and a duplicate id: three lines, each at its place."""
    folder = broken_folder(tmp_path)
    result = runner.invoke(app, ["mappings", "check", str(folder / "bad.yaml")])
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(folder))]
    assert len(lines) == 3, result.stdout
    bad = folder / "bad.yaml"
    assert lines[0].startswith(f"{bad}:4:11: one: when: FHIRPath: ")
    assert "extraneous input '='" in lines[0]
    assert lines[1].startswith(f"{bad}:15:14: two: task.queue: unknown queue 'schedulin'")
    assert lines[2].startswith(f"{bad}:20:9: one: id: duplicate rule id")


def test_check_accepts_the_default_rules():
    """The shipped mapping folder has no problem."""
    result = runner.invoke(app, ["mappings", "check", "--dir", str(ROOT / "mappings")])
    assert result.exit_code == 0, result.stdout
    assert "ok: 19 rules in 6 files" in result.stdout


def test_every_default_rule_passes_its_golden_tests_and_has_one():
    """`mappings test` passes, and every default rule opens a task in at least one case."""
    rules = RuleSet.load(ROOT / "mappings")
    results = run_folder(ROOT / "mappings" / "tests", rules)
    assert [r.failures for r in results if not r.ok] == []
    covered: set[str] = set()
    for path in (ROOT / "mappings" / "tests").glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["cases"]:
            covered |= set(case.get("expect", {}))
    assert covered == {r.id for r in rules.rules}


def test_golden_test_failure_shows_a_readable_diff(tmp_path):
    """A wrong expectation fails with the rule, the field, what was expected and what came."""
    folder = tmp_path / "maps"
    shutil.copytree(ROOT / "mappings", folder)
    case = folder / "tests" / "wrong.yaml"
    case.write_text(
        'now: "2026-11-26T12:00:00Z"\n'
        "cases:\n"
        "  - name: wrong priority\n"
        "    resource: {resourceType: Appointment, id: a, status: noshow,"
        ' start: "2026-11-20T10:00:00Z", participant: [{actor: {reference: Patient/p}}]}\n'
        "    expect:\n"
        "      no-show-outreach: {priority: routine}\n"
    )
    result = runner.invoke(app, ["mappings", "test", "--dir", str(folder)])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "wrong priority" in result.stdout
    assert "no-show-outreach: task.priority: expected 'routine', got 'urgent'" in result.stdout


def test_explain_shows_each_expression_and_the_task(tmp_path):
    """explain prints the lets, the patient, `when` with its value, and the resulting task."""
    resource = tmp_path / "appt.json"
    resource.write_text(
        json.dumps(
            {
                "resourceType": "Appointment",
                "id": "a1",
                "status": "noshow",
                "start": "2026-11-20T10:00:00Z",
                "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
            }
        )
    )
    args = [
        "mappings",
        "explain",
        "no-show-outreach",
        str(resource),
        "--now",
        "2026-11-26T12:00:00Z",
    ]
    result = runner.invoke(app, [*args, "--dir", str(ROOT / "mappings")])
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "let %visit = " in out
    assert "when = status = 'noshow' and start >= %now - 30 days\n      -> [true]" in out
    assert "result: a task" in out
    assert "due: 2026-11-28T12:00:00+00:00" in out


def test_explain_says_why_no_task(tmp_path):
    """For a resource the rule does not match, explain gives the reason and the close case."""
    resource = tmp_path / "appt.json"
    resource.write_text(
        json.dumps(
            {
                "resourceType": "Appointment",
                "id": "a1",
                "status": "noshow",
                "start": "2026-08-01T10:00:00Z",
                "participant": [{"actor": {"reference": "Patient/p1"}}],
            }
        )
    )
    args = [
        "mappings",
        "explain",
        "no-show-outreach",
        str(resource),
        "--now",
        "2026-11-26T12:00:00Z",
    ]
    result = runner.invoke(app, [*args, "--dir", str(ROOT / "mappings")])
    assert result.exit_code == 0
    assert "result: no task, because 'when' is not true" in result.stdout
    assert "an open task would close as cancelled" in result.stdout
