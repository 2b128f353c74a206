// The outcome dashboard (GET /outcomes): no-show rates, how long approvals and outreach take,
// tasks opened and closed, SLA adherence and workload, as charts whose bars list the tasks
// behind them; the same figures as CSV (GET /outcomes.csv, fetched with the user's credential).

import { download, get } from "./api.js";
import { barChart } from "./chart.js";
import { field, h, heading, notice, section } from "./dom.js";
import { sentence, when } from "./format.js";

const DAY = 86400000;
const RANGE_DAYS = 28;

function isoDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function percent(rate) {
  return `${Math.round(rate * 1000) / 10}%`;
}

function hours(value) {
  if (value === null || value === undefined) return "none";
  if (value >= 48) return `${Math.round((value / 24) * 10) / 10} days`;
  return `${Math.round(value * 10) / 10} hours`;
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** The days a range covers, both included: ["2026-11-01", ...]. */
function days(from, to) {
  const out = [];
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= Date.parse(`${to}T00:00:00Z`); t += DAY) out.push(isoDay(t));
  return out;
}

function shortDay(day) {
  const [y, m, d] = day.split("-").map(Number);
  return new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", timeZone: "UTC" }).format(Date.UTC(y, m - 1, d));
}

function clinicName(rate) {
  if (rate.group === "unknown") return "No clinic recorded";
  return rate.name || `Unnamed clinic ${rate.group.replace(/^Location\//, "").slice(0, 8)}`;
}

function rateBars(rates, nameOf) {
  return rates
    .filter((r) => r.rate !== null && r.rate !== undefined)
    .map((r) => ({
      category: r.group,
      series: "rate",
      value: r.rate,
      name: nameOf(r),
      text: `${percent(r.rate)} missed (${r.missed} of ${r.kept + r.missed} appointments)`,
      short: percent(r.rate),
      ids: [["Tasks about the missed appointments", r.task_ids], ["Missed appointments", r.appointments]],
    }));
}

function noShowByWeek(data) {
  const rates = data.no_show_by_week;
  return barChart({
    id: "chart-no-show-week",
    title: "Missed appointments per week",
    description: "Share of kept or missed appointments that were missed (no-show), per week of the appointment (ISO weeks, UTC).",
    categories: rates.map((r) => ({ key: r.group, label: r.group.replace(/^\d{4}-W/, "Week ") })),
    series: [{ key: "rate", label: "No-show rate" }],
    bars: rateBars(rates, (r) => `Week ${r.group}`),
    valueLabel: "Missed (%)",
    categoryLabel: "Week",
    format: (v) => `${Math.round(v * 100)}%`,
    max: 1,
  });
}

function noShowByClinic(data) {
  const rates = data.no_show_by_clinic;
  return barChart({
    id: "chart-no-show-clinic",
    title: "Missed appointments per clinic",
    description: "Share of kept or missed appointments that were missed (no-show), per clinic (the appointment's location).",
    categories: rates.map((r) => ({ key: r.group, label: clinicName(r) })),
    series: [{ key: "rate", label: "No-show rate" }],
    bars: rateBars(rates, clinicName),
    valueLabel: "Missed (%)",
    categoryLabel: "Clinic",
    format: (v) => `${Math.round(v * 100)}%`,
    max: 1,
    horizontal: true,
  });
}

function turnaround(data) {
  const measures = [
    ["approval", "Approval requests", data.approval_turnaround, "prior-authorization or eligibility task"],
    ["outreach", "Outreach after a no-show", data.no_show_to_outreach, "no-show outreach task"],
  ];
  const series = [
    { key: "median", label: "Median (half take less)" },
    { key: "p90", label: "90th percentile (9 in 10 take less)" },
  ];
  const bars = [];
  for (const [key, label, d] of measures) {
    for (const sr of series) {
      const value = d[`${sr.key}_hours`];
      if (value === null || value === undefined) continue;
      bars.push({
        category: key,
        series: sr.key,
        value,
        name: `${label}, ${sr.key === "median" ? "median" : "90th percentile"}`,
        text: `${hours(value)} (${plural(d.count, "task")} completed)`,
        short: hours(value),
        ids: [["Completed tasks", d.task_ids]],
      });
    }
  }
  return barChart({
    id: "chart-turnaround",
    title: "How long approvals and outreach take",
    description: "Hours from a prior-authorization or eligibility request appearing to its task being completed, and from a missed appointment to its outreach task being completed: median and 90th percentile.",
    categories: measures.map(([key, label, d, what]) => ({ key, label, note: d.count ? null : `no ${what} completed` })),
    series,
    bars,
    valueLabel: "Hours",
    format: (v) => String(Math.round(v * 10) / 10),
    horizontal: true,
  });
}

