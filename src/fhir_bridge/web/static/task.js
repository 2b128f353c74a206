// One task: what it is about (in words), the actions the state machine allows, its history,
// comments and write-back state. Every change is sent with If-Match: the task's ETag.

import { get, post } from "./api.js";
import { badge, facts, field, h, heading, notice, section } from "./dom.js";
import { ago, dueWords, isOverdue, list, priorityWords, sentence, statusWords, summarize, when } from "./format.js";
import { coordinator } from "./session.js";

// A message to show (and focus) once the task is shown again after an action, next to the
// control that caused it ("actions" or "comments").
let flash = null;

function takeFlash(where) {
  if (!flash || flash.where !== where) return null;
  const message = notice(flash.text, flash.kind);
  message.id = "action-result";
  flash = null;
  return message;
}

const MOVE_LABELS = {
  "in-progress": "Mark in progress",
  completed: "Mark completed",
  cancelled: "Cancel task",
  open: "Reopen",
};
const MOVE_ORDER = ["completed", "in-progress", "open", "cancelled"];
const ACTION_WORDS = {
  created: "Created",
  refreshed: "Updated from a newer version of the record",
  claim: "Claimed",
  release: "Released",
  assign: "Assigned",
  status: "Changed status",
  comment: "Commented",
  "auto-closed": "Closed by the bridge",
  reopened: "Reopened by the bridge",
};

function patientLink(task) {
  if (!task.patient || !task.patient.startsWith("Patient/")) return null;
  const id = task.patient.slice("Patient/".length);
  return h(
    "a",
    { href: `#/patients/${encodeURIComponent(task.source)}/${encodeURIComponent(id)}`, id: "patient-link" },
    "Open the patient's timeline",
  );
}

function allowedWords(allowed) {
  if (!allowed || !allowed.length) return "nothing: the task is closed for good";
  return list(allowed.map((s) => statusWords(s).toLowerCase()));
}

/** A failed change as a sentence the coordinator can act on. */
function explain(error) {
  const details = error.body.details || {};
  if (error.status === 412) {
    return {
      kind: "warning",
      text: "Someone else changed this task since you opened it. It has been reloaded with their changes: check it, then try again.",
    };
  }
  if (error.code === "illegal_transition") {
    const from = details.current ? statusWords(details.current).toLowerCase() : "its current status";
    return { kind: "error", text: `Not possible: ${error.message}. From ${from} the task can move to ${allowedWords(details.allowed)}.` };
  }
  if (error.status === 403) return { kind: "error", text: `Not allowed: ${error.message}.` };
  return { kind: "error", text: `Not done: ${error.message}` };
}

async function act(ctx, button, run, done, where = "actions") {
  const buttons = document.querySelectorAll("#task-actions button");
  buttons.forEach((b) => (b.disabled = true));
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await run();
    flash = { kind: "success", text: done, where };
  } catch (error) {
    flash = { ...explain(error), where };
  }
  await ctx.rerender((main) => main.querySelector("#action-result")?.focus());
}

