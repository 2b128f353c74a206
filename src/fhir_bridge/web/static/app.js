// The app shell: sign-in, the header, and hash routes (#/queues, #/tasks/ID, ...) so every
// page is linkable. Each view is an async function returning {title, nodes}.

import { ApiError, call, credential, forgetCredential, keepCredential, whenUnauthorized } from "./api.js";
import { boardView, queueView } from "./board.js";
import { clear, field, h, heading, notice } from "./dom.js";
import { huddleView } from "./huddle.js";
import { outcomesView } from "./outcomes.js";
import { patientView, searchView } from "./patient.js";
import { session } from "./session.js";
import { sourcesView } from "./sources.js";
import { taskView } from "./task.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const navSources = document.getElementById("nav-sources");
const who = document.getElementById("who");

const ROUTES = [
  [/^\/?$/, boardView],
  [/^\/queues$/, boardView],
  [/^\/queues\/([^/]+)$/, queueView],
  [/^\/tasks\/([^/]+)$/, taskView],
  [/^\/patients$/, searchView],
  [/^\/patients\/([^/]+)\/([^/]+)$/, patientView],
  [/^\/sources$/, sourcesView],
  [/^\/huddle$/, huddleView],
  [/^\/outcomes$/, outcomesView],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "");
  const cut = raw.indexOf("?");
  const route = cut < 0 ? raw : raw.slice(0, cut);
  return { route: route || "/", params: new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1)) };
}

function markNav(route) {
  const section = route.split("/")[1] || "queues";
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    const current = link.dataset.nav === (section === "tasks" ? "queues" : section);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let rendering = 0;

/**
 * Show the view the address names. `after(main)` runs once it is on screen (default: focus
 * the view's heading, so keyboard and screen reader users land on the new page).
 */
export async function render(after) {
  if (!session.me) return;
  const mine = ++rendering;
  const { route, params } = parseHash();
  markNav(route);
  main.setAttribute("aria-busy", "true");
  let view;
  try {
    const found = ROUTES.find(([pattern]) => pattern.test(route));
    if (!found) {
      view = problem("Page not found", "There is no page at this address.");
    } else {
      const args = route.match(found[0]).slice(1).map(decodeURIComponent);
      view = await found[1]({ args, params, rerender: render, navigate });
    }
  } catch (error) {
    view = errorView(error);
  }
  if (mine !== rendering || !session.me) return; // a newer navigation won, or signed out
  clear(main).append(...view.nodes);
  main.removeAttribute("aria-busy");
  document.title = `${view.title} · fhir_bridge`;
  if (after) after(main);
  else {
    window.scrollTo(0, 0);
    main.querySelector("h1")?.focus({ preventScroll: true });
  }
}

/** Go to a hash route (a new history entry, so Back works). */
export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function problem(title, message) {
  return { title, nodes: [heading(1, title), notice(message, "error")] };
}

function errorView(error) {
  if (!(error instanceof ApiError)) {
    console.error(error); // eslint-disable-line no-console
    return problem("Something went wrong", "The page could not be shown. Reload to try again.");
  }
  if (error.status === 404) return problem("Not found", error.message);
  if (error.status === 403) return problem("Not allowed", `You may not see this page: ${error.message}.`);
  if (error.status === 0) return problem("The bridge is not answering", error.message);
  return problem("Something went wrong", error.message);
}

// -- signing in ------------------------------------------------------------------------------

function showWho() {
  clear(who);
  const me = session.me;
  if (!me) return;
  if (!me.auth_enabled) {
    who.append(
      h("p", {}, h("strong", {}, "Demo mode"), ": authentication is off. You act as ", h("strong", {}, me.subject), "."),
    );
    return;
  }
  const roles = me.roles.length ? ` (${me.roles.join(", ")})` : "";
  who.append(
    h("p", {}, "Signed in as ", h("strong", {}, me.subject), roles),
    h("button", { type: "button", class: "secondary", on: { click: signOut } }, "Sign out"),
  );
}

async function probeSources() {
  // The nav item shows only if the API lets this user read /sources: no role table here.
  try {
    await call("GET", "/sources");
    navSources.hidden = false;
  } catch {
    navSources.hidden = true;
  }
}

async function signedIn(me) {
  session.me = me;
  showWho();
  nav.hidden = false;
  await probeSources();
  await render();
}

function signOut() {
  forgetCredential();
  session.me = null;
  showLogin("You are signed out.");
}

function showLogin(message, kind = "info") {
  session.me = null;
  nav.hidden = true;
  clear(who);
  const status = h("div", { id: "login-status" });
  if (message) status.append(notice(message, kind));
  const kindKey = h("input", { type: "radio", name: "kind", value: "key", id: "kind-key", checked: true });
  const kindToken = h("input", { type: "radio", name: "kind", value: "bearer", id: "kind-bearer" });
  const secret = h("input", { type: "password", name: "secret", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h(
    "form",
    { class: "login", novalidate: true },
    h(
      "fieldset",
      {},
      h("legend", {}, "What you sign in with"),
      h("div", { class: "choice" }, kindKey, h("label", { for: "kind-key" }, "An API key")),
      h("div", { class: "choice" }, kindToken, h("label", { for: "kind-bearer" }, "An access token (JWT) from your identity provider")),
    ),
    field("API key or token", secret, "Kept only in this browser tab until you sign out or close it."),
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = secret.value.trim();
    clear(status);
    if (!value) {
      status.append(notice("Enter your API key or token.", "error"));
      secret.focus();
      return;
    }
    const cred = { kind: kindToken.checked ? "bearer" : "key", value };
    try {
      const { data } = await call("GET", "/me", { cred });
      keepCredential(cred);
      await signedIn(data);
    } catch (error) {
      let text = error.message;
      if (error.status === 401) text = `Not accepted: ${error.message}. Check the key or token and try again.`;
      if (error.status === 403) text = "Accepted, but this account has no role in fhir_bridge (coordinator, integration-engineer or admin).";
      status.append(notice(text, "error"));
      status.firstChild.focus();
    }
  });
  clear(main).append(
    heading(1, "Sign in"),
    h("p", {}, "fhir_bridge needs an API key or an access token. Ask your administrator for one."),
    status,
    form,
  );
  document.title = "Sign in · fhir_bridge";
  main.querySelector("h1").focus();
}

async function start() {
  whenUnauthorized(() => {
    if (!session.me) return;
    forgetCredential();
    showLogin("Your sign-in is no longer accepted (it may have expired). Please sign in again.", "warning");
  });
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault(); // a plain #main would replace the route in the address
    main.focus();
  });
  window.addEventListener("hashchange", () => render());
  const stored = credential();
  try {
    // With auth off (the demo) /me answers without credentials: no prompt.
    const { data } = await call("GET", "/me", { cred: stored });
    await signedIn(data);
  } catch (error) {
    if (error.status === 401) {
      forgetCredential();
      showLogin(stored ? "Your sign-in is no longer accepted. Please sign in again." : null, "warning");
    } else if (error.status === 403) {
      forgetCredential();
      showLogin("These credentials have no role in fhir_bridge.", "error");
    } else {
      clear(main).append(...errorView(error).nodes);
    }
  }
}

start();