function tasksPerDay(data, queue) {
  const rows = data.tasks_per_day.filter((r) => !queue || r.queue === queue);
  const byDay = new Map();
  for (const r of rows) {
    const d = byDay.get(r.day) || { opened: [], closed: [] };
    d.opened.push(...r.opened_task_ids);
    d.closed.push(...r.closed_task_ids);
    byDay.set(r.day, d);
  }
  const bars = [];
  for (const [day, d] of [...byDay.entries()].sort()) {
    for (const key of ["opened", "closed"]) {
      bars.push({
        category: day,
        series: key,
        value: d[key].length,
        name: `${when(day)}, ${key}`,
        text: `${plural(d[key].length, "task")} ${key}`,
        short: String(d[key].length),
        ids: [[`Tasks ${key}`, d[key]]],
      });
    }
  }
  const range = days(data.start.slice(0, 10), isoDay(Date.parse(data.end) - DAY));
  return barChart({
    id: "chart-tasks-per-day",
    title: `Tasks opened and closed per day${queue ? `: ${sentence(queue)} queue` : ", all queues"}`,
    description: "Tasks created per day, and tasks completed or cancelled per day (by a coordinator or the bridge), UTC days. Days without any are left empty.",
    categories: range.map((day) => ({ key: day, label: shortDay(day) })),
    series: [{ key: "opened", label: "Opened" }, { key: "closed", label: "Closed" }],
    bars,
    valueLabel: "Tasks",
    categoryLabel: "Day",
  });
}

function sla(data) {
  const bars = data.sla
    .filter((r) => r.rate !== null && r.rate !== undefined)
    .map((r) => ({
      category: r.queue,
      series: "rate",
      value: r.rate,
      name: r.queue === "all" ? "All queues" : `${sentence(r.queue)} queue`,
      text: `${percent(r.rate)} on time (${r.on_time} of ${r.completed})`,
      short: percent(r.rate),
      ids: [["Late tasks", r.late_task_ids], ["Tasks on time", r.on_time_task_ids]],
    }));
  return barChart({
    id: "chart-sla",
    title: "Completed on time (SLA)",
    description: "Of the tasks with a due date completed in these dates, the share completed by their due time, for all queues and per queue.",
    categories: data.sla.map((r) => ({ key: r.queue, label: r.queue === "all" ? "All queues" : sentence(r.queue), note: r.rate === null ? "no task with a due date completed" : null })),
    series: [{ key: "rate", label: "On time" }],
    bars,
    valueLabel: "On time (%)",
    format: (v) => `${Math.round(v * 100)}%`,
    max: 1,
    horizontal: true,
  });
}

function workload(data) {
  const series = [
    { key: "active", label: "Open or in progress now" },
    { key: "overdue", label: "Of which overdue now" },
    { key: "completed", label: "Completed in these dates" },
  ];
  const bars = data.workload.flatMap((w) =>
    series.map((sr) => ({
      category: w.coordinator,
      series: sr.key,
      value: w[sr.key],
      name: `${w.coordinator}, ${sr.label.toLowerCase()}`,
      text: `${plural(w[sr.key], "task")} ${sr.key === "active" ? "open or in progress" : sr.key === "overdue" ? "overdue" : "completed"}`,
      short: String(w[sr.key]),
      ids: [[`Tasks ${sr.key === "active" ? "assigned" : sr.key}`, w[`${sr.key}_task_ids`] || []]],
    })),
  );
  return barChart({
    id: "chart-workload",
    title: "Workload per coordinator",
    description: "Per coordinator: tasks assigned to them that are open or in progress now, how many of those are overdue, and how many they completed in these dates.",
    categories: data.workload.map((w) => ({ key: w.coordinator, label: w.coordinator })),
    series,
    bars,
    valueLabel: "Tasks",
    horizontal: true,
    empty: "No coordinator has tasks assigned or completed.",
  });
}

