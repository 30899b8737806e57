// Fusion playground: the catalog, the generated form, and runs over the public HTTP API.
// Pipelines run with ?stream=true (SSE over fetch, so the API key can go in a header);
// model tasks answer one JSON body.

import { chatsWith, closeChat, isChatPipeline, openChat } from "./chat.js";
import { api, httpError, sse } from "./http.js";
import { commands, drawGraph, formatMs, renderOutputs, setProgress, setStates } from "./render.js";
import { el, makeField } from "./widgets.js";

const KEY_STORE = "fusion.apiKey";
const $ = (id) => document.getElementById(id);
const state = { models: [], pipelines: [], target: null, fields: [], codes: {}, running: null };

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function getJson(path) {
  const r = await fetch(api(path), { headers: headers({ Accept: "application/json" }) });
  if (!r.ok) throw await httpError(r);
  return r.json();
}

/* ---------- catalog ---------- */

async function loadCatalog() {
  $("catalog-error").hidden = true;
  try {
    const [models, pipelines, codes] = await Promise.all([
      getJson("v1/models"), getJson("v1/pipelines"),
      fetch(api("playground/error-codes.json")).then((r) => (r.ok ? r.json() : {}))]);
    state.models = models.models || [];
    state.pipelines = pipelines.pipelines || [];
    state.codes = codes;
    clearFieldError("authorization");
  } catch (err) {
    state.models = [];
    state.pipelines = [];
    showCatalogError(err);
  }
  drawCatalog();
  route();
}

function showCatalogError(err) {
  const text = describeError(err);
  if (err.field === "authorization") showFieldError("authorization", text);
  $("catalog-error").textContent = `Catalog unavailable: ${text}`;
  $("catalog-error").hidden = false;
  if (err.status === 503) { // still starting, or busy: ask again when it says to
    clearTimeout(state.retry);
    const seconds = Math.min(Math.max(err.retryAfter || 2, 1), 30);
    state.retry = setTimeout(loadCatalog, seconds * 1000);
  }
}

function drawCatalog() {
  $("pipeline-list").replaceChildren(...state.pipelines.map((p) => el("li", {},
    el("button", { type: "button", "data-pipeline": p.name,
                   onclick: () => { location.hash = `#pipeline/${p.name}`; } },
      p.name, el("span", { class: "item-sub", text: Object.keys(p.inputs).join(", ") })),
    isChatPipeline(p) ? el("button", { type: "button", class: "chat-open",
      "data-chat-pipeline": p.name, "aria-label": `Chat with ${p.name}`,
      onclick: () => { location.hash = `#chat-pipeline/${p.name}`; } }, "chat") : null)));
  $("model-list").replaceChildren(...state.models.map((m) => el("li", { "data-model": m.name },
    el("div", {}, el("strong", { text: m.name }),
      el("span", { class: "item-sub",
                   text: [m.family, m.backend, m.device].filter(Boolean).join(" · ") })),
    el("div", { class: "tasks" }, tasksOf(m).map((t) => el("button", {
      type: "button", "data-task": `${m.name}/${t}`,
      onclick: () => {
        location.hash = t === "chat" && chatsWith(m) ? `#chat/${m.name}` : `#model/${m.name}/${t}`;
      } }, t))))));
}

/* ---------- target and form ---------- */

function tasksOf(model) {
  return model.tasks?.length ? model.tasks : Object.keys(model.inputs || {});
}

function route() {
  const [kind, name, task] = decodeURIComponent(location.hash.slice(1)).split("/");
  let target = null;
  if (kind === "pipeline") {
    const p = state.pipelines.find((x) => x.name === name);
    if (p) target = { kind, name, spec: p };
  } else if (kind === "model") {
    const m = state.models.find((x) => x.name === name);
    if (m && task === "chat" && chatsWith(m)) target = { kind: "chat", name, task, model: m };
    else if (m && tasksOf(m).includes(task)) target = { kind, name, task, model: m };
  } else if (kind === "chat") { // the chat view (chat.js): a model, or an LLM pipeline
    const m = state.models.find((x) => x.name === name);
    if (m && chatsWith(m)) target = { kind, name, task: "chat", model: m };
  } else if (kind === "chat-pipeline") {
    const p = state.pipelines.find((x) => x.name === name);
    if (p && isChatPipeline(p)) target = { kind, name, spec: p };
  }
  for (const b of document.querySelectorAll("#catalog button")) {
    const on = target && (b.dataset.pipeline === target.name && target.kind === "pipeline"
      || b.dataset.chatPipeline === target.name && target.kind === "chat-pipeline"
      || b.dataset.task === `${target.name}/${target.task}`);
    b.setAttribute("aria-current", on ? "true" : "false");
  }
  select(target);
  fitCatalog();
}