function actions(ctx, task, etag) {
  const me = coordinator();
  const route = `/tasks/${encodeURIComponent(task.id)}`;
  const buttons = [];
  const active = task.status === "open" || task.status === "in-progress";
  if (task.status === "open") {
    const claim = h("button", { type: "button", id: "claim" }, "Claim");
    claim.addEventListener("click", () =>
      act(ctx, claim, () => post(`${route}/claim`, { coordinator: me }, etag), "You claimed the task: it is in progress and yours."),
    );
    buttons.push(claim);
  }
  const note = h("textarea", { name: "note", rows: "2", maxlength: "2000" });
  const moves = [...task.allowed_transitions].sort((a, b) => MOVE_ORDER.indexOf(a) - MOVE_ORDER.indexOf(b));
  for (const target of moves) {
    // "Claim" moves an open task to in progress (and takes it); "Release" moves it back.
    if (target === "in-progress" && task.status === "open") continue;
    if (target === "open" && task.status === "in-progress") continue;
    const move = h("button", { type: "button", id: `move-${target}`, class: target === "cancelled" ? "danger" : "" }, MOVE_LABELS[target] || `Change to ${statusWords(target)}`);
    move.addEventListener("click", () =>
      act(
        ctx,
        move,
        () => post(`${route}/status`, { coordinator: me, status: target, note: note.value.trim() || undefined }, etag),
        `The task is now ${statusWords(target).toLowerCase()}.`,
      ),
    );
    buttons.push(move);
  }
  // Only the holder may release (the API answers 409 to anyone else), so only they see it.
  if (task.status === "in-progress" && task.assignee === me) {
    const release = h("button", { type: "button", id: "release", class: "secondary" }, "Release (back to open)");
    release.addEventListener("click", () =>
      act(ctx, release, () => post(`${route}/release`, { coordinator: me }, etag), "You released the task: it is open and unassigned."),
    );
    buttons.splice(buttons.length - (task.allowed_transitions.includes("cancelled") ? 1 : 0), 0, release);
  }
  const parts = [takeFlash("actions")];
  if (!active) parts.push(h("p", {}, `This task is ${statusWords(task.status).toLowerCase()}: it can no longer change.`));
  if (task.status === "in-progress" && task.assignee && task.assignee !== me) {
    parts.push(h("p", { id: "held-by" }, `${task.assignee} is working on this task. To take it over, assign it to yourself.`));
  }
  if (task.allowed_transitions.length) {
    parts.push(field("Note for a status change (optional)", note, "Kept in the task's history and sent with the change."));
  }
  if (buttons.length) parts.push(h("div", { class: "button-row" }, buttons));
  if (active) {
    const assignee = h("input", { type: "text", name: "assignee", required: true, autocomplete: "off" });
    const form = h("form", { class: "inline-form" }, field("Assign to (a coordinator's id)", assignee), h("button", { type: "submit", class: "secondary" }, "Assign"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const who = assignee.value.trim();
      if (!who) return assignee.focus();
      act(ctx, form.querySelector("button"), () => post(`${route}/assign`, { coordinator: me, assignee: who }, etag), `The task is assigned to ${who}.`);
    });
    parts.push(form);
  }
  return section("Actions", h("div", { id: "task-actions" }, parts));
}

function fieldDiff(fields) {
  const rows = fields.map((f) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, f.path),
      h("td", { "data-label": "Ours" }, JSON.stringify(f.ours)),
      h("td", { "data-label": "Theirs" }, JSON.stringify(f.theirs)),
      h("td", { "data-label": "Was" }, JSON.stringify(f.was)),
    ),
  );
  return h(
    "table",
    { class: "diff" },
    h("caption", {}, "What differs"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Ours (not written)"), h("th", { scope: "col" }, "Theirs (in the EHR now)"), h("th", { scope: "col" }, "Was (when we read it)"))),
    h("tbody", {}, rows),
  );
}

function writebackEntry(entry) {
  const what = entry.action === "task-mirror" ? "Mirror of this task in the EHR" : sentence(entry.action);
  let state;
  const extra = [];
  switch (entry.status) {
    case "pending":
      state = badge("Pending", "status-pending");
      extra.push(`Waiting to be written to the EHR (${entry.attempts} attempt${entry.attempts === 1 ? "" : "s"} so far).`);
      if (entry.last_error) extra.push(` Last try: ${entry.last_error}`);
      break;
    case "delivered":
      state = badge("Written", "status-completed");
      extra.push(`Written to the EHR ${entry.delivered_at ? when(entry.delivered_at) : ""}.`);
      break;
    case "conflict":
      state = badge("Conflict", "overdue");
      extra.push(`Not written: the EHR changed the record since we read it. ${entry.last_error || ""}`);
      break;
    case "dead":
      state = badge("Failed", "overdue");
      extra.push(`Not written: ${entry.last_error || "the EHR refused it"}`);
      break;
    case "discarded":
      state = badge("Discarded");
      extra.push("An operator gave up on this write.");
      break;
    default:
      state = badge(sentence(entry.status));
  }
  const fields = entry.detail && Array.isArray(entry.detail.fields) ? entry.detail.fields : [];
  return h(
    "li",
    { class: `writeback writeback-${entry.status}` },
    h("p", {}, h("strong", {}, what), " ", state),
    h("p", {}, extra.join(""), ` Queued ${when(entry.created_at)}.`),
    entry.status === "conflict" && fields.length ? fieldDiff(fields) : null,
  );
}

