// Hand-written SVG bar charts (no library: the CSP allows only our own scripts). Each chart has
// a title, axis labels, a <title>/<desc> for screen readers, bars that are keyboard buttons
// listing the tasks behind them, and a "Show the data" table with the same figures and links.

import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
let chartCount = 0;

/** An SVG element; `text` sets its text content (never markup). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) if (child) el.append(child);
  return el;
}

/** A round upper bound for an axis and its tick step: 7 -> {max: 8, step: 2}. */
export function niceScale(max) {
  if (!(max > 0)) return { max: 1, step: 1 };
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const nice = [1, 2, 5, 10].map((m) => m * power).find((x) => x >= rough);
  const step = Number.isInteger(max) ? Math.max(1, nice) : nice; // counts tick in whole numbers
  return { max: Math.ceil(max / step) * step, step };
}

function shorten(text, n) {
  const t = String(text);
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

function taskLinks(ids) {
  return h(
    "ul",
    { class: "id-list" },
    ids.map((id) => h("li", {}, h("a", { href: `#/tasks/${encodeURIComponent(id)}` }, `Task ${id}`))),
  );
}

/** What a figure rests on: task links (and other ids, e.g. missed appointments, as text). */
export function behind(bar) {
  const parts = [];
  for (const [label, ids] of bar.ids || []) {
    if (!ids.length) continue;
    const list = /task/i.test(label) ? taskLinks(ids) : h("ul", { class: "id-list" }, ids.map((id) => h("li", {}, id)));
    parts.push(h("p", { class: "ids-label" }, `${label} (${ids.length}):`), list);
  }
  return parts.length ? parts : [h("p", {}, "No tasks behind this figure.")];
}

/**
 * A bar chart as a figure. `categories`: [{key, label}] along the category axis; `series`:
 * [{key, label}] (one bar per category and series, patterned differently, not only coloured);
 * `bars`: [{category, series, value, text (the value in words), ids: [[label, [ids]]]}] — a
 * category without a bar is left empty. `format(v)` writes an axis tick.
 * `horizontal` lays categories down the side (long names), else along the bottom.
 */
export function barChart({ id, title, description, categories, series, bars, valueLabel, categoryLabel, format = String, max, horizontal = false, empty = "Nothing to show for these dates." }) {
  const n = ++chartCount;
  const ids = { title: `chart-${n}-title`, desc: `chart-${n}-desc` };
  const panel = h("div", { class: "chart-ids", "aria-live": "polite", id: `${id}-ids` });
  const scale = max ? { max, step: max / 4 } : niceScale(Math.max(0, ...bars.map((b) => b.value)));
  const top = scale.max;
  const svg = horizontal
    ? horizontalBars({ categories, series, bars, top, scale, format, valueLabel, n })
    : verticalBars({ categories, series, bars, top, scale, format, valueLabel, categoryLabel, n });
  svg.setAttribute("role", "group");
  svg.setAttribute("aria-labelledby", ids.title);
  svg.setAttribute("aria-describedby", ids.desc);
  svg.prepend(s("title", { id: ids.title, text: title }), s("desc", { id: ids.desc, text: description }));
  if (!bars.length && !categories.some((c) => c.note)) {
    const vb = svg.viewBox.baseVal;
    svg.append(s("text", { x: vb.width / 2, y: vb.height / 2, "text-anchor": "middle", class: "chart-empty", text: empty }));
  }
  for (const bar of svg.querySelectorAll(".bar")) {
    const data = bars[Number(bar.dataset.index)];
    const show = () => {
      for (const other of svg.querySelectorAll(".bar[aria-pressed=true]")) other.setAttribute("aria-pressed", "false");
      bar.setAttribute("aria-pressed", "true");
      panel.replaceChildren(h("h4", {}, `Behind “${data.name}”: ${data.text}`), ...behind(data));
    };
    bar.addEventListener("click", show);
    bar.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        show();
      }
    });
  }
  const legend = series.length > 1
    ? h("ul", { class: "legend", "aria-hidden": "true" }, series.map((sr, i) => h("li", {}, h("span", { class: `swatch series-${i}` }), sr.label)))
    : null;
  return h(
    "figure",
    { class: "chart", id },
    h("figcaption", {}, h("h3", {}, title), h("p", { class: "small" }, description)),
    legend,
    h("div", { class: "chart-box" }, svg),
    h("p", { class: "small no-print" }, bars.length ? "Select a bar (click, or Tab then Enter) to list the tasks behind it." : ""),
    panel,
    dataTable({ title, categories, series, bars, categoryLabel, valueLabel }),
  );
}

function patterns(n) {
  // Series 1 is hatched, series 2 dotted: told apart without colour (and in print).
  return s(
    "defs",
    {},
    s("pattern", { id: `hatch-${n}`, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
      s("rect", { width: 6, height: 6, class: "fill-1" }), s("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" })),
    s("pattern", { id: `dots-${n}`, width: 6, height: 6, patternUnits: "userSpaceOnUse" },
      s("rect", { width: 6, height: 6, class: "fill-2" }), s("circle", { cx: 3, cy: 3, r: 1.4, class: "dot" })),
  );
}

function fillOf(seriesIndex, n) {
  return [null, `url(#hatch-${n})`, `url(#dots-${n})`][seriesIndex] || null;
}