const NARROW = matchMedia("(max-width: 760px)");

/** On a phone the catalog folds away once something is chosen (the form is what matters). */
function fitCatalog() {
  if (NARROW.matches) $("catalog-details").open = !state.target;
  else $("catalog-details").open = true;
}

function select(target) {
  state.running?.abort(); // leaving a run stops it (the gateway cancels the work)
  state.target = target;
  $("intro").hidden = !!target;
  if (target?.kind === "chat" || target?.kind === "chat-pipeline") {
    $("target").hidden = true;
    state.fields = [];
    openChat(target.kind === "chat" ? { kind: "model", name: target.name, model: target.model }
      : { kind: "pipeline", name: target.name, spec: target.spec },
    { headers, describeError, models: state.models });
    return;
  }
  closeChat();
  $("target").hidden = !target;
  if (!target) return;
  const isPipeline = target.kind === "pipeline";
  $("target-name").textContent = isPipeline ? target.name : `${target.name} · ${target.task}`;
  $("target-description").textContent = isPipeline ? target.spec.description
    : `Task ${target.task} of model ${target.name}.`;
  const meta = isPipeline
    ? { outputs: Object.entries(target.spec.outputs).map(([k, t]) => `${k}: ${t}`).join(", ") }
    : { family: target.model.family, backend: target.model.backend,
        tasks: tasksOf(target.model).join(", "), source: target.model.source,
        fingerprint: target.model.fingerprint, device: target.model.device,
        dtype: target.model.dtype };
  $("target-meta").replaceChildren(...Object.entries(meta).filter(([, v]) => v)
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  const decls = isPipeline ? target.spec.inputs : Object.fromEntries(
    Object.entries(target.model.inputs?.[target.task] || {}).map(([k, t]) => [k, { type: t }]));
  state.fields = Object.entries(decls).map(([name, decl]) => makeField(name, decl));
  $("fields").replaceChildren(...state.fields.map((f) => f.node));
  target.steps = isPipeline ? target.spec.steps
    : { [target.task]: { model: target.name, task: target.task, needs: [] } };
  drawGraph($("graph"), target.steps);
  $("outputs").replaceChildren();
  $("tokens").hidden = true;
  $("run-error").hidden = true;
  $("status").textContent = "";
  $("rerun").disabled = true;
  $("events").replaceChildren();
  $("event-count").textContent = "0";
  updateCommands();
}

async function readInputs() {
  const inputs = {};
  for (const f of state.fields) {
    const v = await f.read();
    if (v !== undefined) inputs[f.name] = v;
  }
  return inputs;
}

function updateCommands() {
  const t = state.target;
  if (!t) return;
  const decls = t.kind === "pipeline" ? t.spec.inputs : {};
  const isDefault = (f, v) => decls[f.name]?.required === false
    && JSON.stringify(v) === JSON.stringify(decls[f.name].default);
  const described = Object.fromEntries(state.fields.map((f) => [f.name, f.describe()])
    .filter(([name, v]) => !isDefault(state.fields.find((f) => f.name === name), v)));
  const base = api(".").replace(/\/$/, "");
  const c = commands(base, t, described, $("no-cache").checked, !!$("api-key").value.trim());
  $("cmd-curl").textContent = c.curl;
  $("cmd-sdk").textContent = c.sdk;
  $("cmd-cli").textContent = c.cli;
}

/* ---------- errors ---------- */

function describeError(err) {
  const status = err.status || state.codes[err.code]?.status || "";
  const head = [status, err.code].filter(Boolean).join(" ");
  let text = `${head ? head + ": " : ""}${err.message || "request failed"}`;
  if (err.retryAfter !== null && err.retryAfter !== undefined && !Number.isNaN(err.retryAfter)) {
    text += ` — retry after ${err.retryAfter} s`;
  }
  return text;
}

function showFieldError(name, text) {
  if (name === "authorization") {
    $("err-authorization").textContent = text;
    $("err-authorization").hidden = false;
    $("api-key").setAttribute("aria-invalid", "true");
    return true;
  }
  const field = state.fields.find((f) => f.name === name);
  if (!field) return false;
  field.showError(text);
  return true;
}

function clearFieldError(name) {
  if (name === "authorization") {
    $("err-authorization").hidden = true;
    $("api-key").removeAttribute("aria-invalid");
  }
}

/** Show an error next to the field at fault (an input, a step or the key) and in the banner. */
function showError(err, failedStep = null) {
  const text = describeError(err);
  const field = err.field || "";
  let placed = false;
  if (field === "authorization") placed = showFieldError("authorization", text);
  else if (field.startsWith("inputs.")) {
    placed = showFieldError(field.slice(7).split(/[.[]/)[0], text);
  }
  // the step at fault: named by the field (steps.X) or, for an input's error, the message
  const step = failedStep || (field.startsWith("steps.") ? field.slice(6).split(/[.[]/)[0]
    : /^step '([^']+)'/.exec(err.message || "")?.[1] || null);
  if (step && state.target) {
    setStates($("graph"), state.target.steps, state.done || {}, step, state.started);
  }
  const banner = $("run-error");
  banner.textContent = text + (field ? ` (field: ${field})` : "")
    + (err.requestId ? ` · request ${err.requestId}` : "");
  banner.hidden = false;
  $("status").textContent = placed ? "Failed: see the field marked above." : "Failed.";
  if (placed && field !== "authorization") { // take the keyboard to the input at fault
    state.fields.find((f) => f.name === field.slice(7).split(/[.[]/)[0])?.focus();
  }
}

/* ---------- running ---------- */

function logEvent(started, event, data) {
  const text = JSON.stringify(data);
  const short = text.length > 240 ? text.slice(0, 240) + "…" : text;
  const t = `+${Math.round(performance.now() - started)} ms`;
  $("events").append(el("li", { "data-event": event, text: `${t} ${event} ${short}` }));
  $("event-count").textContent = String($("events").children.length);
}

async function run(event) {
  event?.preventDefault();
  const t = state.target;
  if (!t || state.running) return;
  for (const f of state.fields) f.clearError();
  clearFieldError("authorization");
  $("run-error").hidden = true;
  $("outputs").replaceChildren();
  $("tokens").replaceChildren();
  $("tokens").hidden = true;
  $("events").replaceChildren();
  $("event-count").textContent = "0";
  state.done = {};
  state.started = {};
  drawGraph($("graph"), t.steps);
  setStates($("graph"), t.steps, state.done);
  $("run").disabled = $("rerun").disabled = true;
  $("status").textContent = "Running…";
  const graphTop = $("graph").getBoundingClientRect().top;
  if (graphTop > innerHeight || graphTop < 0) $("graph").scrollIntoView({ block: "center" });
  const controller = new AbortController();
  state.running = controller;
  const started = performance.now();
  const tick = setInterval(() => { // a running step's time so far, once a second
    if (Object.keys(state.started).length) {
      setStates($("graph"), t.steps, state.done, null, state.started);
    }
  }, 1000);
  try {
    const inputs = await readInputs();
    const hdrs = headers({ "Content-Type": "application/json" });
    if ($("no-cache").checked) hdrs["Cache-Control"] = "no-cache";
    if (t.kind === "pipeline") await runPipeline(t, inputs, hdrs, controller, started);
    else await runModel(t, inputs, hdrs, controller, started);
  } catch (err) {
    if (controller.signal.aborted) return; // left for another target: nothing to show
    if (err instanceof Error) showError({ message: `${err.name}: ${err.message}` });
    else showError(err);
  } finally {
    clearInterval(tick);
    if (state.running === controller) state.running = null;
    $("run").disabled = false;
    $("rerun").disabled = false;
  }
}

async function runPipeline(t, inputs, hdrs, controller, started) {
  const response = await fetch(api(`v1/pipelines/${encodeURIComponent(t.name)}?stream=true`), {
    method: "POST", body: JSON.stringify({ inputs }), signal: controller.signal,
    headers: { ...hdrs, Accept: "text/event-stream" } });
  if (!response.ok) throw await httpError(response);
  for await (const { event, data } of sse(response)) {
    logEvent(started, event, data);
    if (event === "start") { // the step began (gateways before this event infer it)
      state.started[data.step] = { ...data, at: performance.now() };
      setStates($("graph"), t.steps, state.done, null, state.started);
    } else if (event === "step") {
      state.done[data.step] = data;
      setStates($("graph"), t.steps, state.done, null, state.started);
    } else if (event === "progress") {
      setProgress($("graph"), data.step, data.progress, data.total);
    } else if (event === "token" && typeof data?.text === "string") {
      $("tokens").hidden = false;
      $("tokens").append(data.text);
    } else if (event === "result") {
      for (const [name, report] of Object.entries(data.steps || {})) state.done[name] = report;
      setStates($("graph"), t.steps, state.done, null, state.started);
      renderOutputs($("outputs"), data.outputs || {}, data.types || t.spec.outputs);
      $("status").textContent = `Done in ${formatMs(performance.now() - started)} · cache ${data.cache}`
        + ` · request ${data.request_id}`;
      return;
    } else if (event === "error") {
      const e = data.error || {};
      throw { code: e.code, message: e.message, field: e.field, requestId: e.request_id,
              retryAfter: e.retry_after_ms !== undefined ? e.retry_after_ms / 1000 : null };
    }
  }
  throw { message: "the stream ended without a result" };
}

async function runModel(t, inputs, hdrs, controller, started) {
  const url = api(`v1/models/${encodeURIComponent(t.name)}/${encodeURIComponent(t.task)}`);
  const response = await fetch(url, { method: "POST", body: JSON.stringify({ inputs }),
                                      signal: controller.signal, headers: hdrs });
  if (!response.ok) throw await httpError(response);
  const data = await response.json();
  logEvent(started, "result", { ...data, outputs: Object.keys(data.outputs || {}) });
  state.done = { [t.task]: { ms: data.ms, cached: data.cached, coalesced: data.coalesced } };
  setStates($("graph"), t.steps, state.done);
  renderOutputs($("outputs"), data.outputs || {}, data.types || {});
  $("status").textContent = `Done in ${formatMs(performance.now() - started)} · cache `
    + `${data.cached ? "hit" : "miss"} · request ${data.request_id}`;
}

/* ---------- wiring ---------- */

function onPaste(e) {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (!file) return;
  const active = document.activeElement?.closest?.(".field");
  const target = state.fields.find((f) => f.node === active && f.acceptFile)
    || state.fields.find((f) => f.type === "image" && f.acceptFile);
  if (!target) return;
  e.preventDefault();
  target.acceptFile(file);
  updateCommands();
}

function copy(e) {
  const button = e.target.closest("button.copy");
  if (!button) return;
  const text = $(button.dataset.copy).textContent;
  const done = (ok) => {
    const label = button.textContent;
    button.textContent = ok ? "Copied" : "Select and copy";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard?.writeText) navigator.clipboard.writeText(text).then(() => done(true), () => done(false));
  else {
    getSelection().selectAllChildren($(button.dataset.copy));
    done(document.execCommand?.("copy"));
  }
}

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    const value = key.value.trim();
    if (value) localStorage.setItem(KEY_STORE, value);
    else localStorage.removeItem(KEY_STORE);
    loadCatalog();
  });
  $("run-form").addEventListener("submit", run);
  $("run-form").addEventListener("input", updateCommands);
  $("run-form").addEventListener("change", updateCommands);
  $("no-cache").addEventListener("change", updateCommands);
  $("rerun").addEventListener("click", () => run());
  $("commands").addEventListener("click", copy);
  document.addEventListener("paste", onPaste);
  window.addEventListener("hashchange", route);
  NARROW.addEventListener("change", fitCatalog);
  loadCatalog();
}

init();
