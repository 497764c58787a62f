// falgate playground: a form per model generated from GET /v1/models, uploads through the gateway,
// live progress over Server-Sent Events, and the resulting video. Plain DOM code, no framework, no build.
"use strict";

const IMAGE_TYPES = "image/png,image/jpeg,image/webp,image/gif"; // what /v1/storage/upload accepts
const LONG_TEXT = new Set(["prompt", "negative_prompt"]);
const CARRIED_OVER = ["prompt", "image_url", "end_image_url"]; // kept when switching models
const KEY_STORAGE = "falgate.playground.key";

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "", // sessionStorage: gone with the tab, never sent anywhere else
  models: [],
  fields: new Map(), // name -> field (see buildField)
  uploads: 0, // uploads in flight: submitting meanwhile would send an empty image_url
  source: null, // the EventSource of the request being watched
  run: null, // the submit answer of that request
};

// --- small helpers ----------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name in node && typeof value !== "string") node[name] = value; // properties like hidden, required
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function authHeaders(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

// The gateway answers absolute URLs built from its public URL; the page may be open under another host
// name for the same server (localhost vs 127.0.0.1), and its CSP only allows calls to its own origin.
function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // an empty or non-JSON error page: report the status alone
  }
  if (response.status === 401) showAuth(describe(body, "401 Unauthorized"));
  return { status: response.status, ok: response.ok, body };
}

