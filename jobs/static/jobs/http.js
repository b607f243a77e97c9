/**
 * The JSON API as the pages call it: same-origin credentials, and Django's CSRF token
 * (the `csrftoken` cookie echoed in `X-CSRFToken`) on every unsafe request.
 */

/** The `csrftoken` cookie, or "" before Django has set one. */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/**
 * GETs a JSON body.
 * @param {string} url @param {{timeoutMs: number}} options timeoutMs: give up (throw) after this long
 * @returns {Promise<*>} the body; throws on a network error or a non-2xx answer (the error's `status` says which)
 */
export async function getJson(url, { timeoutMs }) {
  const response = await fetch(url, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status });
  return response.json();
}

/** @param {string} url @param {*} [body] @returns {Promise<Response>} */
export function postJson(url, body) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body ?? {}),
    credentials: "same-origin",
  });
}

/**
 * Starts a job of a kind with a file parameter: multipart/form-data with the fields
 * kind, params (a JSON string) and one per file, as POST /api/jobs/ takes them. The
 * browser sets the Content-Type with its boundary.
 * @param {string} kind @param {Object<string, number|string>} params @param {Map<string, File>} files
 * @param {{email: boolean}|null} [notify] the `notify` field, when asked for
 * @returns {Promise<Response>}
 */
export function postUpload(kind, params, files, notify = null) {
  const body = new FormData();
  body.append("kind", kind);
  body.append("params", JSON.stringify(params));
  if (notify) body.append("notify", JSON.stringify(notify));
  for (const [name, file] of files) body.append(name, file, file.name);
  return fetch("/api/jobs/", {
    method: "POST",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    body,
    credentials: "same-origin",
  });
}

/**
 * One sentence for users from an API error body (`{"errors": {"field": ["…"]}}`): the
 * messages, each named by its field unless it is about the whole request.
 * @param {*} body the parsed body, or anything else when it was not JSON
 * @param {number} status
 * @returns {string}
 */
export function errorMessage(body, status) {
  const errors = body && typeof body === "object" && body.errors && typeof body.errors === "object" ? body.errors : {};
  const parts = Object.entries(errors).map(([field, messages]) => {
    const text = Array.isArray(messages) ? messages.join(" ") : String(messages);
    return ["__all__", "request", "state", "id"].includes(field) ? text : `${field}: ${text}`;
  });
  return parts.length ? parts.join(" ") : `The server answered ${status}.`;
}
