"""The coordinator UI in headless Chromium against the real API (auth on, sample population):
sign in, work a task through its life, the patient timeline, keyboard-only use, 200% zoom,
the sources page, a concurrent change (412), a write-back conflict, and the auth-off demo."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta

import httpx
import pytest
from playwright.sync_api import Page, expect

from fhir_bridge.sync import status as sync_status
from fhir_bridge.sync.engine import TypeReport
from fhir_bridge.sync.ingest import IngestResult
from fhir_bridge.tasks.model import OutboxStatus
from tests.utils import NOW, sample
from tests.web.conftest import KEYS, LiveApp, shoot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

STORE_KEY = "fhir-bridge.credential"
PATIENT_ID = sample("Patient")[0]["id"]
BAILEY = next(r for r in sample("RelatedPerson") if r["id"] == "family-bailey-father")["patient"][
    "reference"
].split("/", 1)[1]


def sign_in(page: Page, app: LiveApp, user: str) -> None:
    """Open the UI and sign in through its form with `user`'s API key."""
    page.goto(f"{app.url}/")  # a browser asking for / lands on the UI
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("API key or token").fill(KEYS[user][0])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_contain_text(f"Signed in as {user}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Queue board")


def remember(page: Page, user: str) -> None:
    """Start signed in as `user`: the credential in sessionStorage, as the login form leaves it."""
    cred = json.dumps({"kind": "key", "value": KEYS[user][0]})
    page.add_init_script(f"sessionStorage.setItem({STORE_KEY!r}, {json.dumps(cred)})")


def overdue_in(app: LiveApp, queue: str, key: str | None = "dana") -> int:
    """The API's count of overdue tasks in `queue`."""
    headers = {"X-API-Key": KEYS[key][0]} if key else {}
    with httpx.Client(base_url=app.url, headers=headers) as api:
        return next(q["overdue"] for q in api.get("/queues").json() if q["queue"] == queue)


def first_task_link(page: Page):
    """The first task of the list shown (overdue ones come first)."""
    return page.locator("ul.tasks a.task-link").first


