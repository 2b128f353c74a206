// The queue board (my tasks, then every queue with its counts) and one queue's task list
// with filters and cursor paging. Order is the API's: priority, then due; overdue first.

import { get } from "./api.js";
import { badge, field, h, heading, section } from "./dom.js";
import { dueWords, isOverdue, priorityWords, sentence, statusWords } from "./format.js";
import { coordinator, myQueues } from "./session.js";

const ACTIVE = ["open", "in-progress"];
const PAGE = 25;
const PRIORITY_RANK = { stat: 0, asap: 1, urgent: 2, routine: 3 };

/** One task as a list item: a link to it, then its status, priority and due in words. */
export function taskItem(task, { showQueue = false, now = Date.now() } = {}) {
  const overdue = isOverdue(task, now);
  const meta = [
    badge(statusWords(task.status), `status-${task.status}`),
    badge(`Priority: ${priorityWords(task.priority)}`, task.priority === "routine" ? "" : "priority-high"),
    overdue ? badge("Overdue", "overdue") : null,
  ];
  const lines = [
    h("span", { class: overdue ? "due overdue-text" : "due" }, overdue ? "⚠ " : "", dueWords(task, now)),
    h("span", {}, task.assignee ? `Assigned to ${task.assignee}` : "Unassigned"),
    h("span", {}, sentence(task.kind)),
    showQueue ? h("span", {}, `Queue: ${sentence(task.queue)}`) : null,
  ];
  return h(
    "li",
    { class: overdue ? "task overdue" : "task", dataset: { taskId: task.id, kind: task.kind } },
    h("a", { href: `#/tasks/${encodeURIComponent(task.id)}`, class: "task-link" }, task.title),
    h("p", { class: "badges" }, meta),
    h("p", { class: "task-meta" }, lines),
  );
}

function byPriorityThenDue(a, b) {
  const rank = (PRIORITY_RANK[a.priority] ?? 9) - (PRIORITY_RANK[b.priority] ?? 9);
  if (rank) return rank;
  return (a.due ? Date.parse(a.due) : Infinity) - (b.due ? Date.parse(b.due) : Infinity);
}

async function myTasks() {
  const me = coordinator();
  const params = { assignee: me, status: ACTIVE, limit: 100 };
  const queues = myQueues();
  if (queues === null) return (await get("/tasks", params)).data.items;
  // A coordinator restricted to some queues lists each of them (GET /tasks needs ?queue=).
  const pages = await Promise.all(queues.map((q) => get(`/queues/${encodeURIComponent(q)}/tasks`, params)));
  return pages.flatMap((p) => p.data.items).sort(byPriorityThenDue);
}

function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

function queueCard(queue) {
  const allowed = myQueues();
  const mayWork = allowed === null || allowed.includes(queue.queue);
  const name = sentence(queue.queue);
  const counts = queue.counts || {};
  return h(
    "li",
    { class: queue.overdue ? "queue-card has-overdue" : "queue-card" },
    h("h3", {}, mayWork ? h("a", { href: `#/queues/${encodeURIComponent(queue.queue)}` }, name) : name),
    h(
      "p",
      { class: "big" },
      `${queue.open} to do`,
      h("span", { class: "small" }, ` (${counts.open || 0} open, ${counts["in-progress"] || 0} in progress)`),
    ),
    h(
      "ul",
      { class: "plain" },
      h("li", { class: queue.overdue ? "overdue-text" : "" }, queue.overdue ? "⚠ " : "", count(queue.overdue, "overdue task")),
      h("li", {}, count(queue.due_today, "task") + " due today"),
      h("li", {}, `Done: ${counts.completed || 0} completed, ${counts.cancelled || 0} cancelled`),
      mayWork ? null : h("li", {}, "Not one of your queues"),
    ),
  );
}

/** #/queues: my tasks first, then every queue with counts by status and deadline. */
export async function boardView() {
  const [queues, mine] = await Promise.all([get("/queues"), myTasks()]);
  const now = Date.now();
  const myList = mine.length
    ? h("ul", { class: "tasks", id: "my-tasks" }, mine.map((t) => taskItem(t, { showQueue: true, now })))
    : h("p", { id: "my-tasks" }, "Nothing is assigned to you. Open a queue below and claim a task.");
  return {
    title: "Queue board",
    nodes: [
      heading(1, "Queue board"),
      section(`My tasks (${mine.length})`, myList),
      section("Queues", h("ul", { class: "queue-grid" }, queues.data.map(queueCard))),
    ],
  };
}

// -- one queue -------------------------------------------------------------------------------

const STATUS_CHOICES = [
  ["active", "To do"],
  ["open", "Open"],
  ["in-progress", "In progress"],
  ["completed", "Completed"],
  ["cancelled", "Cancelled"],
  ["all", "Any status"],
];

