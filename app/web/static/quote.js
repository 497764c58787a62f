// falgate playground: the live quote. As the form changes, the body a submit would send is priced by
// POST /v1/quote/{model_id} (validated like a submit, never sent to fal) and shown under the form.
// Loaded after playground.js, whose globals (state, api, currentModel, formBody, FieldError) it uses.
"use strict";

const QUOTE_DELAY_MS = 250; // typing a prompt would otherwise ask for a quote per keystroke

const quoting = { timer: 0, controller: null };

function scheduleQuote() {
  clearTimeout(quoting.timer);
  quoting.timer = setTimeout(refreshQuote, QUOTE_DELAY_MS);
}

function showQuote(text, kind = "") {
  const node = $("quote");
  node.textContent = text;
  node.className = kind ? `quote ${kind}` : "quote";
}

async function refreshQuote() {
  // Only the newest form is priced: an older answer arriving late must never overwrite a newer one.
  if (quoting.controller) quoting.controller.abort();
  quoting.controller = null;
  const model = currentModel();
  if (!model) return showQuote("");
  let body;
  try {
    body = formBody();
  } catch (error) {
    if (!(error instanceof FieldError)) throw error;
    return showQuote(`Not priced until ${error.field} is valid JSON.`, "stale");
  }
  const controller = new AbortController();
  quoting.controller = controller;
  let answer;
  try {
    answer = await api(`/v1/quote/${model.id}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (error) {
    if (controller.signal.aborted) return; // superseded by a newer quote
    return showQuote(`No quote: the gateway could not be reached (${error.message}).`, "error");
  }
  if (quoting.controller !== controller) return;
  quoting.controller = null;
  showQuote(describeQuote(answer), answer.ok ? "" : "error");
}

function describeQuote({ ok, status, body }) {
  if (status === 422) {
    const detail = body && Array.isArray(body.detail) ? body.detail : [];
    const reasons = detail.map((d) => `${fieldPath(d.loc)} ${d.msg}`).join("; ");
    return `not priced: ${reasons || describe(body, "invalid input")}`;
  }
  if (!ok) return `No quote: ${describe(body, `the gateway answered ${status}`)}`;
  const { cost, units, unit, unit_price: price, remaining } = body;
  const plural = units === 1 ? unit : `${unit}s`;
  const text = `Estimated cost: $${cost} (${units} ${plural} × $${price} per ${unit})`;
  return remaining == null ? text : `${text}. Remaining budget today: $${remaining}`;
}

document.addEventListener("DOMContentLoaded", () => {
  // Events from the generated fields bubble up to the form; a new form (model picked) is announced.
  $("input-form").addEventListener("input", scheduleQuote);
  $("input-form").addEventListener("change", scheduleQuote);
  document.addEventListener("playground:form", scheduleQuote);
});