function describe(body, fallback) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${fieldPath(d.loc)}: ${d.msg}`).join("; ");
  return fallback;
}

// ["body", "num_frames"] -> "num_frames": fal's 422 locations start with where the value was.
function fieldPath(loc) {
  return (loc || []).slice(1).join(".") || "request";
}

function showAuth(message) {
  $("auth").hidden = false;
  $("auth").classList.add("attention");
  const prefix = state.key ? "The key was refused" : "This gateway needs an API key";
  $("auth-message").textContent = `${prefix}: ${message}`;
  $("api-key").focus();
}

// --- models and the generated form ------------------------------------------------------------------

async function loadModels() {
  const { ok, status, body } = await api("/v1/models");
  const select = $("model");
  if (!ok) {
    select.replaceChildren(el("option", { text: status === 401 ? "Enter an API key above" : "Could not load models" }));
    if (status !== 401) $("form-error").textContent = describe(body, `GET /v1/models answered ${status}`);
    return;
  }
  state.models = body.models;
  const previous = select.value;
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id, text: m.title })));
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  select.disabled = false;
  $("submit").disabled = false;
  $("form-error").textContent = "";
  renderForm();
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

// A `$ref` into the schema's `$defs` (fal's documents and pydantic both use them), resolved in place.
function resolve(prop, defs) {
  for (let i = 0; prop && prop.$ref && i < 16; i++) {
    const { $ref, ...rest } = prop;
    prop = { ...(defs[$ref.split("/").pop()] || {}), ...rest };
  }
  return prop || {};
}

// Optional fields are anyOf [{type: X}, {type: "null"}]: use the non-null branch. A union of an object and
// an enum of presets (fal's camera controls) becomes a JSON field, where either can be typed.
function flatten(prop, defs = {}) {
  prop = resolve(prop, defs);
  if (prop.allOf && prop.allOf.length === 1) {
    const { allOf, ...rest } = prop;
    prop = { ...resolve(allOf[0], defs), ...rest };
  }
  if (!prop.anyOf) return prop;
  const branches = prop.anyOf.map((p) => resolve(p, defs)).filter((p) => p.type !== "null");
  const { anyOf, ...rest } = prop;
  if (branches.length > 1) return { ...rest, type: "object", union: true };
  return { ...(branches[0] || {}), ...rest };
}

// fal's documents give the form order in x-fal-order-properties; the rest follow in schema order.
function orderedProperties(schema) {
  const props = schema.properties || {};
  const order = (schema["x-fal-order-properties"] || []).filter((name) => name in props);
  return [...order, ...Object.keys(props).filter((name) => !order.includes(name))].map((name) => [name, props[name]]);
}

function kindOf(name, prop) {
  if (name.endsWith("image_url")) return "image";
  if (prop.enum) return "enum";
  if (prop.type === "boolean") return "bool";
  if (prop.type === "object" || prop.type === "array") return "json"; // nested objects and arrays: typed as JSON
  if (prop.type === "integer" || prop.type === "number") return "number";
  if (LONG_TEXT.has(name) || (prop.maxLength || 0) > 300) return "textarea";
  return "text";
}

function renderForm() {
  const model = currentModel();
  if (!model) return;
  const kept = {};
  for (const name of CARRIED_OVER) if (state.fields.has(name)) kept[name] = state.fields.get(name).control.value;

  const schema = model.input_schema;
  const required = new Set(schema.required || []);
  state.fields = new Map();
  const rows = orderedProperties(schema).map(([name, raw]) => {
    const field = buildField(name, flatten(raw, schema.$defs || {}), required.has(name));
    if (kept[name]) field.control.value = kept[name];
    state.fields.set(name, field);
    return field.row;
  });
  $("fields").replaceChildren(...rows);
  $("form-error").textContent = "";

  const billing = model.billing || {};
  const price = billing.price_per_unit != null ? `$${billing.price_per_unit} per ${billing.unit}. ` : "";
  $("model-info").textContent = `${model.id} — ${price}${billing.description || ""}`;
  document.dispatchEvent(new Event("playground:form")); // a new form: quote.js prices it
}

// A field is {name, kind, control, row, errorEl, read()}; read() answers undefined when the field is to be
// left out of the body, so fal applies its own default.
function buildField(name, prop, required) {
  const id = `f-${name}`;
  const kind = kindOf(name, prop);
  const hint = el("small", { id: `${id}-hint`, class: "hint" });
  const errorEl = el("p", { id: `${id}-error`, class: "field-error", role: "alert" });
  const common = { id, name, required, "aria-describedby": `${id}-hint ${id}-error` };
  const notes = [];
  let control;
  let read;
  let extra = null;

  if (kind === "enum") {
    // Option values are indexes, so integer enums (MAGI's num_inference_steps) go out as numbers.
    const hasDefault = "default" in prop;
    control = el("select", common);
    if (!hasDefault) control.append(el("option", { value: "", text: "(default)" }));
    prop.enum.forEach((value, index) => {
      const selected = hasDefault && value === prop.default;
      const text = selected ? `${value} (default)` : String(value);
      control.append(el("option", { value: String(index), text, selected }));
    });
    read = () => {
      if (control.value === "") return undefined;
      const value = prop.enum[Number(control.value)];
      return hasDefault && value === prop.default ? undefined : value;
    };
  } else if (kind === "bool") {
    // Three states, so "leave it to fal" stays distinct from an explicit false.
    const label = "default" in prop ? `(default: ${prop.default})` : "(default)";
    control = el("select", common, el("option", { value: "", text: label }));
    control.append(el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
    read = () => (control.value === "" ? undefined : control.value === "true");
  } else if (kind === "number") {
    const integer = prop.type === "integer";
    control = el("input", {
      ...common,
      type: "number",
      inputmode: integer ? "numeric" : "decimal",
      min: prop.minimum,
      max: prop.maximum,
      step: integer ? "1" : "any",
      placeholder: "default" in prop ? String(prop.default) : "",
    });
    notes.push(rangeNote(prop.minimum, prop.maximum));
    read = () => (control.value === "" ? undefined : Number(control.value));
  } else if (kind === "json") {
    const example = "default" in prop ? prop.default : (prop.examples || [])[0];
    control = el("textarea", {
      ...common,
      rows: 3,
      spellcheck: "false",
      placeholder: example !== undefined ? JSON.stringify(example) : prop.type === "array" ? "[ … ]" : "{ … }",
    });
    notes.push("JSON");
    // A value that is not JSON stops the submit with a message on this field, rather than sending a string.
    read = () => {
      if (control.value.trim() === "") return undefined;
      try {
        return JSON.parse(control.value);
      } catch {
        throw new FieldError(name, "Not valid JSON");
      }
    };
  } else {
    const tag = kind === "textarea" ? "textarea" : "input";
    const stringDefault = typeof prop.default === "string" ? prop.default : "";
    control = el(tag, {
      ...common,
      type: tag === "input" ? "text" : undefined,
      rows: tag === "textarea" ? (name === "prompt" ? 3 : 2) : undefined,
      maxlength: prop.maxLength,
      placeholder: kind === "image" ? "https://… or drop an image above" : stringDefault,
      spellcheck: kind === "image" ? "false" : undefined,
    });
    read = () => (control.value === "" ? undefined : control.value);
    if (kind === "image") extra = dropZone(control, errorEl, `${id}-file`);
  }
  // Enum and boolean defaults are marked in their options, string defaults shown as the placeholder.
  if (kind === "number" && "default" in prop) notes.push(`default ${prop.default}`);
  if (prop.maxLength) notes.push(`at most ${prop.maxLength} characters`);
  hint.textContent = [prop.description, notes.filter(Boolean).join(", ")].filter(Boolean).join(" — ");

  const mark = required ? el("span", { class: "required", title: "required", text: " *" }) : null;
  const label = el("label", { for: id, text: prop.title || name }, mark);
  const wide = kind === "image" || kind === "textarea" || kind === "json";
  const attrs = { class: wide ? "field wide" : "field", "data-field": name, "data-kind": kind };
  const row = el("div", attrs, label, extra, control, hint, errorEl);
  // A corrected value clears its stale message (browser's or gateway's) right away.
  control.addEventListener("input", () => setFieldError(state.fields.get(name), ""));
  return { name, kind, control, row, errorEl, read };
}

class FieldError extends Error {
  constructor(name, message) {
    super(message);
    this.field = name;
  }
}

function rangeNote(min, max) {
  if (min != null && max != null) return `from ${min} to ${max}`;
  if (min != null) return `at least ${min}`;
  return max != null ? `at most ${max}` : "";
}

function dropZone(urlInput, errorEl, fileId) {
  const preview = el("img", { class: "preview", alt: "", hidden: true });
  const note = el("span", { class: "drop-note", text: "Drop an image here, or " });
  const picker = el("input", { id: fileId, type: "file", accept: IMAGE_TYPES, class: "visually-hidden" });
  const choose = el("label", { for: fileId, class: "link", text: "choose a file" });
  const zone = el("div", { class: "dropzone" }, preview, el("p", {}, note, choose), picker);

  const take = (file) => {
    if (file) upload(file, { urlInput, errorEl, preview, note, zone });
  };
  picker.addEventListener("change", () => {
    take(picker.files[0]);
    picker.value = ""; // so that choosing the same file again uploads it again
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault(); // without this the browser refuses the drop (and would open the file instead)
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer.files[0]);
  });
  return zone;
}

async function upload(file, { urlInput, errorEl, preview, note, zone }) {
  state.uploads += 1;
  zone.classList.add("busy");
  note.textContent = `Uploading ${file.name}… `;
  errorEl.textContent = "";
  try {
    const form = new FormData();
    form.append("file", file);
    const { ok, status, body } = await api("/v1/storage/upload", { method: "POST", body: form });
    if (!ok) {
      note.textContent = "Drop an image here, or ";
      errorEl.textContent = describe(body, `Upload failed (${status})`);
      return;
    }
    urlInput.value = body.file_url;
    urlInput.dispatchEvent(new Event("input", { bubbles: true })); // set by script: say so, as typing would
    if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file); // local preview: the stored copy may not be public yet
    preview.hidden = false;
    note.textContent = `Uploaded ${file.name} (${Math.ceil(body.file_size / 1024)} kB). Drop another, or `;
  } catch (error) {
    errorEl.textContent = `Upload failed: ${error.message}`;
  } finally {
    state.uploads -= 1;
    zone.classList.remove("busy");
  }
}

function setFieldError(field, message) {
  if (!field) return;
  field.errorEl.textContent = message;
  field.row.classList.toggle("invalid", Boolean(message));
  field.control.setAttribute("aria-invalid", message ? "true" : "false");
}

// --- submitting ---------------------------------------------------------------------------------------

// The browser's constraint checks (required, min/max, step, maxlength) catch typos early; the gateway
// stays the source of truth, and its 422 messages land in the same place.
function browserCheck() {
  let first = null;
  for (const field of state.fields.values()) {
    const valid = field.control.checkValidity();
    setFieldError(field, valid ? "" : field.control.validationMessage);
    if (!valid && !first) first = field;
  }
  if (first) first.control.focus();
  return !first;
}

function showServerErrors(detail) {
  const loose = [];
  let first = null;
  for (const item of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const loc = item.loc || [];
    const field = loc[0] === "body" ? state.fields.get(loc[1]) : undefined;
    if (!field) {
      loose.push(`${fieldPath(loc)}: ${item.msg}`);
      continue;
    }
    const earlier = field.errorEl.textContent;
    setFieldError(field, earlier ? `${earlier}; ${item.msg}` : item.msg);
    first = first || field;
  }
  $("form-error").textContent = loose.join("\n");
  if (first) first.control.focus();
}

// The body a submit sends (and a quote prices): only what the user set, so fal applies its defaults.
// Throws FieldError for a JSON field that does not parse.
function formBody() {
  const body = {};
  for (const field of state.fields.values()) {
    const value = field.read();
    if (value !== undefined) body[field.name] = value;
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  const model = currentModel();
  if (!model) return;
  if (state.uploads > 0) {
    $("form-error").textContent = "Wait for the image upload to finish.";
    return;
  }
  $("form-error").textContent = "";
  for (const field of state.fields.values()) setFieldError(field, "");
  if (!$("skip-checks").checked && !browserCheck()) return;

  let body;
  try {
    body = formBody();
  } catch (error) {
    if (!(error instanceof FieldError)) throw error;
    const field = state.fields.get(error.field);
    setFieldError(field, error.message);
    field.control.focus();
    return;
  }
  $("submit").disabled = true;
  try {
    const answer = await api(`/${model.id}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (answer.status === 422) showServerErrors(answer.body && answer.body.detail);
    else if (!answer.ok) $("form-error").textContent = describe(answer.body, `The gateway answered ${answer.status}`);
    else watch(model, answer.body);
  } catch (error) {
    $("form-error").textContent = `The gateway could not be reached: ${error.message}`;
  } finally {
    $("submit").disabled = false;
  }
}