function statusesOf(choice) {
  if (choice === "all") return [];
  if (choice === "active" || !choice) return ACTIVE;
  return [choice];
}

function filterForm(name, params, navigate) {
  const status = h(
    "select",
    { name: "status" },
    STATUS_CHOICES.map(([value, label]) => h("option", { value, selected: (params.get("status") || "active") === value }, label)),
  );
  const kind = h("input", { name: "kind", type: "text", value: params.get("kind") || "", list: "kinds" });
  const label = h("input", { name: "label", type: "text", value: params.get("label") || "" });
  const assignee = h("input", { name: "assignee", type: "text", value: params.get("assignee") || "" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter the tasks" },
    field("Status", status, "To do: open or in progress"),
    field("Kind", kind, "e.g. no-show-outreach"),
    field("Label", label),
    field("Assigned to", assignee, `Your id is ${coordinator()}`),
    h(
      "div",
      { class: "form-actions" },
      h("button", { type: "submit" }, "Apply filters"),
      h("a", { href: `#/queues/${encodeURIComponent(name)}`, class: "button-link secondary" }, "Clear filters"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [key, input] of Object.entries({ status, kind, label, assignee })) {
      const value = input.value.trim();
      if (value && !(key === "status" && value === "active")) query.set(key, value);
    }
    const text = query.toString();
    navigate(`#/queues/${encodeURIComponent(name)}${text ? `?${text}` : ""}`);
  });
  return form;
}

/**
 * A paged list: the first page now, "Show more" for the next (by cursor). `skip(task)` hides
 * tasks another list already shows (`minus` of them in the total). Focus moves to the first new task after "Show more".
 */
async function pagedList(route, params, { id, empty, more: moreText, skip = () => false, minus = 0, now }) {
  const list = h("ul", { class: "tasks", id });
  const status = h("p", { class: "list-status", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "secondary more" }, moreText);
  let cursor = null;
  let shown = 0;
  let total = 0;
  async function load() {
    let added = [];
    do {
      const { data } = await get(route, { ...params, limit: PAGE, cursor });
      total = data.total;
      cursor = data.next_cursor;
      added = added.concat(data.items.filter((t) => !skip(t)));
    } while (!added.length && cursor);
    const items = added.map((t) => taskItem(t, { now }));
    list.append(...items);
    shown += items.length;
    more.hidden = !cursor;
    status.textContent = shown ? `Showing ${shown} of ${Math.max(shown, total - minus)}.` : empty;
    return items;
  }
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const items = await load();
      items[0]?.querySelector("a").focus();
    } catch (error) {
      status.textContent = `Could not load more: ${error.message}`;
    } finally {
      more.disabled = false;
    }
  });
  const first = await load();
  return { nodes: [list, status, more], total, kinds: first.map((li) => li.dataset.kind) };
}

/** #/queues/NAME: the queue's tasks, overdue ones first, with filters and paging. */
export async function queueView({ args: [name], params, navigate }) {
  const statuses = statusesOf(params.get("status"));
  const filters = {
    status: statuses,
    kind: params.get("kind"),
    label: params.get("label"),
    assignee: params.get("assignee"),
  };
  const route = `/queues/${encodeURIComponent(name)}/tasks`;
  const now = Date.now();
  const nodes = [heading(1, `${sentence(name)} queue`), filterForm(name, params, navigate)];
  const active = statuses.length ? statuses.filter((s) => ACTIVE.includes(s)) : ACTIVE;
  let overdueTotal = 0;
  if (active.length) {
    const overdue = await pagedList(
      route,
      { ...filters, status: active, due_before: new Date(now).toISOString() },
      { id: "overdue-tasks", empty: "Nothing is overdue.", more: "Show more overdue tasks", now },
    );
    overdueTotal = overdue.total;
    nodes.push(section(`Overdue (${overdue.total})`, ...overdue.nodes));
  }
  const rest = await pagedList(route, filters, {
    id: "queue-tasks",
    empty: "No tasks match these filters.",
    more: "Show more tasks",
    skip: (t) => isOverdue(t, now),
    minus: overdueTotal,
    now,
  });
  const title = active.length ? "Other tasks, by priority then due date" : "Tasks, by priority then due date";
  nodes.push(section(`${title} (${Math.max(0, rest.total - overdueTotal)})`, ...rest.nodes));
  // Suggest, in the kind filter, the kinds on the tasks shown.
  const kinds = [...new Set(rest.kinds)].sort();
  nodes.push(h("datalist", { id: "kinds" }, kinds.map((k) => h("option", { value: k }))));
  return { title: `${sentence(name)} queue`, nodes };
}
