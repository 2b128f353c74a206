// The daily huddle (GET /huddle): the tasks that need the team — blocked, in conflict, overdue,
// or waiting on another team — grouped by patient, with counts; printable (app.css @media print).

import { get } from "./api.js";
import { badge, field, h, heading, notice } from "./dom.js";
import { dueWords, priorityWords, sentence, when } from "./format.js";

const REASONS = {
  blocked: "Blocked",
  conflict: "In conflict",
  overdue: "Overdue",
  waiting: "Waiting on another team",
};

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

function taskHref(id) {
  return `#/tasks/${encodeURIComponent(id)}`;
}

/** What a task waits on, by queue and kind: one link, or numbered links for several. */
function waitingOn(waits) {
  const groups = new Map();
  for (const w of waits) {
    const key = `${w.queue}\u0000${w.kind}`;
    if (!groups.has(key)) groups.set(key, { queue: w.queue, kind: w.kind, ids: [] });
    groups.get(key).ids.push(w.task_id);
  }
  return [...groups.values()].map((g, i) => {
    const what = `${sentence(g.kind)} (${sentence(g.queue)} queue)`;
    const sep = i ? "; " : "";
    if (g.ids.length === 1) return [sep, h("a", { href: taskHref(g.ids[0]) }, what)];
    const links = g.ids.map((id, n) => [n ? " " : "", h("a", { href: taskHref(id), "aria-label": `${what}, task ${n + 1} of ${g.ids.length}` }, String(n + 1))]);
    return [sep, `${what}, ${g.ids.length} tasks`, h("span", { class: "no-print" }, ": ", links)];
  });
}

/** Each reason a task is on the list, as a sentence (with links to what it waits on). */
function reasonLines(task) {
  const lines = [];
  for (const reason of task.reasons) {
    if (reason === "overdue") lines.push([`${REASONS.overdue}: `, dueWords(task).replace(/^Overdue: /, "")]);
    else if (reason === "waiting") {
      lines.push([`${REASONS.waiting}: `, waitingOn(task.waiting_on)]);
    } else if (reason === "blocked" || reason === "conflict") {
      const entries = task.outbox.filter((o) => o.status === (reason === "blocked" ? "dead" : "conflict"));
      const why = reason === "blocked"
        ? "the EHR refused the change, or retries ran out"
        : "the EHR changed the record since the bridge read it; open the task to compare";
      const detail = entries.map((o) => o.error || o.reason).filter(Boolean).join("; ");
      lines.push([`${REASONS[reason]}: ${why}`, detail ? ` (${detail})` : ""]);
    } else {
      lines.push([sentence(reason)]);
    }
  }
  return h("ul", { class: "reasons" }, lines.map((parts) => h("li", {}, "⚠ ", parts)));
}

function taskEntry(task) {
  return h(
    "li",
    { class: "task huddle-task", dataset: { taskId: task.id } },
    h("a", { href: taskHref(task.id), class: "task-link" }, task.title),
    h("p", { class: "badges" }, task.reasons.map((r) => badge(REASONS[r] || sentence(r), r === "waiting" ? "" : "overdue"))),
    reasonLines(task),
    h(
      "p",
      { class: "task-meta" },
      h("span", {}, `${sentence(task.queue)} queue`),
      h("span", {}, `Priority: ${priorityWords(task.priority)}`),
      h("span", {}, task.assignee ? `Assigned to ${task.assignee}` : "Unassigned"),
      task.reasons.includes("overdue") ? null : h("span", {}, dueWords(task)),
    ),
  );
}

function patientId(group) {
  return group.patient.replace(/^Patient\//, "");
}

function patientGroup(group, name) {
  const id = patientId(group);
  const href = `#/patients/${encodeURIComponent(group.source)}/${encodeURIComponent(id)}`;
  return h(
    "section",
    { class: "huddle-patient", "aria-label": name || `Patient ${id}` },
    h("h2", {}, h("a", { href }, name || `Patient record ${id}`)),
    h("p", { class: "small" }, `Record ${id} in ${group.source} · ${plural(group.tasks.length, "task")}`),
    h("ul", { class: "tasks" }, group.tasks.map(taskEntry)),
  );
}

function counts(c) {
  const items = [
    [`${plural(c.tasks, "task")} for ${plural(c.patients, "patient")}`, "total"],
    [`${c.overdue} overdue`, "overdue"],
    [`${c.waiting} waiting on another team`, "waiting"],
    [`${c.blocked} blocked`, "blocked"],
    [`${c.conflict} in conflict`, "conflict"],
  ];
  return h("ul", { class: "huddle-counts", id: "huddle-counts" }, items.map(([text, key]) => h("li", { dataset: { count: key } }, text)));
}

function filterForm(queues, params, navigate) {
  const queue = h(
    "select",
    { name: "queue" },
    h("option", { value: "" }, "All queues"),
    queues.map((q) => h("option", { value: q, selected: params.get("queue") === q }, sentence(q))),
  );
  const assignee = h("input", { type: "text", name: "assignee", value: params.get("assignee") || "", autocomplete: "off" });
  const form = h(
    "form",
    { class: "filters no-print", "aria-label": "Which tasks" },
    field("Queue", queue),
    field("Assigned to", assignee, "A coordinator's id; empty for everyone"),
    h(
      "div",
      { class: "form-actions" },
      h("button", { type: "submit" }, "Show"),
      h("button", { type: "button", class: "secondary", id: "print", on: { click: () => window.print() } }, "Print"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (queue.value) query.set("queue", queue.value);
    if (assignee.value.trim()) query.set("assignee", assignee.value.trim());
    navigate(`#/huddle${query.toString() ? `?${query}` : ""}`);
  });
  return form;
}

/** #/huddle?queue=&assignee= */
export async function huddleView({ params, navigate }) {
  const filters = { queue: params.get("queue") || "", assignee: params.get("assignee") || "" };
  const [queues, huddle] = await Promise.all([get("/queues"), get("/huddle", filters)]);
  const data = huddle.data;
  const scope = [
    filters.queue ? `${sentence(filters.queue)} queue` : "All queues",
    filters.assignee ? `assigned to ${filters.assignee}` : null,
  ].filter(Boolean).join(", ");
  const title = "Daily huddle";
  const nodes = [
    heading(1, title),
    h("p", { class: "huddle-scope" }, `${scope}. The open tasks that need the team: blocked, in conflict, overdue, or waiting on another team. As of ${when(data.at)}.`),
    filterForm(queues.data.map((q) => q.queue), params, navigate),
    counts(data.counts),
  ];
  if (!data.patients.length) nodes.push(notice("Nothing needs the team: no task is blocked, in conflict, overdue or waiting.", "success"));
  nodes.push(h("div", { id: "huddle-patients" }, data.patients.map((g) => patientGroup(g, g.name))));
  return { title, nodes };
}