def test_coordinator_works_a_task_and_opens_the_timeline(page: Page, live_app: LiveApp):
    """Sign in, open a queue, claim a task, complete it, see status and history change (and the
    API agree), then open the patient's timeline."""
    sign_in(page, live_app, "dana")
    assert page.evaluate(f"sessionStorage.getItem({STORE_KEY!r})") is not None
    assert page.evaluate(f"localStorage.getItem({STORE_KEY!r})") is None
    expect(page.locator("#nav-sources")).to_be_hidden()  # a coordinator may not read /sources
    expect(page.get_by_role("heading", name=re.compile(r"^My tasks \(0\)"))).to_be_visible()
    overdue = overdue_in(live_app, "insurance")
    assert overdue > 0, "the sample has overdue insurance tasks at NOW"
    expect(page.locator(".queue-card", has_text="Insurance")).to_contain_text(
        f"{overdue} overdue task"
    )
    shoot(page, "board-signed-in")

    page.get_by_role("link", name="Insurance", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Insurance queue")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    assert page.url.endswith("#/queues/insurance")
    expect(page.locator("#overdue-tasks li.task").first).to_contain_text("Overdue: was due")
    link = first_task_link(page)
    title = link.inner_text()
    shoot(page, "queue", docs=True)
    link.click()

    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    task_id = page.url.rsplit("/", 1)[-1]
    status = page.locator("#task-status")
    expect(status).to_contain_text("Status: Open")
    expect(status).to_contain_text("Unassigned")
    expect(page.locator("#focus-summary")).to_contain_text("Status:")
    expect(page.locator("#focus-fhir")).to_be_hidden()

    page.get_by_role("button", name="Claim").click()
    expect(page.locator("#action-result")).to_contain_text("You claimed the task")
    expect(page.locator("#action-result")).to_be_focused()
    expect(status).to_contain_text("Status: In progress")
    expect(status).to_contain_text("Assigned to dana")
    expect(page.locator("#task-history")).to_contain_text("Claimed: Open → In progress")
    page.get_by_label("Add a comment").fill("Left a voicemail; will try again at 3 pm")
    page.get_by_role("button", name="Add comment").click()
    expect(page.locator("#action-result")).to_contain_text("Comment added")
    expect(page.locator("ul.comments")).to_contain_text("Left a voicemail; will try again at 3 pm")
    shoot(page, "task-detail", docs=True)

    page.get_by_label("Note for a status change (optional)").fill("Called, rebooked for Tuesday")
    page.get_by_role("button", name="Mark completed").click()
    expect(page.locator("#action-result")).to_contain_text("The task is now completed")
    expect(status).to_contain_text("Status: Completed")
    history = page.locator("#task-history")
    expect(history).to_contain_text("Changed status: In progress → Completed")
    expect(history).to_contain_text("Called, rebooked for Tuesday")
    expect(page.locator("#writeback")).to_contain_text("Pending")
    expect(page.get_by_role("button", name="Claim")).to_have_count(0)

    with live_app.api("dana") as api:
        stored = api.get(f"/tasks/{task_id}").json()
    assert (stored["task"]["status"], stored["task"]["assignee"]) == ("completed", "dana")
    assert [e["action"] for e in stored["history"]] == ["created", "claim", "comment", "status"]
    assert stored["comments"][0]["text"] == "Left a voicemail; will try again at 3 pm"
    assert stored["history"][-1]["detail"] == {"note": "Called, rebooked for Tuesday"}

    page.get_by_role("link", name="Open the patient's timeline").click()
    patient = stored["task"]["patient"].split("/", 1)[1]
    with live_app.api("dana") as api:
        name = api.get(f"/patients/ehr/{patient}/history").json()["demographics"]["name"]["value"]
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.get_by_role("heading", name="Appointments")).to_be_visible()
    expect(page.get_by_role("heading", name="Demographics")).to_be_visible()
    closed = page.locator(".group", has=page.get_by_role("heading", name=re.compile(r"^Closed")))
    expect(closed.get_by_role("link", name=title)).to_be_visible()
    shoot(page, "patient-timeline-flow")

    page.get_by_role("link", name="Show FHIR for each record").click()
    expect(page.locator("details.fhir-details").first).to_be_visible()
    assert "raw=1" in page.url


