// A patient's timeline across every connected EHR (GET /patients/{source}/{id}/history), and
// patient search (GET /patients). Each item names its source and version.

import { get } from "./api.js";
import { badge, facts, field, h, heading, notice, section } from "./dom.js";
import { contactsSection, linkAdminSection } from "./family.js";
import { dueWords, fhirStatus, sentence, statusWords, when } from "./format.js";

const SECTIONS = [
  ["appointments", "Appointments", { upcoming: "Upcoming", missed: "Missed", cancelled: "Cancelled", past: "Past" }],
  ["care_plans", "Care plans", { active: "Active", past: "Past" }],
  ["medications", "Medications", { active: "Active", stopped: "Stopped" }],
  ["coverage", "Coverage and eligibility", { coverages: "Coverage", eligibility_requests: "Eligibility and authorization requests" }],
  ["tasks", "Coordinator tasks", { open: "Open", closed: "Closed" }],
  ["other", "Other records", {}],
];
const SHOWN = new Set(["patient", "links", "demographics", "contacts", ...SECTIONS.map(([key]) => key)]);
const DEMOGRAPHIC_WORDS = { birth_date: when, gender: sentence };
const DEMOGRAPHICS = { name: "Name", birth_date: "Birth date", gender: "Gender", phone: "Phone", email: "E-mail", address: "Address" };

function origin(item) {
  const parts = [`From ${item.source}`];
  if (item.version_id) parts.push(`version ${item.version_id}`);
  if (item.last_updated) parts.push(`updated ${when(item.last_updated)}`);
  return parts.join(", ");
}

function recordItem(item) {
  const meta = [item.status ? `Status: ${fhirStatus(item.status)}` : null, origin(item)].filter(Boolean).join(" · ");
  const details = item.details || {};
  const activities = Array.isArray(details.activities) && details.activities.length
    ? h(
        "ul",
        { class: "activities", "aria-label": "Activities" },
        details.activities.map((a) => h("li", {}, `${a.what || "Activity"}: ${sentence(a.status) || "status not given"}`)),
      )
    : null;
  const reconciled = details.reconciled ? h("p", { class: "small" }, `Reconciled ${when(details.reconciled)}`) : null;
  const also = (item.also_in || []).length
    ? h("p", { class: "small" }, "Also in: ", (item.also_in || []).map((a) => `${a.source}${a.version_id ? ` (version ${a.version_id})` : ""}`).join(", "))
    : null;
  const raw = item.raw
    ? h("details", { class: "fhir-details" }, h("summary", {}, `FHIR ${item.type}`), h("pre", { class: "fhir" }, JSON.stringify(item.raw, null, 2)))
    : null;
  return h("li", { class: "record" }, h("p", { class: "summary" }, item.summary), h("p", { class: "small" }, meta), activities, reconciled, also, raw);
}

function taskRecord(task) {
  return h(
    "li",
    { class: "record" },
    h("a", { href: `#/tasks/${encodeURIComponent(task.id)}` }, task.title),
    h(
      "p",
      { class: "small" },
      [statusWords(task.status), dueWords(task), task.assignee ? `assigned to ${task.assignee}` : "unassigned", `${sentence(task.queue)} queue`, `from ${task.source}`].join(" · "),
    ),
  );
}

function group(title, items, render) {
  const body = items.length ? h("ul", { class: "records" }, items.map(render)) : h("p", { class: "none" }, "None.");
  return h("div", { class: "group" }, h("h3", {}, `${title} (${items.length})`), body);
}

function groups(key, title, labels, value) {
  const render = key === "tasks" ? taskRecord : recordItem;
  if (Array.isArray(value)) {
    if (!value.length && key === "other") return null;
    return section(title, value.length ? h("ul", { class: "records" }, value.map(render)) : h("p", {}, "None."));
  }
  if (!value || typeof value !== "object") return null;
  const parts = Object.entries(value).map(([name, items]) => group(labels[name] || sentence(name), Array.isArray(items) ? items : [], render));
  return section(title, parts);
}

function demographics(demo) {
  const pairs = Object.entries(demo || {}).map(([key, d]) => {
    const label = DEMOGRAPHICS[key] || sentence(key);
    const show = (value) => (value === null || value === undefined || value === "" ? null : DEMOGRAPHIC_WORDS[key] ? DEMOGRAPHIC_WORDS[key](value) : String(value));
    if (!d || !d.conflict) return [label, (d && show(d.value)) || "Not recorded"];
    const values = (d.by_source || []).map((s) => h("li", {}, `${s.source} (record ${s.id}): ${show(s.value) ?? "not recorded"}`));
    return [label, h("div", { class: "conflict" }, badge("⚠ Sources disagree", "overdue"), h("ul", {}, values))];
  });
  return section("Demographics", facts(pairs, { id: "demographics" }));
}