function rangeForm(from, to, queue, queues, navigate) {
  const inputs = {
    from: h("input", { type: "date", name: "from", value: from, required: true }),
    to: h("input", { type: "date", name: "to", value: to, required: true }),
    queue: h(
      "select",
      { name: "queue" },
      h("option", { value: "" }, "Every queue"),
      queues.map((q) => h("option", { value: q, selected: q === queue }, sentence(q))),
    ),
  };
  const form = h(
    "form",
    { class: "filters no-print", "aria-label": "Dates and queue" },
    field("From", inputs.from, "First day, included"),
    field("To", inputs.to, "Last day, included"),
    field("Queue", inputs.queue, "Count one queue's tasks only"),
    h("div", { class: "form-actions" }, h("button", { type: "submit" }, "Show")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ from: inputs.from.value, to: inputs.to.value });
    if (inputs.queue.value) query.set("queue", inputs.queue.value);
    navigate(`#/outcomes?${query}`);
  });
  return form;
}

function csvButton(from, to, queue) {
  const status = h("span", { class: "small", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "secondary", id: "download-csv" }, "Download CSV");
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "";
    try {
      const { blob, filename } = await download("/outcomes.csv", { from, to, queue });
      // A Blob URL carries the file the API sent with the credential; a plain link could not.
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: filename, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = `Downloaded ${filename}.`;
    } catch (error) {
      status.textContent = `Could not download: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { class: "button-row no-print" }, button, status);
}

/**
 * #/outcomes?from=YYYY-MM-DD&to=YYYY-MM-DD&queue= (default: the last 28 days up to today, every
 * queue the user may work: a coordinator restricted to some queues gets figures over theirs).
 */
export async function outcomesView({ params, navigate }) {
  const to = params.get("to") || isoDay(Date.now());
  const from = params.get("from") || isoDay(Date.parse(`${to}T00:00:00Z`) - (RANGE_DAYS - 1) * DAY);
  const queue = params.get("queue") || "";
  const queues = (await get("/queues")).data.map((q) => q.queue);
  const nodes = [heading(1, "Outcomes"), rangeForm(from, to, queue, queues, navigate)];
  let data;
  try {
    data = (await get("/outcomes", { from, to, queue })).data;
  } catch (error) {
    if (error.status !== 422 && error.status !== 403) throw error;
    const what = error.status === 403 ? "Choose another queue" : "Check the dates";
    nodes.push(notice(`${what}: ${error.message}.`, "error"));
    return { title: "Outcomes", nodes };
  }
  const overall = data.no_show_overall;
  const seen = overall.kept + overall.missed;
  nodes.push(
    h("p", { id: "outcomes-range" }, `From ${when(from)} to ${when(to)}, both included (UTC days). Figures as of ${when(data.at)}.`),
    csvButton(from, to, queue),
    h(
      "p",
      { class: "headline", id: "no-show-overall" },
      seen
        ? `Overall, ${overall.missed} of ${seen} kept or missed appointments were missed (${percent(overall.rate)}).`
        : "No appointment was kept or missed in these dates.",
    ),
  );
  const perDay = h("div", { id: "tasks-per-day" }, tasksPerDay(data, ""));
  const charted = [...new Set(data.tasks_per_day.map((r) => r.queue))].sort();
  const pick = h("select", { name: "chart-queue" }, h("option", { value: "" }, "All queues"), charted.map((q) => h("option", { value: q }, sentence(q))));
  pick.addEventListener("change", () => perDay.replaceChildren(tasksPerDay(data, pick.value)));
  nodes.push(
    section("Missed appointments", h("div", { class: "chart-grid" }, noShowByWeek(data), noShowByClinic(data))),
    section("Time to act", turnaround(data)),
    section("Tasks opened and closed", h("div", { class: "no-print" }, field("Chart one queue", pick)), perDay),
    section("Deadlines and workload", h("div", { class: "chart-grid" }, sla(data), workload(data))),
    h("p", { class: "small" }, "How each figure is computed: see docs/family.md, “Outcome figures”."),
  );
  return { title: "Outcomes", nodes };
}