def test_keyboard_only_reaches_a_task_and_claims_it(page: Page, live_app: LiveApp):
    """With Tab and Enter only: sign in, open a queue, open a task and claim it; each new view
    puts focus on its heading."""

    def tab_to(selector: str, limit: int = 80, key: str = "Tab") -> None:
        for _ in range(limit):
            page.keyboard.press(key)
            if page.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    page.goto(f"{live_app.url}/ui/")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    tab_to("#skip-link", limit=5, key="Shift+Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    tab_to("input[name=secret]")
    page.keyboard.type(KEYS["eli"][0])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Queue board")
    expect(page.get_by_role("heading", level=1)).to_be_focused()

    tab_to("a[href='#/queues/follow-up']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Follow up queue")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    tab_to("a.task-link")
    page.keyboard.press("Enter")
    task_id = page.url.rsplit("/", 1)[-1]
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    tab_to("button#claim")
    page.keyboard.press("Enter")
    expect(page.locator("#action-result")).to_contain_text("You claimed the task")
    with live_app.api("eli") as api:
        task = api.get(f"/tasks/{task_id}").json()["task"]
    assert (task["status"], task["assignee"]) == ("in-progress", "eli")


def test_readable_at_200_percent_zoom(browser, live_app: LiveApp):
    """At 200% zoom (a 1280 px window shows 640 CSS px) no page scrolls sideways."""
    context = browser.new_context(
        viewport={"width": 640, "height": 450}, device_scale_factor=2, locale="en-US"
    )
    try:
        page = context.new_page()
        page.clock.set_fixed_time(NOW)
        remember(page, "dana")
        task = next(t for t in live_app.bridge.store.iter_tasks(queue="insurance"))
        pages = [
            "#/queues",
            "#/queues/medications",
            f"#/tasks/{task.id}",
            f"#/patients/ehr/{task.patient.split('/', 1)[1]}",
            "#/patients?name=a",
            "#/huddle",
            "#/outcomes",
            f"#/patients/ehr/{BAILEY}",  # family contacts with their sharing buttons
        ]
        overflows = {}
        for where in pages:
            page.goto(f"{live_app.url}/ui/{where}")
            heading = page.get_by_role("heading", level=1)
            expect(heading).not_to_have_text(re.compile("Loading|Sign in|Not found"))
            expect(page.locator("main[aria-busy]")).to_have_count(0)
            overflows[where] = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            if where in ("#/queues", "#/outcomes"):
                shoot(page, f"{where[2:]}-200-percent")
        assert {where: px for where, px in overflows.items() if px > 0} == {}
    finally:
        context.close()


def test_sources_page_for_an_admin(page: Page, live_app: LiveApp):
    """An admin sees the Sources nav item and per-source lag, resources and quarantine."""
    bridge = live_app.bridge
    bad = [
        {"resourceType": "Patient", "id": "bad-1", "gender": "bogus"},
        {"resourceType": "Patient", "id": "bad-2", "gender": "bogus"},
    ]
    assert bridge.ingestor.ingest("ehr", bad, "Patient").quarantined == 2
    bridge.store.set_cursor("ehr", "Appointment", (NOW - timedelta(minutes=5)).isoformat())
    # What sync processes recorded in the store (sync/status.py): Patient fine, Appointment
    # failing twice in a row.
    done = IngestResult(received=30, stored=30)
    sync_status.record(bridge.store, "ehr", TypeReport("Patient", result=done), NOW)
    for _ in range(2):
        failed = TypeReport("Appointment", error="GET Appointment on source ehr: HTTP 503")
        sync_status.record(bridge.store, "ehr", failed, NOW)
    sign_in(page, live_app, "ada")
    page.get_by_role("link", name="Sources").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sources")
    section = page.locator("section", has=page.get_by_role("heading", name="ehr"))
    expect(section).to_contain_text("Last sync")
    expect(section).to_contain_text("circuit closed")
    resources = section.locator("table.resources")
    expect(resources.locator("tr", has_text="Patient")).to_contain_text("30")
    expect(resources.locator("tr", has_text="Appointment")).to_contain_text("5 minutes behind")
    expect(resources.locator("tr", has_text="Appointment")).to_contain_text(
        "(2 times in a row): GET Appointment on source ehr: HTTP 503"
    )
    expect(resources.locator("tr", has_text="Patient")).to_contain_text("30 received, 30 stored")
    last_error = section.locator(".fact", has_text="Last error")
    expect(last_error).to_contain_text("GET Appointment on source ehr: HTTP 503")
    expect(section).to_contain_text("Quarantine: 2 resources refused by validation")
    reasons = section.locator("table.quarantine tbody tr")
    expect(reasons).to_have_count(1)  # the same reason twice: one row, counted
    expect(reasons).to_contain_text("Patient")
    expect(reasons.locator("td").last).to_have_text("2")
    shoot(page, "sources", docs=True)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem({STORE_KEY!r})") is None


def test_coordinator_is_refused_the_sources_page(page: Page, live_app: LiveApp):
    """A coordinator who types the address gets the API's refusal in words."""
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/sources")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("main")).to_contain_text("needs one of the roles")


def test_wrong_key_is_refused(page: Page, live_app: LiveApp):
    """A key the API does not know is refused with its reason, and nothing is kept."""
    page.goto(f"{live_app.url}/ui/")
    page.get_by_label("API key or token").fill("fbk_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Not accepted: unknown API key")
    assert page.evaluate(f"sessionStorage.getItem({STORE_KEY!r})") is None


def test_someone_else_changed_the_task(page: Page, live_app: LiveApp):
    """A claim on a task another coordinator changed meanwhile is refused (412): the UI says
    so and shows the task as it is now."""
    task = next(
        t for t in live_app.bridge.store.iter_tasks(queue="medications") if t.status.value == "open"
    )
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/tasks/{task.id}")
    expect(page.locator("#task-status")).to_contain_text("Unassigned")
    with live_app.api("eli") as api:
        assert api.post(f"/tasks/{task.id}/claim", json={"coordinator": "eli"}).is_success
    page.get_by_role("button", name="Claim").click()
    expect(page.locator("#action-result")).to_contain_text("Someone else changed this task")
    expect(page.locator("#task-status")).to_contain_text("Assigned to eli")
    expect(page.locator("#held-by")).to_contain_text("eli is working on this task")
    expect(page.get_by_role("button", name="Claim")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Release"))).to_have_count(0)
    assert live_app.bridge.store.get_task(task.id).assignee == "eli"
    page.get_by_label("Assign to (a coordinator's id)").fill("dana")
    page.get_by_role("button", name="Assign", exact=True).click()
    expect(page.locator("#action-result")).to_contain_text("The task is assigned to dana")
    expect(page.locator("#task-history")).to_contain_text("from eli to dana")
    assert live_app.bridge.store.get_task(task.id).assignee == "dana"


def test_writeback_conflict_shows_the_field_diff(page: Page, live_app: LiveApp):
    """A write-back the EHR refused as a conflict shows ours / theirs / was per field."""
    task = next(
        t for t in live_app.bridge.store.iter_tasks(queue="records") if t.status.value == "open"
    )
    with live_app.api("ada") as api:
        done = api.post(
            f"/tasks/{task.id}/status", json={"coordinator": "ada", "status": "completed"}
        )
        assert done.is_success
    [entry] = live_app.bridge.store.list_outbox(task_id=task.id)
    detail = {
        "resource": task.focus,
        "read_version": "3",
        "current_version": "4",
        "fields": [{"path": "status", "ours": "fulfilled", "theirs": "cancelled", "was": "booked"}],
    }
    live_app.bridge.store.outbox_park(
        entry.id, OutboxStatus.CONFLICT, "status changed in the EHR", detail
    )
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/tasks/{task.id}")
    writeback = page.locator("#writeback")
    expect(writeback).to_contain_text("Conflict")
    expect(writeback).to_contain_text("the EHR changed the record since we read it")
    row = writeback.locator("tr", has_text="status")
    expect(row).to_contain_text('"fulfilled"')
    expect(row).to_contain_text('"cancelled"')
    expect(row).to_contain_text('"booked"')


def test_demo_mode_needs_no_sign_in(page: Page, demo_app: LiveApp):
    """With auth off the UI says so, acts as the configured demo coordinator, and its changes
    are recorded under that name."""
    page.goto(f"{demo_app.url}/ui/")
    expect(page.locator("#who")).to_contain_text("Demo mode")
    expect(page.locator("#who")).to_contain_text("demo-coordinator")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.get_by_role("link", name="Insurance", exact=True).click()
    overdue = overdue_in(demo_app, "insurance", key=None)
    expect(page.get_by_role("heading", name=f"Overdue ({overdue})")).to_be_visible()
    expect(page.locator("#overdue-tasks li.task").first).to_contain_text("Overdue: was due")
    first_task_link(page).click()
    task_id = page.url.rsplit("/", 1)[-1]
    page.get_by_role("button", name="Claim").click()
    expect(page.locator("#task-status")).to_contain_text("Assigned to demo-coordinator")
    assert demo_app.bridge.store.get_task(task_id).assignee == "demo-coordinator"
    page.get_by_role("link", name="Queue board").click()
    expect(page.get_by_role("heading", name="My tasks (1)")).to_be_visible()
    expect(page.locator("#my-tasks li.task")).to_contain_text("Assigned to demo-coordinator")
    shoot(page, "board", docs=True)


def test_queue_filters_and_show_more(page: Page, live_app: LiveApp):
    """A long queue pages with "Show more" (focus goes to the first new task); the kind filter
    narrows the list and is kept in the address."""
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/queues/medications")
    tasks = page.locator("#queue-tasks li.task")
    expect(tasks).to_have_count(25)
    page.get_by_role("button", name="Show more tasks").click()
    expect(tasks).to_have_count(50)
    expect(tasks.nth(25).locator("a")).to_be_focused()
    page.get_by_label("Kind").fill("confirm-stopped-medication")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"#/queues/medications\?kind=confirm-stopped-medication$"))
    with live_app.api("dana") as api:
        wanted = api.get(
            "/queues/medications/tasks",
            params={"kind": "confirm-stopped-medication", "status": ["open", "in-progress"]},
        ).json()["total"]
    assert wanted > 0
    expect(tasks).to_have_count(min(wanted, 25))
    for text in tasks.all_inner_texts():
        assert "Confirm stopped medication" in text


