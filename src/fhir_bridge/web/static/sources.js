// The sources page: each connected EHR's last sync, how far behind its data is, errors,
// resources per type, the circuit breaker, and what quarantine holds and why.

import { get } from "./api.js";
import { badge, facts, h, heading, section } from "./dom.js";
import { ago, duration, sentence, when } from "./format.js";

const QUARANTINE_PAGE = 500;

function circuitWords(circuit) {
  if (!circuit) return "Unknown";
  if (circuit.state === "closed") return h("span", {}, badge("Healthy"), " Requests flow normally (circuit closed).");
  if (circuit.state === "open") {
    const retry = circuit.retry_in ? ` Next try in ${duration(circuit.retry_in)}.` : "";
    return h("span", {}, badge("⚠ Paused", "overdue"), ` After ${circuit.consecutive_failures} failures in a row the bridge stopped calling this EHR (circuit open).${retry}`);
  }
  return h("span", {}, badge("Testing"), " One trial request decides whether calls resume (circuit half-open).");
}

function lastSync(src) {
  if (!src.last_run) return "Never synced";
  const outcome = src.last_ok === false ? "failed" : "succeeded";
  return `${when(src.last_run)} (${ago(src.last_run)}): ${outcome}`;
}

function lastSuccess(src) {
  if (!src.last_success) return src.last_run ? "Not every resource type has synced yet" : "Never";
  return `${when(src.last_success)} (${ago(src.last_success)}): every resource type synced at least then`;
}

/** One resource type's last run, as the syncing process recorded it. */
function typeRun(run) {
  if (!run) return "Never synced";
  if (run.ok) return `${ago(run.at)}: ${run.received} received, ${run.stored} stored, ${run.quarantined} quarantined`;
  const times = run.failures_in_a_row > 1 ? ` (${run.failures_in_a_row} times in a row)` : "";
  return h("span", {}, badge("⚠ Failed", "overdue"), ` ${ago(run.at)}${times}: ${run.error || "no reason given"}`);
}

function resourcesTable(src, now) {
  const rows = src.resource_types.map((type) => {
    const cursor = (src.cursors || {})[type];
    const lag = cursor ? duration((now - Date.parse(cursor)) / 1000) : null;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, type),
      h("td", { "data-label": "Stored" }, String((src.resources || {})[type] || 0)),
      h("td", { "data-label": "Synced up to" }, cursor ? `${when(cursor)} (${lag} behind)` : "No incremental sync yet"),
      h("td", { "data-label": "Last run" }, typeRun((src.types || {})[type])),
    );
  });
  return h(
    "table",
    { class: "resources" },
    h("caption", {}, "Resources by type"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Stored"), h("th", { scope: "col" }, "Changes synced up to (lag)"), h("th", { scope: "col" }, "Last run"))),
    h("tbody", {}, rows),
  );
}

function reasonOf(entry) {
  const issue = (entry.issues || []).find((i) => i.severity === "error" || i.severity === "fatal") || (entry.issues || [])[0];
  if (!issue) return "No reason recorded";
  return issue.diagnostics || sentence(issue.code) || "No reason recorded";
}

function quarantineSection(name, entries, total, complete) {
  const mine = entries.filter((e) => e.source === name);
  if (!mine.length) return h("p", {}, "Quarantine: empty.");
  const counts = new Map();
  for (const e of mine) {
    const key = `${e.resource_type}\u0000${reasonOf(e)}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const rows = [...counts.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([key, n]) => {
      const [type, reason] = key.split("\u0000");
      return h("tr", {}, h("td", { "data-label": "Type" }, type), h("td", { "data-label": "Reason" }, reason), h("td", { "data-label": "Count" }, String(n)));
    });
  return h(
    "div",
    {},
    h("p", {}, `Quarantine: ${mine.length} resource${mine.length === 1 ? "" : "s"} refused by validation${complete ? "" : ` (counted among the newest ${entries.length} of ${total})`}.`),
    h(
      "table",
      { class: "quarantine" },
      h("caption", {}, "Quarantined, by reason"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Reason"), h("th", { scope: "col" }, "Count"))),
      h("tbody", {}, rows),
    ),
  );
}

/** #/sources (integration engineers and admins: the API answers 403 to others). */
export async function sourcesView() {
  const [sources, quarantine] = await Promise.all([get("/sources"), get("/quarantine", { limit: QUARANTINE_PAGE })]);
  const now = Date.now();
  const entries = quarantine.data.items;
  const complete = quarantine.data.total <= entries.length;
  const nodes = [heading(1, "Sources")];
  nodes.push(h("p", {}, `${sources.data.length} connected EHR${sources.data.length === 1 ? "" : "s"}; ${quarantine.data.total} resource${quarantine.data.total === 1 ? "" : "s"} in quarantine.`));
  for (const src of sources.data) {
    nodes.push(
      section(
        src.name,
        facts([
          ["Address", src.base_url],
          ["Last sync", lastSync(src)],
          ["Last complete sync", lastSuccess(src)],
          ["Last error", src.last_error || "None"],
          ["Connection", circuitWords(src.circuit)],
        ]),
        resourcesTable(src, now),
        quarantineSection(src.name, entries, quarantine.data.total, complete),
      ),
    );
  }
  return { title: "Sources", nodes };
}