function barNode(bar, index, seriesIndex, n, box, label) {
  const rect = s("rect", { ...box, class: `series-${seriesIndex}`, fill: fillOf(seriesIndex, n) });
  return s(
    "g",
    { class: "bar", tabindex: 0, role: "button", "aria-pressed": "false", "aria-label": label, "data-index": index, "data-category": bar.category, "data-series": bar.series },
    rect,
  );
}

function verticalBars({ categories, series, bars, top, scale, format, valueLabel, categoryLabel, n }) {
  const m = { left: 56, right: 12, top: 20, bottom: 60 };
  const height = 280;
  const plotW = WIDTH - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg" }, patterns(n));
  const y = (v) => m.top + plotH - (plotH * v) / top;
  for (let t = 0; t <= top + 1e-9; t += scale.step) {
    svg.append(
      s("line", { x1: m.left, x2: WIDTH - m.right, y1: y(t), y2: y(t), class: t === 0 ? "axis" : "grid" }),
      s("text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick", text: format(t) }),
    );
  }
  const band = plotW / Math.max(1, categories.length);
  const every = Math.ceil(categories.length / 10);
  categories.forEach((c, i) => {
    if (i % every === 0) {
      svg.append(s("text", { x: m.left + band * (i + 0.5), y: height - m.bottom + 16, "text-anchor": "middle", class: "tick", text: shorten(c.label, 12) }));
    }
  });
  const barW = Math.min(48, (band * 0.8) / series.length);
  bars.forEach((bar, index) => {
    const ci = categories.findIndex((c) => c.key === bar.category);
    const si = Math.max(0, series.findIndex((sr) => sr.key === bar.series));
    const x = m.left + band * ci + (band - barW * series.length) / 2 + barW * si;
    const hgt = Math.max(2, y(0) - y(bar.value));
    const node = barNode(bar, index, si, n, { x, y: y(0) - hgt, width: Math.max(1, barW - 1), height: hgt }, `${bar.name}: ${bar.text}`);
    if (barW >= 14) node.append(s("text", { x: x + barW / 2, y: y(0) - hgt - 4, "text-anchor": "middle", class: "value", text: bar.short ?? bar.text }));
    svg.append(node);
  });
  svg.append(
    s("text", { x: m.left + plotW / 2, y: height - 10, "text-anchor": "middle", class: "axis-label", text: categoryLabel }),
    s("text", { x: 14, y: m.top + plotH / 2, "text-anchor": "middle", class: "axis-label", transform: `rotate(-90 14 ${m.top + plotH / 2})`, text: valueLabel }),
  );
  return svg;
}

function horizontalBars({ categories, series, bars, top, scale, format, valueLabel, n }) {
  const m = { left: 190, right: 90, top: 12, bottom: 44 };
  const row = 14 + 16 * series.length;
  const height = m.top + m.bottom + row * Math.max(1, categories.length);
  const plotW = WIDTH - m.left - m.right;
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg" }, patterns(n));
  const x = (v) => m.left + (plotW * v) / top;
  const bottom = height - m.bottom;
  for (let t = 0; t <= top + 1e-9; t += scale.step) {
    svg.append(
      s("line", { x1: x(t), x2: x(t), y1: m.top, y2: bottom, class: t === 0 ? "axis" : "grid" }),
      s("text", { x: x(t), y: bottom + 16, "text-anchor": "middle", class: "tick", text: format(t) }),
    );
  }
  categories.forEach((c, i) => {
    svg.append(s("text", { x: m.left - 8, y: m.top + row * i + row / 2 + 4, "text-anchor": "end", class: "tick category", text: shorten(c.label, 26) }, s("title", { text: c.label })));
    if (c.note) svg.append(s("text", { x: m.left + 6, y: m.top + row * i + row / 2 + 4, class: "tick note", text: c.note }));
  });
  bars.forEach((bar, index) => {
    const ci = categories.findIndex((c) => c.key === bar.category);
    const si = Math.max(0, series.findIndex((sr) => sr.key === bar.series));
    const yy = m.top + row * ci + 7 + 16 * si;
    const w = Math.max(2, x(bar.value) - x(0));
    const node = barNode(bar, index, si, n, { x: x(0), y: yy, width: w, height: 14 }, `${bar.name}: ${bar.text}`);
    node.append(s("text", { x: x(0) + w + 4, y: yy + 11, class: "value", text: bar.short ?? bar.text }));
    svg.append(node);
  });
  svg.append(s("text", { x: m.left + plotW / 2, y: height - 8, "text-anchor": "middle", class: "axis-label", text: valueLabel }));
  return svg;
}

function dataTable({ title, categories, series, bars, categoryLabel, valueLabel }) {
  const rows = bars.map((bar) => {
    const category = categories.find((c) => c.key === bar.category);
    const sr = series.length > 1 ? series.find((x) => x.key === bar.series) : null;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, category ? category.label : bar.category, sr ? ` (${sr.label})` : ""),
      h("td", { "data-label": valueLabel }, bar.text),
      h("td", { "data-label": "Behind it" }, behind(bar)),
    );
  });
  return h(
    "details",
    { class: "chart-data" },
    h("summary", {}, "Show the data"),
    h(
      "table",
      {},
      h("caption", {}, title),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, categoryLabel || "Group"), h("th", { scope: "col" }, valueLabel), h("th", { scope: "col" }, "Behind it"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "3" }, "No figures for these dates."))),
    ),
  );
}