// --- watching a request over Server-Sent Events --------------------------------------------------------

function setRunState(runState, statusText) {
  $("run").dataset.state = runState;
  const status = $("status");
  status.textContent = statusText;
  status.className = `status ${runState}`;
}

function addTimeline(text) {
  const time = new Date().toLocaleTimeString();
  $("timeline").append(el("li", {}, el("time", { text: time }), ` ${text}`));
}

function addLog(line) {
  const level = (line.level || "info").toLowerCase();
  const logs = $("logs");
  logs.append(el("li", { class: `log ${level}` }, el("span", { class: "level", text: level }), ` ${line.message}`));
  logs.scrollTop = logs.scrollHeight;
}

function stopWatching() {
  if (state.source) state.source.close();
  state.source = null;
  $("cancel").hidden = true;
}

function watch(model, submitted) {
  stopWatching();
  state.run = submitted;
  $("request-id").textContent = submitted.request_id;
  $("queue-position").textContent = submitted.queue_position ?? "—";
  $("timeline").replaceChildren();
  $("logs").replaceChildren();
  $("result").replaceChildren();
  $("run-error").textContent = "";
  $("cancel").hidden = false;
  setRunState("queued", "SUBMITTED");
  addTimeline(`submitted to ${model.title}`);

  // EventSource cannot send headers: the gateway accepts the key as access_token on /events paths only.
  let url = `/v1/requests/${encodeURIComponent(submitted.request_id)}/events`;
  if (state.key) url += `?access_token=${encodeURIComponent(state.key)}`;
  const source = new EventSource(url);
  state.source = source;
  let lastStatus = "";

  source.addEventListener("open", () => $("run").classList.remove("reconnecting"));
  source.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    const position = data.queue_position;
    $("queue-position").textContent = position ?? "—";
    setRunState(data.status === "IN_QUEUE" ? "queued" : "running", data.status);
    const text = position != null ? `${data.status} (queue position ${position})` : data.status;
    if (text !== lastStatus) addTimeline(text);
    lastStatus = text;
  });
  source.addEventListener("logs", (event) => {
    for (const line of JSON.parse(event.data).logs || []) addLog(line);
  });
  source.addEventListener("completed", (event) => {
    stopWatching();
    const data = JSON.parse(event.data);
    setRunState("completed", "COMPLETED");
    $("queue-position").textContent = "—";
    addTimeline("COMPLETED");
    showResult(data.payload || {});
  });
  // A named "error" event from the gateway carries data; the EventSource's own connection errors do not.
  source.addEventListener("error", (event) => {
    if (event.data) {
      stopWatching();
      const data = JSON.parse(event.data);
      setRunState("failed", "ERROR");
      addTimeline("ERROR");
      $("run-error").textContent = describeFailure(data);
      return;
    }
    if (source.readyState === EventSource.CLOSED) connectionFailed(source, url);
    else $("run").classList.add("reconnecting"); // the browser retries by itself, resuming with Last-Event-ID
  });
  source.addEventListener("reconnect", (event) => {
    // The gateway is shutting down; the stream ends and EventSource reconnects (to another replica).
    addTimeline(`gateway asked to reconnect: ${JSON.parse(event.data).reason || "restarting"}`);
  });
}

