/**
 * The submit form on `/`: shows the selected kind's parameters, posts the job (JSON,
 * or multipart when the kind takes a file) and puts the server's messages next to
 * their fields. The server validates; the form only spares sending a file it would
 * refuse for its size.
 */

import { postJson, postUpload } from "./http.js";
import { paramValue } from "./param-value.js";

/** @typedef {import("./job.js").Job} Job */

const FORM_FIELDS = new Set(["kind", "notify"]); // the form's own fields; others are the kind's parameters

/** @param {HTMLFormElement} form */
function clearErrors(form) {
  for (const node of form.querySelectorAll("[data-error-for], #form-error")) {
    node.textContent = "";
    node.setAttribute("hidden", "");
  }
  for (const node of form.querySelectorAll(".field--invalid")) node.classList.remove("field--invalid");
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

/**
 * Puts each message next to its field (`kind`, or a param name); others on top.
 * @param {HTMLFormElement} form @param {string} kind @param {Object<string, string[]>} errors
 */
function showErrors(form, kind, errors) {
  const general = [];
  for (const [field, messages] of Object.entries(errors)) {
    const name = FORM_FIELDS.has(field) ? field : `${kind}-${field}`;
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (!slot) { general.push(field === "__all__" ? messages.join(" ") : `${field}: ${messages.join(" ")}`); continue; }
    slot.textContent = messages.join(" ");
    slot.removeAttribute("hidden");
    slot.closest(".field")?.classList.add("field--invalid");
    const input = form.elements.namedItem(name);
    if (input instanceof HTMLElement) {
      input.setAttribute("aria-invalid", "true");
      if (slot.id) input.setAttribute("aria-describedby", slot.id);
    }
  }
  const top = form.querySelector("#form-error");
  if (top && general.length) { top.textContent = general.join(" "); top.removeAttribute("hidden"); }
  /** @type {HTMLElement|null} */ (form.querySelector("[aria-invalid=true]"))?.focus();
}

/**
 * Reads the selected kind's inputs (each by its declared type, param-value.js), files
 * apart.
 * @param {Element|null} fieldset @param {string} kind
 */
function readParams(fieldset, kind) {
  /** @type {Object<string, number|string|boolean>} */
  const params = {};
  /** @type {Map<string, File>} */
  const files = new Map();
  /** @type {Object<string, string[]>} */
  const fileErrors = {};
  /** @type {HTMLInputElement[]} */
  const fileInputs = [];
  for (const input of fieldset?.querySelectorAll("input, select") ?? []) {
    const name = input.name.slice(kind.length + 1);
    if (input instanceof HTMLInputElement && input.type === "file") {
      fileInputs.push(input);
      const file = input.files?.[0];
      const limit = Number(input.dataset.maxBytes);
      if (!file) fileErrors[name] = ["Choose a file to upload."];
      else if (limit && file.size > limit) fileErrors[name] = [`The file '${file.name}' is over the limit of ${input.dataset.maxSize}.`];
      else files.set(name, file);
    } else {
      const value = paramValue(/** @type {HTMLInputElement} */ (input));
      if (value !== undefined) params[name] = value;
    }
  }
  return { params, files, fileErrors, fileInputs };
}

/**
 * The `notify` field the form asks for: "Email me when it ends" is shown to signed-in
 * users with an address only. @param {HTMLFormElement} form @returns {{email: boolean}|null}
 */
function readNotify(form) {
  const box = form.elements.namedItem("notify_email");
  return box instanceof HTMLInputElement && box.checked ? { email: true } : null;
}

/**
 * @param {HTMLFormElement} form
 * @param {(job: Job) => void} onStarted called with the new job the server answered
 */
export function setUpForm(form, onStarted) {
  const select = /** @type {HTMLSelectElement} */ (form.querySelector("[data-kind-select]"));
  const status = form.querySelector("[data-form-status]");
  const button = /** @type {HTMLButtonElement|null} */ (form.querySelector("button[type=submit]"));
  form.noValidate = true; // the server's messages show inline, next to their fields
  const showKind = () => {
    for (const fieldset of form.querySelectorAll("fieldset[data-kind]")) {
      const selected = fieldset.getAttribute("data-kind") === select.value;
      /** @type {HTMLFieldSetElement} */ (fieldset).hidden = !selected;
      fieldset.toggleAttribute("data-selected", selected);
    }
  };
  select.addEventListener("change", () => { clearErrors(form); showKind(); });
  showKind();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const kind = select.value;
    const fieldset = form.querySelector(`fieldset[data-kind="${CSS.escape(kind)}"]`);
    const { params, files, fileErrors, fileInputs } = readParams(fieldset, kind);
    clearErrors(form);
    if (Object.keys(fileErrors).length) { showErrors(form, kind, fileErrors); return; }
    if (button) button.disabled = true;
    if (status) status.textContent = fileInputs.length ? "Uploading…" : "Starting…";
    try {
      const notify = readNotify(form);
      const response = fileInputs.length
        ? await postUpload(kind, params, files, notify)
        : await postJson("/api/jobs/", notify ? { kind, params, notify } : { kind, params });
      const body = await response.json().catch(() => ({}));
      if (response.status === 201) {
        onStarted(body);
        for (const input of fileInputs) input.value = ""; // the next import is another file
        if (status) status.textContent = "Started.";
        return;
      }
      showErrors(form, kind, body.errors ?? { request: [`The server answered ${response.status}.`] });
      if (status) status.textContent = "";
    } catch {
      showErrors(form, kind, { request: ["Could not reach the server; try again."] });
      if (status) status.textContent = "";
    } finally {
      if (button) button.disabled = false;
    }
  });
}
