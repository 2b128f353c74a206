// Plain-language words for what the API answers in codes: statuses, priorities, dates, and a
// FHIR resource summarized in a sentence.

const STATUS = {
  open: "Open",
  "in-progress": "In progress",
  completed: "Completed",
  cancelled: "Cancelled",
};
const PRIORITY = { routine: "Routine", urgent: "Urgent", asap: "As soon as possible", stat: "Immediately (stat)" };
const ACTIVE = new Set(["open", "in-progress"]);

/** "in-progress" -> "In progress". */
export function statusWords(status) {
  return STATUS[status] || sentence(status);
}

/** "asap" -> "As soon as possible". */
export function priorityWords(priority) {
  return PRIORITY[priority] || sentence(priority);
}

// FHIR status codes whose plain words are not just the code spelled out.
const FHIR_STATUS = {
  noshow: "Missed (no-show)",
  fulfilled: "Attended (fulfilled)",
  booked: "Booked",
  "checked-in": "Checked in",
  "entered-in-error": "Entered in error",
  "on-hold": "On hold",
  revoked: "Revoked (ended early)",
  "not-taken": "Not taken",
};

/** A FHIR resource's status in words: "noshow" -> "Missed (no-show)". */
export function fhirStatus(status) {
  return FHIR_STATUS[status] || sentence(status);
}

