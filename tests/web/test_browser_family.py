"""The huddle list, the outcome dashboard, family contacts and admins' record links in
headless Chromium against the real API (auth on, a fresh sample population for this module)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.utils import sample
from tests.web.conftest import LiveApp, shoot
from tests.web.test_browser import remember

pytestmark = [pytest.mark.browser, pytest.mark.integration]

FROM, TO = "2026-10-30", "2026-11-26"  # the dashboard's default: 28 days up to the sample's NOW
CHARTS = {
    "chart-no-show-week",
    "chart-no-show-clinic",
    "chart-turnaround",
    "chart-tasks-per-day",
    "chart-sla",
    "chart-workload",
}


def related(person_id: str) -> str:
    """The id of the patient a sample RelatedPerson belongs to."""
    rp = next(r for r in sample("RelatedPerson") if r["id"] == person_id)
    return rp["patient"]["reference"].split("/", 1)[1]


def test_huddle_groups_tasks_by_patient_and_prints(page: Page, live_app: LiveApp):
    """The huddle page lists the API's patients in its order with each task and its reasons in
    words, filters by queue, and prints without navigation or buttons."""
    with live_app.api("dana") as api:
        huddle = api.get("/huddle").json()
        first = huddle["patients"][0]
        history = api.get(f"/patients/ehr/{first['patient'].split('/', 1)[1]}/history").json()
        insurance = api.get("/huddle", params={"queue": "insurance"}).json()
    assert huddle["counts"]["waiting"] > 0 and huddle["counts"]["overdue"] > 0
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/")
    page.get_by_role("link", name="Huddle").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Daily huddle")
    counts = page.locator("#huddle-counts")
    c = huddle["counts"]
    expect(counts).to_contain_text(f"{c['tasks']} tasks for {c['patients']} patients")
    expect(counts).to_contain_text(f"{c['overdue']} overdue")
    expect(counts).to_contain_text(f"{c['waiting']} waiting on another team")
    groups = page.locator("section.huddle-patient")
    expect(groups).to_have_count(len(huddle["patients"]))
    for i, group in enumerate(huddle["patients"]):
        shown = groups.nth(i).locator("li.huddle-task")
        expect(shown).to_have_count(len(group["tasks"]))
        ids = [shown.nth(j).get_attribute("data-task-id") for j in range(len(group["tasks"]))]
        assert ids == [t["id"] for t in group["tasks"]]
    name = history["demographics"]["name"]["value"]
    expect(groups.first.get_by_role("heading", level=2)).to_have_text(name)
    waiting = next(t for g in huddle["patients"] for t in g["tasks"] if "waiting" in t["reasons"])
    entry = page.locator(f"li.huddle-task[data-task-id='{waiting['id']}']")
    expect(entry).to_contain_text("Waiting on another team: ")
    expect(entry.get_by_role("link").nth(1)).to_have_attribute(
        "href", f"#/tasks/{waiting['waiting_on'][0]['task_id']}"
    )
    expect(page.locator("li.huddle-task", has_text="Overdue: was due").first).to_be_visible()
    shoot(page, "huddle", docs=True)

    page.emulate_media(media="print")
    expect(page.locator("#nav")).to_be_hidden()
    expect(page.get_by_role("button", name="Print")).to_be_hidden()
    expect(groups.first).to_be_visible()
    assert groups.first.evaluate("e => getComputedStyle(e).breakInside") == "avoid"
    assert page.evaluate("getComputedStyle(document.body).color") == "rgb(0, 0, 0)"
    shoot(page, "huddle-print")
    page.emulate_media(media="screen")
    expect(page.get_by_role("button", name="Print")).to_be_visible()

    page.get_by_label("Queue", exact=True).select_option("insurance")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"#/huddle\?queue=insurance$"))
    expect(page.locator(".huddle-scope")).to_contain_text("Insurance queue")
    expect(groups).to_have_count(len(insurance["patients"]))
    assert len(insurance["patients"]) < len(huddle["patients"])


def bars(page: Page, chart: str):
    """The bars (keyboard buttons) of one chart."""
    return page.locator(f"#{chart} svg .bar")


def test_outcome_dashboard_draws_the_api_figures(page: Page, live_app: LiveApp):
    """Each figure of GET /outcomes is a chart (one SVG with a title and a description) with a
    bar per value; a bar lists the tasks behind it; the CSV downloads with the credential."""
    store = live_app.bridge.store
    outreach = next(t for t in store.iter_tasks(queue="scheduling") if t.kind == "no-show-outreach")
    late = next(
        t for t in store.iter_tasks(queue="insurance") if t.kind == "verify-eligibility" and t.due
    )
    with live_app.api("dana") as api:
        for task in (outreach, late):
            assert api.post(f"/tasks/{task.id}/claim", json={"coordinator": "dana"}).is_success
            done = {"coordinator": "dana", "status": "completed"}
            assert api.post(f"/tasks/{task.id}/status", json=done).is_success
        data = api.get("/outcomes", params={"from": FROM, "to": TO}).json()
        csv_text = api.get("/outcomes.csv", params={"from": FROM, "to": TO}).text
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/")
    page.get_by_role("link", name="Outcomes").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Outcomes")
    expect(page.get_by_label("From", exact=True)).to_have_value(FROM)
    expect(page.get_by_label("To", exact=True)).to_have_value(TO)
    for chart in CHARTS:
        figure = page.locator(f"figure#{chart}")
        expect(figure.locator("svg")).to_have_count(1)
        expect(figure.locator("svg > title")).not_to_have_text("")
        expect(figure.locator("svg > desc")).not_to_have_text("")
        expect(figure.locator("details summary")).to_have_text("Show the data")

    def rated(rows):
        return [r for r in rows if r["rate"] is not None]

    turnaround = [
        d for d in (data["approval_turnaround"], data["no_show_to_outreach"]) if d["count"]
    ]
    expected = {
        "chart-no-show-week": len(rated(data["no_show_by_week"])),
        "chart-no-show-clinic": len(rated(data["no_show_by_clinic"])),
        "chart-turnaround": 2 * len(turnaround),
        "chart-tasks-per-day": 2 * len({r["day"] for r in data["tasks_per_day"]}),
        "chart-sla": len(rated(data["sla"])),
        "chart-workload": 3 * len(data["workload"]),
    }
    assert expected["chart-turnaround"] == 4 and expected["chart-workload"] >= 3
    for chart, count in expected.items():
        expect(bars(page, chart)).to_have_count(count)
    overall = data["no_show_overall"]
    expect(page.locator("#no-show-overall")).to_contain_text(
        f"{overall['missed']} of {overall['kept'] + overall['missed']}"
    )
    shoot(page, "outcomes", docs=True)

    week = next(r for r in data["no_show_by_week"] if r["task_ids"])
    bar = page.locator(f"#chart-no-show-week .bar[data-category='{week['group']}']")
    bar.click()
    expect(bar).to_have_attribute("aria-pressed", "true")
    panel = page.locator("#chart-no-show-week-ids")
    links = panel.get_by_role("link")
    expect(links).to_have_count(len(week["task_ids"]))
    expect(panel).to_contain_text(week["appointments"][0])
    clinic = next(r for r in data["no_show_by_clinic"] if r["task_ids"])
    key = page.locator(f"#chart-no-show-clinic .bar[data-category='{clinic['group']}']")
    key.focus()
    page.keyboard.press("Enter")  # bars are keyboard buttons too
    clinic_links = page.locator("#chart-no-show-clinic-ids").get_by_role("link")
    expect(clinic_links).to_have_count(len(clinic["task_ids"]))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename == f"outcomes-{FROM}-{TO}.csv"
    with open(download.path(), encoding="utf-8") as handle:
        assert handle.read() == csv_text
    links.first.click()
    expect(page).to_have_url(re.compile(f"#/tasks/{week['task_ids'][0]}$"))
    expect(page.locator("#task-status")).to_be_visible()


def test_outcome_dashboard_scoped_to_one_queue(page: Page, live_app: LiveApp):
    """Choosing a queue reloads the dashboard with that queue's figures only (the SLA chart
    then has bars for "all" and that queue at most) and the CSV carries the same scope."""
    with live_app.api("dana") as api:
        scoped = api.get("/outcomes", params={"from": FROM, "to": TO, "queue": "insurance"})
        assert scoped.status_code == 200
        data = scoped.json()
        csv_text = api.get(
            "/outcomes.csv", params={"from": FROM, "to": TO, "queue": "insurance"}
        ).text
    assert {r["queue"] for r in data["tasks_per_day"]} <= {"insurance"}
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/outcomes")
    page.get_by_label("Queue", exact=True).select_option("insurance")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(page).to_have_url(re.compile(rf"#/outcomes\?from={FROM}&to={TO}&queue=insurance$"))
    expect(page.get_by_label("Queue", exact=True)).to_have_value("insurance")
    rated = [r for r in data["sla"] if r["rate"] is not None]
    expect(bars(page, "chart-sla")).to_have_count(len(rated))
    days = {r["day"] for r in data["tasks_per_day"]}
    expect(bars(page, "chart-tasks-per-day")).to_have_count(2 * len(days))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    with open(info.value.path(), encoding="utf-8") as handle:
        assert handle.read() == csv_text


def test_coordinator_sets_and_clears_a_family_sharing_flag(page: Page, live_app: LiveApp):
    """A contact no consent covers can be marked authorized and cleared again (the API agrees);
    a contact the patient's Consent decides shows why it cannot be changed."""
    patient = related("family-bailey-father")
    ref = "RelatedPerson/family-bailey-father"
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/patients/ehr/{patient}")
    contact = page.locator(f"li.contact[data-contact='{ref}']")
    expect(contact).to_contain_text("Russell Orn")
    expect(contact).to_contain_text("Father")
    expect(contact).to_contain_text("Phone: 555-0104")
    expect(contact).to_contain_text("✗ Not authorized")
    expect(contact).to_contain_text("No consent on file")
    contact.get_by_role("button", name="Authorize sharing with Russell Orn").click()
    expect(page.locator("#contacts-result")).to_be_focused()
    expect(page.locator("#contacts-result")).to_contain_text("now authorized")
    expect(contact).to_contain_text("✓ Authorized")
    expect(contact).to_contain_text("Marked as authorized by coordinator dana")
    shoot(page, "patient-contacts")

    def api_contact() -> dict:
        with live_app.api("dana") as api:
            found = api.get(
                "/family/contacts", params={"source": "ehr", "patient": f"Patient/{patient}"}
            ).json()
        return next(c for c in found if c["reference"] == ref)

    after = api_contact()
    assert after["authorized"] is True
    assert after["basis"].startswith("set by coordinator dana on ")
    contact.get_by_role("button", name="Clear the coordinator's decision").click()
    expect(page.locator("#contacts-result")).to_contain_text("is cleared")
    expect(contact).to_contain_text("✗ Not authorized")
    assert (api_contact()["authorized"], api_contact()["basis"]) == (False, "no consent on file")

    page.goto(f"{live_app.url}/ui/#/patients/ehr/{related('family-deb-spouse')}")
    deb = page.locator("li.contact[data-contact='RelatedPerson/family-deb-spouse']")
    expect(deb).to_contain_text("✓ Authorized")
    expect(deb).to_contain_text("consent on file (Consent/family-consent-deb) allows")
    expect(deb).to_contain_text("cannot be changed here")
    expect(deb.get_by_role("button")).to_have_count(0)
    expect(page.get_by_role("heading", name="Link or separate records (admin)")).to_have_count(0)


