// The only way the app reaches the bridge: fetch() on the JSON API, with the signed-in user's
// credential. Every rule (roles, queues, state machine, versions) is the API's to enforce.

const STORE_KEY = "fhir-bridge.credential";
// The API is served at the root the UI hangs from (/ui/ -> /), also behind a path prefix.
const BASE = new URL("../", document.baseURI);

/** The credential kept for this browser tab (sessionStorage: gone when the tab closes). */
export function credential() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
  } catch {
    return null;
  }
}

export function keepCredential(cred) {
  sessionStorage.setItem(STORE_KEY, JSON.stringify(cred));
}

export function forgetCredential() {
  sessionStorage.removeItem(STORE_KEY);
}

/** An API answer that was not 2xx; `body` is the API's {error, message, details}. */
export class ApiError extends Error {
  constructor(status, body, etag) {
    super((body && body.message) || `The bridge answered ${status}.`);
    this.status = status;
    this.body = body || {};
    this.etag = etag;
  }

  get code() {
    return this.body.error || "";
  }
}

let onUnauthorized = () => {};

/** What to do when a stored credential stops working (expired token, revoked key). */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

function authHeaders(cred) {
  if (!cred) return {};
  return cred.kind === "key" ? { "X-API-Key": cred.value } : { Authorization: `Bearer ${cred.value}` };
}

/** "/tasks" + {status: ["open", "in-progress"], kind: ""} -> "tasks?status=open&status=in-progress". */
export function path(route, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") query.append(key, String(v));
    }
  }
  const text = query.toString();
  return route + (text ? `?${text}` : "");
}

/**
 * Call the API. Returns {data, etag}; throws ApiError for non-2xx answers (and for a network
 * failure, as status 0).
 * @param {string} method
 * @param {string} route absolute API path, e.g. "/tasks/abc" (may include a query)
 * @param {{body?: object, etag?: string, cred?: object|null}} options
 */
export async function call(method, route, options = {}) {
  const cred = options.cred === undefined ? credential() : options.cred;
  const headers = { Accept: "application/json", ...authHeaders(cred) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.etag) headers["If-Match"] = options.etag;
  let answer;
  try {
    answer = await fetch(new URL(route.replace(/^\//, ""), BASE), {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, {
      error: "network",
      message: "The bridge did not answer. Check that it is running and try again.",
    });
  }
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const etag = answer.headers.get("ETag");
  if (!answer.ok) {
    const error = new ApiError(answer.status, data, etag);
    if (answer.status === 401 && cred) onUnauthorized(error);
    throw error;
  }
  return { data, etag };
}

export const get = (route, params) => call("GET", path(route, params));
export const post = (route, body, etag) => call("POST", route, { body, etag });
export const del = (route, params) => call("DELETE", path(route, params));

/**
 * Fetch a file the API serves (e.g. /outcomes.csv) with the user's credential, as a Blob the
 * page can offer for download (a plain link would go without the auth header).
 * Returns {blob, filename}; throws ApiError like `call`.
 */
export async function download(route, params = {}) {
  const cred = credential();
  let answer;
  try {
    answer = await fetch(new URL(path(route, params).replace(/^\//, ""), BASE), {
      headers: authHeaders(cred),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { error: "network", message: "The bridge did not answer. Check that it is running and try again." });
  }
  if (!answer.ok) {
    let body = null;
    try {
      body = await answer.json();
    } catch {
      body = null;
    }
    const error = new ApiError(answer.status, body);
    if (answer.status === 401 && cred) onUnauthorized(error);
    throw error;
  }
  const found = /filename="([^"]+)"/.exec(answer.headers.get("Content-Disposition") || "");
  return { blob: await answer.blob(), filename: found ? found[1] : "download" };
}
