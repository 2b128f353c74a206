// On the patient page: family contacts with whether the patient authorized sharing (and a
// coordinator's flag for contacts no Consent decides), and admins' link / unlink decisions.

import { del, get, post } from "./api.js";
import { badge, facts, field, h, notice, section } from "./dom.js";
import { sentence, when } from "./format.js";
import { coordinator, session } from "./session.js";

// A message to show (and focus) after an action, once the page is shown again.
let flash = null;

/** The pending result message for `where` ("contacts" or "links"), once. */
export function takeFlash(where) {
  if (!flash || flash.where !== where) return null;
  const message = notice(flash.text, flash.kind);
  message.id = `${where}-result`;
  flash = null;
  return message;
}

async function act(ctx, button, where, run, done) {
  button.closest("section")?.querySelectorAll("button").forEach((b) => (b.disabled = true));
  try {
    await run();
    flash = { where, kind: "success", text: done };
  } catch (error) {
    flash = { where, kind: "error", text: `Not done: ${error.message}` };
  }
  await ctx.rerender((main) => main.querySelector(`#${where}-result`)?.focus());
}

function hasRole(...roles) {
  return Boolean(session.me && session.me.roles.some((r) => roles.includes(r)));
}

// -- family contacts --------------------------------------------------------------------------

const CONSENT = /^(Consent\/\S+) \(active, (permit|deny)\)$/;
const FLAG = /^(set|withheld) by coordinator (.+) on (\S+)$/;

/** Why a contact may (not) be told, in words; `fixed` when the patient's Consent decides. */
export function basisWords(basis) {
  const consent = CONSENT.exec(basis || "");
  if (consent) {
    const verb = consent[2] === "permit" ? "allows" : "refuses";
    return { fixed: true, flag: null, text: `The patient's consent on file (${consent[1]}) ${verb} sharing with them.` };
  }
  const flagged = FLAG.exec(basis || "");
  if (flagged) {
    const verb = flagged[1] === "set" ? "Marked as authorized" : "Marked as not authorized";
    return { fixed: false, flag: flagged[1] === "set", text: `${verb} by coordinator ${flagged[2]} on ${when(flagged[3])}.` };
  }
  const parts = String(basis || "").split("; ").map((part) => {
    const old = /^(Consent\/\S+) \(([^)]+)\): not in force$/.exec(part);
    if (old) return `A consent (${old[1]}) is on file but not in force (${old[2]}).`;
    if (part === "no consent on file") return "No consent on file and no coordinator decision: not authorized until someone records one.";
    return part;
  });
  return { fixed: false, flag: null, text: parts.join(" ") };
}

function languageName(code) {
  if (!code) return null;
  try {
    const name = new Intl.DisplayNames(["en"], { type: "language" }).of(code);
    return name && name !== code ? `${name} (${code})` : code;
  } catch {
    return code;
  }
}

const CHANNELS = { phone: "Phone", sms: "Text message (SMS)", email: "E-mail", fax: "Fax", pager: "Pager", url: "Web", other: "Other" };

/** The Patient record a contact belongs to: named in a Patient.contact reference, else the
 * linked record of the contact's source (the history does not say which, for RelatedPersons). */
function ownersOf(contact, links) {
  const own = /^Patient\/([^/]+)\/contact\//.exec(contact.reference);
  if (own) return [own[1]];
  return (links || []).filter((l) => l.source === contact.source).map((l) => l.id);
}

async function setSharing(contact, links, authorized) {
  let last = null;
  for (const id of ownersOf(contact, links)) {
    try {
      return await post("/family/sharing", {
        source: contact.source,
        patient: `Patient/${id}`,
        contact: contact.reference,
        authorized,
        coordinator: coordinator(),
      });
    } catch (error) {
      if (error.status !== 404) throw error;
      last = error;
    }
  }
  throw last || new Error("The patient record of this contact is not known.");
}

function sharingControls(ctx, contact, links, basis) {
  if (!hasRole("coordinator", "admin")) return null;
  if (basis.fixed) {
    return h("p", { class: "small" }, "This follows the patient's own consent, so it cannot be changed here: the consent has to change in the EHR.");
  }
  const who = contact.name || "this contact";
  const buttons = [];
  const add = (label, value, done, kind = "secondary") => {
    const button = h("button", { type: "button", class: kind }, label);
    button.addEventListener("click", () => act(ctx, button, "contacts", () => setSharing(contact, links, value), done));
    buttons.push(button);
  };
  if (basis.flag !== true) add(`Authorize sharing with ${who}`, true, `Sharing with ${who} is now authorized (your decision is recorded).`, "");
  if (basis.flag !== false) add(`Do not share with ${who}`, false, `${who} is now marked as not authorized.`);
  if (basis.flag !== null) add("Clear the coordinator's decision", null, `The decision about ${who} is cleared: not authorized unless a consent says otherwise.`);
  return h("div", { class: "button-row" }, buttons);
}