function historyTable(events) {
  const rows = events.map((e) => {
    const change = e.from_status && e.to_status && e.from_status !== e.to_status ? `${statusWords(e.from_status)} → ${statusWords(e.to_status)}` : e.to_status && !e.from_status ? statusWords(e.to_status) : "";
    const detail = e.detail || {};
    const notes = [];
    if (e.action === "assign") notes.push(`from ${detail.from_assignee || "nobody"} to ${detail.to_assignee || "nobody"}`);
    if (typeof detail.note === "string") notes.push(detail.note);
    if (e.action === "comment" && typeof detail.text === "string") notes.push(detail.text);
    return h(
      "tr",
      {},
      h("td", { "data-label": "When" }, when(e.at)),
      h("td", { "data-label": "Who" }, e.actor),
      h("td", { "data-label": "What" }, ACTION_WORDS[e.action] || sentence(e.action), change ? `: ${change}` : ""),
      notes.length ? h("td", { "data-label": "Note" }, notes.join(" — ")) : h("td", {}),
    );
  });
  return h(
    "table",
    { class: "history", id: "task-history" },
    h("caption", { class: "visually-hidden" }, "Every change, oldest first"),
    h("thead", {}, h("tr", {}, ["When", "Who", "What", "Note"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows),
  );
}

function comments(ctx, task, items) {
  const text = h("textarea", { name: "text", rows: "3", required: true, maxlength: "4000" });
  const form = h("form", { class: "comment-form" }, field("Add a comment", text, "Seen by other coordinators; not sent to the EHR."), h("button", { type: "submit" }, "Add comment"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = text.value.trim();
    if (!value) return text.focus();
    // No If-Match: a comment changes nothing another coordinator could overwrite.
    await act(ctx, form.querySelector("button"), () => post(`/tasks/${encodeURIComponent(task.id)}/comments`, { coordinator: coordinator(), text: value }), "Comment added.", "comments");
  });
  const listed = items.length
    ? h("ul", { class: "comments" }, items.map((c) => h("li", {}, h("p", { class: "comment-meta" }, `${c.author}, ${when(c.at)}`), h("p", {}, c.text))))
    : h("p", {}, "No comments yet.");
  return section("Comments", listed, takeFlash("comments"), form);
}

function focusSection(task, resource) {
  const pre = h("pre", { class: "fhir", id: "focus-fhir", hidden: true }, resource ? JSON.stringify(resource, null, 2) : "");
  const toggle = h("button", { type: "button", class: "secondary", "aria-expanded": "false", "aria-controls": "focus-fhir" }, "Show FHIR");
  toggle.addEventListener("click", () => {
    pre.hidden = !pre.hidden;
    toggle.setAttribute("aria-expanded", String(!pre.hidden));
    toggle.textContent = pre.hidden ? "Show FHIR" : "Hide FHIR";
  });
  const version = task.focus_version ? `, version ${task.focus_version}` : "";
  return section(
    "What this is about",
    h("div", { class: "summary", id: "focus-summary" }, summarize(resource).map((line) => h("p", {}, line))),
    h("p", { class: "small" }, `${sentence(task.focus.split("/")[0])} in ${task.source}${version}.`),
    resource ? toggle : null,
    pre,
  );
}

/** #/tasks/ID */
export async function taskView(ctx) {
  const [id] = ctx.args;
  const { data, etag } = await get(`/tasks/${encodeURIComponent(id)}`);
  const task = data.task;
  const now = Date.now();
  const overdue = isOverdue(task, now);
  const status = h(
    "p",
    { class: "badges", id: "task-status" },
    badge(`Status: ${statusWords(task.status)}`, `status-${task.status}`),
    badge(`Priority: ${priorityWords(task.priority)}`, task.priority === "routine" ? "" : "priority-high"),
    overdue ? badge("Overdue", "overdue") : null,
    badge(task.assignee ? `Assigned to ${task.assignee}` : "Unassigned"),
  );
  const labels = task.labels && task.labels.length ? task.labels.join(", ") : null;
  return {
    title: task.title,
    nodes: [
      h("p", { class: "crumbs" }, h("a", { href: `#/queues/${encodeURIComponent(task.queue)}` }, `← ${sentence(task.queue)} queue`)),
      heading(1, task.title),
      status,
      task.description ? h("p", { class: "description" }, task.description) : null,
      facts([
        ["Patient", patientLink(task) || "No patient"],
        ["Due", h("span", { class: overdue ? "overdue-text" : "" }, overdue ? "⚠ " : "", dueWords(task, now))],
        ["Kind", sentence(task.kind)],
        ["Queue", sentence(task.queue)],
        ["Labels", labels],
        ["Source EHR", task.source],
        ["Created", when(task.created_at)],
        ["Last changed", `${when(task.updated_at)} (${ago(task.updated_at, now)}), version ${task.version}`],
      ]),
      actions(ctx, task, etag),
      focusSection(task, data.focus_resource),
      section(
        "Write-back to the EHR",
        data.writeback.length ? h("ul", { class: "plain", id: "writeback" }, data.writeback.map(writebackEntry)) : h("p", { id: "writeback" }, "Nothing to write back yet."),
      ),
      section("History", historyTable(data.history)),
      comments(ctx, task, data.comments),
    ].filter(Boolean),
  };
}