// fal's payload says what happened ("Request was cancelled"); `error` is how the gateway learned of it.
function describeFailure(data) {
  const detail = describe(data.payload, "");
  const error = typeof data.error === "string" ? data.error : data.error ? JSON.stringify(data.error) : "";
  return [detail, error && `(${error})`].filter(Boolean).join(" ") || "The request failed.";
}

// The browser gave up (a non-200 answer): EventSource hides the status, so ask once with fetch to explain.
async function connectionFailed(source, url) {
  if (state.source !== source) return;
  stopWatching();
  setRunState("failed", "DISCONNECTED");
  const controller = new AbortController();
  let message = "The live event stream could not be opened.";
  try {
    const response = await fetch(url, { headers: authHeaders(), signal: controller.signal });
    if (response.status === 401) showAuth("401 Unauthorized");
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      message = `${message} ${describe(body, `(${response.status})`)}`;
    }
  } catch {
    // unreachable gateway: the generic message says enough
  } finally {
    controller.abort(); // a stream that now answers 200 would otherwise stay open
  }
  $("run-error").textContent = message;
}

function showResult(payload) {
  const video = payload.video;
  const children = [];
  if (video && video.url) {
    // Muted, so that browsers allow it to start playing on its own.
    const player = { src: video.url, controls: true, autoplay: true, muted: true, loop: true, playsInline: true };
    const link = el("a", { href: video.url, target: "_blank", rel: "noopener noreferrer", text: "Open the video" });
    const size = video.file_size ? ` — ${Math.ceil(video.file_size / 1024)} kB` : "";
    children.push(el("video", player), el("p", { class: "hint" }, link, size));
  } else {
    children.push(el("p", { class: "form-error", text: "The result has no video." }));
  }
  const json = el("pre", { class: "mono", text: JSON.stringify(payload, null, 2) });
  children.push(el("details", {}, el("summary", { text: "Result JSON" }), json));
  $("result").replaceChildren(...children);
}