def test_admin_links_separates_and_undoes(page: Page, live_app: LiveApp):
    """An admin links a second record (the timeline lists it with who linked it), then says it
    is not the same person, then undoes that decision; the API holds each result."""
    a, b = sample("Patient")[20]["id"], sample("Patient")[21]["id"]
    remember(page, "ada")
    page.goto(f"{live_app.url}/ui/#/patients/ehr/{a}")
    links = page.locator("#links li")
    expect(links).to_have_count(1)
    page.get_by_label("Patient id in that source").fill(b)
    page.get_by_label("Note (why they are the same person)").fill("Checked at the front desk")
    page.get_by_role("button", name="Link this record").click()
    expect(page.locator("#links-result")).to_contain_text(f"Linked ehr/{b}")
    expect(page.locator("#links-result")).to_be_focused()
    expect(links).to_have_count(2)
    expect(links.nth(1)).to_contain_text("linked by ada")
    expect(page.locator("#link-decisions")).to_contain_text("Checked at the front desk")
    shoot(page, "patient-admin-links")
    with live_app.api("ada") as api:
        [decision] = api.get("/patients/links").json()
    assert (decision["same_person"], decision["by"]) == (True, "ada")

    page.get_by_role("button", name=f"Not the same person: ehr/{b}").click()
    expect(page.locator("#links-result")).to_contain_text("kept apart")
    expect(links).to_have_count(1)
    expect(page.locator("#link-decisions")).to_contain_text("Kept apart (not the same person)")
    with live_app.api("ada") as api:
        [decision] = api.get("/patients/links").json()
    assert decision["same_person"] is False

    page.locator("#link-decisions").get_by_role("button", name=re.compile("^Undo")).click()
    expect(page.locator("#links-result")).to_contain_text("undone")
    expect(page.locator("#link-decisions")).to_contain_text("None")
    with live_app.api("ada") as api:
        assert api.get("/patients/links").json() == []
