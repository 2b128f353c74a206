// Building the page from data without ever parsing data as HTML: every text goes through
// text nodes (textContent), so a patient's name or a comment can never become markup.

/**
 * Create an element. `attrs` keys: `class`, `text`, `on` ({event: handler}), `dataset`,
 * booleans (true sets the attribute, false/null/undefined omits it), anything else as an
 * attribute. Children: nodes, strings (as text), arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Append children (nodes, text, arrays; null and false are skipped). */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Remove every child of `el`. */
export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A heading that can take focus when a view opens (so screen readers announce it). */
export function heading(level, text, attrs = {}) {
  return h(`h${level}`, { tabindex: "-1", ...attrs }, text);
}

/** A section with a heading, labelled by it. */
let sectionCount = 0;
export function section(title, ...children) {
  const id = `section-${++sectionCount}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/** A description list from [term, value] pairs (values may be nodes); empty values skipped. */
export function facts(pairs, attrs = {}) {
  const dl = h("dl", { class: "facts", ...attrs });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(h("div", { class: "fact" }, h("dt", {}, term), h("dd", {}, value)));
  }
  return dl;
}

/** A labelled form field: label, control (and a hint), joined by for/id and aria-describedby. */
let fieldCount = 0;
export function field(label, control, hint) {
  const id = control.id || `field-${++fieldCount}`;
  control.id = id;
  const parts = [h("label", { for: id }, label), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("span", { class: "hint", id: hintId }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A status badge: always text (colour only repeats what the text says). */
export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}`.trim() }, text);
}

/** A message box; `role=alert` for problems so they are announced at once. */
export function notice(text, kind = "info") {
  const attrs = { class: `notice ${kind}`, tabindex: "-1" };
  attrs.role = kind === "error" || kind === "warning" ? "alert" : "status";
  return h("div", attrs, text);
}