/** "no-show-outreach" -> "No show outreach". */
export function sentence(code) {
  if (!code) return "";
  const words = String(code).replace(/[-_]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** ["a", "b", "c"] -> "a, b or c" (`joiner` "and" for all of them). */
export function list(items, joiner = "or") {
  const xs = items.filter(Boolean);
  if (xs.length <= 1) return xs.join("");
  return `${xs.slice(0, -1).join(", ")} ${joiner} ${xs[xs.length - 1]}`;
}

/** True while a coordinator still has to act. */
export function isActive(task) {
  return ACTIVE.has(task.status);
}

/** True for an active task whose due time has passed. */
export function isOverdue(task, now = Date.now()) {
  return isActive(task) && Boolean(task.due) && Date.parse(task.due) < now;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** A date-time in the reader's locale; a bare date (YYYY-MM-DD) stays a date. */
export function when(value) {
  if (!value) return "";
  const text = String(value);
  if (/^\d{4}(-\d{2}){0,2}$/.test(text)) {
    if (text.length < 10) return text;
    const [y, m, d] = text.split("-").map(Number);
    return dateOnly.format(new Date(y, m - 1, d));
  }
  const at = new Date(text);
  return Number.isNaN(at.getTime()) ? text : dateTime.format(at);
}

/** "in 2 days", "3 hours ago". */
export function ago(value, now = Date.now()) {
  const at = Date.parse(value);
  if (Number.isNaN(at)) return "";
  const seconds = (at - now) / 1000;
  const units = [
    ["year", 31536000],
    ["month", 2592000],
    ["week", 604800],
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
  ];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(Math.round(seconds), "second");
}

/** A length of time in words: "5 minutes", "2 days". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  for (const [unit, size] of units) {
    if (s >= size || unit === "second") {
      const n = Math.floor(s / size);
      return `${n} ${unit}${n === 1 ? "" : "s"}`;
    }
  }
  return "";
}

/** The due date of a task in words, with whether it is overdue. */
export function dueWords(task, now = Date.now()) {
  if (!task.due) return "No due date";
  const base = `${when(task.due)} (${ago(task.due, now)})`;
  return isOverdue(task, now) ? `Overdue: was due ${base}` : `Due ${base}`;
}

// -- FHIR in words ---------------------------------------------------------------------------

/** The readable text of a CodeableConcept. */
export function conceptText(concept) {
  if (!concept || typeof concept !== "object") return null;
  if (concept.text) return String(concept.text);
  for (const coding of concept.coding || []) {
    if (coding && (coding.display || coding.code)) return String(coding.display || coding.code);
  }
  return null;
}

function firstConcept(concepts) {
  for (const c of concepts || []) {
    const text = conceptText(c);
    if (text) return text;
  }
  return null;
}

function humanName(names) {
  const n = (names || [])[0];
  if (!n) return null;
  return n.text || [...(n.given || []), n.family].filter(Boolean).join(" ") || null;
}

function period(p) {
  if (!p) return "";
  const parts = [];
  if (p.start) parts.push(`from ${when(p.start)}`);
  if (p.end) parts.push(`to ${when(p.end)}`);
  return parts.join(" ");
}

const SUMMARIES = {
  Appointment(r) {
    const what = r.description || firstConcept(r.serviceType) || conceptText(r.appointmentType) || "Appointment";
    const lines = [`${what}.`, `Status: ${fhirStatus(r.status)}.`];
    if (r.start) lines.push(`Starts ${when(r.start)}${r.end ? `, ends ${when(r.end)}` : ""}.`);
    if (r.comment) lines.push(`Note: ${r.comment}`);
    return lines;
  },
  CarePlan(r) {
    const what = r.title || firstConcept((r.category || []).slice().reverse()) || "Care plan";
    const lines = [`${what}.`, `Status: ${fhirStatus(r.status)}.`];
    const p = period(r.period);
    if (p) lines.push(`In force ${p}.`);
    for (const a of r.activity || []) {
      const d = (a && a.detail) || {};
      const text = conceptText(d.code) || "an activity";
      lines.push(`Activity: ${text}, ${sentence(d.status) || "status not given"}.`);
    }
    return lines;
  },
  MedicationStatement(r) {
    const what = conceptText(r.medicationCodeableConcept) || (r.medicationReference || {}).display || "A medication";
    const lines = [`${what}.`, `Status: ${fhirStatus(r.status)}.`];
    const p = period(r.effectivePeriod) || (r.effectiveDateTime ? `on ${when(r.effectiveDateTime)}` : "");
    if (p) lines.push(`Taken ${p}.`);
    return lines;
  },
  Coverage(r) {
    const plan = ((r.class || []).find((c) => c && c.name) || {}).name || conceptText(r.type) || "Coverage";
    const payors = (r.payor || []).map((p) => p && p.display).filter(Boolean);
    const lines = [`${plan}.`, `Status: ${fhirStatus(r.status)}.`];
    if (payors.length) lines.push(`Paid by ${list(payors, "and")}.`);
    const p = period(r.period);
    if (p) lines.push(`Valid ${p}.`);
    return lines;
  },
  CoverageEligibilityRequest(r) {
    const purpose = r.purpose || [];
    const kind = purpose.includes("auth-requirements") ? "Authorization request" : "Eligibility request";
    const lines = [`${kind}.`, `Status: ${fhirStatus(r.status)}.`];
    if ((r.insurer || {}).display) lines.push(`Sent to ${r.insurer.display}.`);
    if (purpose.length) lines.push(`Asks about: ${list(purpose.map(sentence), "and").toLowerCase()}.`);
    if (r.servicedDate) lines.push(`For service on ${when(r.servicedDate)}.`);
    if (r.created) lines.push(`Created ${when(r.created)}.`);
    return lines;
  },
  Patient(r) {
    const lines = [`${humanName(r.name) || "A patient record"}.`];
    if (r.birthDate) lines.push(`Born ${when(r.birthDate)}.`);
    const telecom = (r.telecom || []).filter((t) => t && t.value);
    lines.push(telecom.length ? `Contact: ${telecom.map((t) => `${t.system || "contact"} ${t.value}`).join(", ")}.` : "No phone number or e-mail address on record.");
    return lines;
  },
};

/** A FHIR resource as a few plain sentences. */
export function summarize(resource) {
  if (!resource) return ["The record is not in the bridge's store (it may have been deleted in the EHR)."];
  const fn = SUMMARIES[resource.resourceType];
  if (fn) return fn(resource);
  return [`${sentence(resource.resourceType)}${resource.status ? `, ${sentence(resource.status)}` : ""}.`];
}