function linkedRecords(links) {
  return section(
    "Records of this person",
    h(
      "ul",
      { class: "plain", id: "links" },
      (links || []).map((l) =>
        h("li", {}, h("strong", {}, `${l.source}`), `, record ${l.id}: ${l.reason}`, l.system && !String(l.reason).includes(l.system) ? ` (identifier system ${l.system})` : ""),
      ),
    ),
  );
}

/** #/patients/SOURCE/ID[?raw=1] */
export async function patientView(ctx) {
  const { args: [source, id], params } = ctx;
  const raw = params.get("raw") === "1";
  const { data } = await get(`/patients/${encodeURIComponent(source)}/${encodeURIComponent(id)}/history`, raw ? { raw: "true" } : {});
  const name = (data.demographics && data.demographics.name && data.demographics.name.value) || "Patient";
  const here = `#/patients/${encodeURIComponent(source)}/${encodeURIComponent(id)}`;
  const nodes = [
    heading(1, name),
    h("p", {}, `Everything the bridge holds about this person, across every connected EHR (asked for: record ${id} in ${source}).`),
    h("p", {}, h("a", { href: raw ? here : `${here}?raw=1`, id: "fhir-toggle" }, raw ? "Hide FHIR" : "Show FHIR for each record")),
    linkedRecords(data.links),
    demographics(data.demographics),
    contactsSection(ctx, data),
    await linkAdminSection(ctx, data, `${source}/${id}`),
  ];
  for (const [key, title, labels] of SECTIONS) nodes.push(groups(key, title, labels, data[key]));
  // Sections a newer API adds: shown generically rather than hidden.
  for (const [key, value] of Object.entries(data)) {
    if (!SHOWN.has(key)) nodes.push(groups(key, sentence(key), {}, value));
  }
  return { title: name, nodes: nodes.filter(Boolean) };
}

/** #/patients?name=&birthdate=&identifier= */
export async function searchView({ params, navigate }) {
  const inputs = {
    name: h("input", { type: "text", name: "name", value: params.get("name") || "", autocomplete: "off" }),
    birthdate: h("input", { type: "text", name: "birthdate", value: params.get("birthdate") || "", inputmode: "numeric", autocomplete: "off", pattern: "\\d{4}(-\\d{2}(-\\d{2})?)?" }),
    identifier: h("input", { type: "text", name: "identifier", value: params.get("identifier") || "", autocomplete: "off" }),
  };
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Find a patient" },
    field("Name", inputs.name, "Any part of the name, e.g. the family name"),
    field("Birth date", inputs.birthdate, "YYYY, YYYY-MM or YYYY-MM-DD"),
    field("Identifier", inputs.identifier, "A value such as an MRN, or system|value"),
    h("div", { class: "form-actions" }, h("button", { type: "submit" }, "Search")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [key, input] of Object.entries(inputs)) if (input.value.trim()) query.set(key, input.value.trim());
    navigate(`#/patients${query.toString() ? `?${query}` : ""}`);
  });
  const nodes = [heading(1, "Find a patient"), form];
  const query = Object.fromEntries(Object.keys(inputs).map((k) => [k, params.get(k) || ""]));
  if (Object.values(query).some(Boolean)) {
    let results;
    try {
      results = (await get("/patients", query)).data;
    } catch (error) {
      if (error.status !== 422) throw error;
      nodes.push(notice(`Check the search: ${error.message}`, "error"));
      return { title: "Find a patient", nodes };
    }
    const list = results.length
      ? h(
          "ul",
          { class: "records", id: "patient-results" },
          results.map((p) =>
            h(
              "li",
              { class: "record" },
              h("a", { href: `#/patients/${encodeURIComponent(p.source)}/${encodeURIComponent(p.id)}` }, p.name || "Name not recorded"),
              h("p", { class: "small" }, [p.birth_date ? `born ${when(p.birth_date)}` : "birth date not recorded", p.gender ? sentence(p.gender) : null, `in ${p.source}`].filter(Boolean).join(" · ")),
            ),
          ),
        )
      : h("p", { id: "patient-results" }, "No patient matches.");
    nodes.push(section(`Results (${results.length})`, list));
  } else {
    nodes.push(h("p", {}, "Give a name, a birth date or an identifier."));
  }
  return { title: "Find a patient", nodes };
}