function contactItem(ctx, contact, links) {
  const basis = basisWords(contact.basis);
  const channel = contact.channel ? `${CHANNELS[contact.channel] || sentence(contact.channel)}${contact.telecom ? `: ${contact.telecom}` : ""}` : "Not recorded";
  const sharing = h(
    "span",
    {},
    badge(contact.authorized ? "✓ Authorized" : "✗ Not authorized", contact.authorized ? "status-completed" : "overdue"),
    " ",
    basis.text,
  );
  return h(
    "li",
    { class: "record contact", dataset: { contact: contact.reference } },
    h("h3", {}, contact.name || "Name not recorded"),
    facts([
      ["Relationship", contact.relationship ? sentence(contact.relationship) : "Not recorded"],
      ["Preferred channel", channel],
      ["Language", languageName(contact.language) || "Not recorded"],
      ["May be told about the patient's care", sharing],
    ]),
    h("p", { class: "small" }, `From ${contact.source}${contact.version_id ? `, version ${contact.version_id}` : ""} · ${contact.kind === "patient-contact" ? "a contact in the patient record" : "a related person record"}`),
    sharingControls(ctx, contact, links, basis),
  );
}

/** The history's `contacts` section. */
export function contactsSection(ctx, data) {
  const contacts = Array.isArray(data.contacts) ? data.contacts : [];
  const body = contacts.length
    ? h("ul", { class: "records" }, contacts.map((c) => contactItem(ctx, c, data.links)))
    : h("p", {}, "No family contacts on file.");
  return section(
    `Family contacts (${contacts.length})`,
    h("p", { class: "small" }, "Family updates are prepared only for contacts the patient authorized."),
    takeFlash("contacts"),
    h("div", { id: "contacts" }, body),
  );
}

// -- admins: these records are (not) the same person ----------------------------------------

function decisionWords(d) {
  const verb = d.same_person ? "Linked as the same person" : "Kept apart (not the same person)";
  return `${d.a} and ${d.b}: ${verb} by ${d.by} on ${when(d.at)}${d.note ? `. Note: ${d.note}` : ""}`;
}

function linkForm(ctx, here) {
  const source = h("input", { type: "text", name: "link-source", autocomplete: "off", required: true, value: here.split("/")[0] });
  const id = h("input", { type: "text", name: "link-id", autocomplete: "off", required: true });
  const note = h("input", { type: "text", name: "link-note", autocomplete: "off", maxlength: "500" });
  const submit = h("button", { type: "submit" }, "Link this record");
  const form = h(
    "form",
    { class: "filters", "aria-label": "Link another record" },
    field("Source of the other record", source, "The EHR it is stored from"),
    field("Patient id in that source", id),
    field("Note (why they are the same person)", note),
    h("div", { class: "form-actions" }, submit),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const other = `${source.value.trim()}/${id.value.trim()}`;
    act(ctx, submit, "links", () => post("/patients/links", { a: here, b: other, same_person: true, note: note.value.trim() || null }), `Linked ${other} to this person.`);
  });
  return form;
}

/** Admins only: link another record, say a linked record is not this person, undo a decision. */
export async function linkAdminSection(ctx, data, here) {
  if (!hasRole("admin")) return null;
  const mine = new Set((data.links || []).map((l) => `${l.source}/${l.id}`));
  mine.add(here);
  const all = (await get("/patients/links")).data;
  const relevant = all.filter((d) => mine.has(d.a) || mine.has(d.b));
  const others = (data.links || []).filter((l) => `${l.source}/${l.id}` !== here);
  const separate = others.map((l) => {
    const key = `${l.source}/${l.id}`;
    const button = h("button", { type: "button", class: "danger" }, `Not the same person: ${key}`);
    button.addEventListener("click", () =>
      act(ctx, button, "links", () => post("/patients/links", { a: here, b: key, same_person: false, note: null }), `${key} is kept apart from this person.`),
    );
    return h("li", {}, button);
  });
  const decisions = relevant.map((d) => {
    const button = h("button", { type: "button", class: "secondary" }, "Undo");
    button.setAttribute("aria-label", `Undo: ${decisionWords(d)}`);
    button.addEventListener("click", () =>
      act(ctx, button, "links", () => del("/patients/links", { a: d.a, b: d.b }), "The decision is undone: shared identifiers decide again."),
    );
    return h("li", { class: "record" }, h("p", {}, decisionWords(d)), button);
  });
  return section(
    "Link or separate records (admin)",
    takeFlash("links"),
    h("h3", {}, "Link another record"),
    linkForm(ctx, here),
    others.length ? [h("h3", {}, "Linked records that are not this person"), h("ul", { class: "plain button-list", id: "separate" }, separate)] : null,
    h("h3", {}, `Decisions about this person (${decisions.length})`),
    decisions.length ? h("ul", { class: "records", id: "link-decisions" }, decisions) : h("p", { id: "link-decisions" }, "None: only shared identifiers link these records."),
  );
}