async function cancel() {
  if (!state.run) return;
  const { status, body } = await api(sameOrigin(state.run.cancel_url), { method: "PUT" });
  addTimeline(status < 300 ? "cancellation requested" : `cancel refused: ${describe(body, String(status))}`);
}

// --- start ------------------------------------------------------------------------------------------

async function showMode() {
  try {
    const { ok, body } = await api("/healthz");
    if (!ok) return;
    const badge = $("mode");
    const emulated = body.upstream === "emulator";
    badge.textContent = emulated ? "emulator: no credits spent" : "live: submits spend fal credits";
    badge.classList.add(emulated ? "emulator" : "live");
    badge.hidden = false;
  } catch {
    // the badge is decoration
  }
}

function useKey(event) {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
  else sessionStorage.removeItem(KEY_STORAGE);
  $("auth").classList.remove("attention");
  $("auth-message").textContent = "";
  loadModels();
}

document.addEventListener("DOMContentLoaded", () => {
  // An image dropped next to the drop zone would otherwise replace the page with the image.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  $("model").addEventListener("change", renderForm);
  $("input-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("auth-form").addEventListener("submit", useKey);
  if (state.key) {
    $("api-key").value = state.key;
    $("auth").hidden = false;
  }
  showMode();
  loadModels();
});