def test_patient_search_leads_to_the_timeline(page: Page, live_app: LiveApp):
    """Searching by name lists matching patients; a result opens the timeline."""
    patient = live_app.bridge.store.get_resource("ehr", "Patient", PATIENT_ID)
    family = patient.body["name"][0]["family"]
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/patients")
    page.get_by_label("Name").fill(family)
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"#/patients\?name="))
    results = page.locator("#patient-results")
    expect(results).to_contain_text(family)
    results.get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(family)
    expect(page.get_by_role("heading", name="Records of this person")).to_be_visible()


def test_coordinator_restricted_to_some_queues(page: Page, live_app: LiveApp):
    """A coordinator limited to the records queue gets a working board: links only to that
    queue, counts for the others, and their own tasks gathered from their queues."""
    task = next(
        t for t in live_app.bridge.store.iter_tasks(queue="records") if t.status.value == "open"
    )
    with live_app.api("rita") as api:
        assert api.post(f"/tasks/{task.id}/claim", json={"coordinator": "rita"}).is_success
    remember(page, "rita")
    page.goto(f"{live_app.url}/ui/#/queues")
    expect(page.get_by_role("heading", name="My tasks (1)")).to_be_visible()
    expect(page.locator("#my-tasks")).to_contain_text(task.title)
    expect(page.get_by_role("link", name="Records", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Insurance", exact=True)).to_have_count(0)
    expect(page.locator(".queue-card", has_text="Insurance")).to_contain_text(
        "Not one of your queues"
    )


def test_timeline_links_a_second_source_and_shows_conflicts(page: Page, live_app: LiveApp):
    """A record of the same person in a second EHR (same MRN) is linked with its reason; a
    birth date the two disagree on is shown with both values; a mirrored appointment is listed
    once, naming the other source."""
    patient = copy.deepcopy(sample("Patient")[3])
    appointment = next(
        a
        for a in sample("Appointment")
        if any(p["actor"].get("reference") == f"Patient/{patient['id']}" for p in a["participant"])
    )
    patient["birthDate"] = "1901-01-01"
    live_app.bridge.ingestor.ingest("ehr2", [patient], "Patient")
    live_app.bridge.ingestor.ingest("ehr2", [appointment], "Appointment")
    remember(page, "dana")
    page.goto(f"{live_app.url}/ui/#/patients/ehr/{patient['id']}")
    links = page.locator("#links")
    expect(links.locator("li")).to_have_count(2)
    expect(links).to_contain_text("ehr2")
    expect(links).to_contain_text("hospital.smarthealthit.org")
    birth = page.locator("#demographics .fact", has_text="Birth date")
    expect(birth).to_contain_text("Sources disagree")
    expect(birth).to_contain_text("ehr2")
    expect(birth).to_contain_text("1901")
    mirrored = page.locator("li.record", has_text="Also in: ehr2")
    expect(mirrored).to_have_count(1)
    shoot(page, "patient-timeline", docs=True)
