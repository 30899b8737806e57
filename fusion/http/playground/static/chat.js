// The chat view: a conversation with a language model (`#chat/<model>`) over
// /v1/chat/completions with stream=true, or with an LLM pipeline (`#chat-pipeline/<name>`,
// ask_image, ask_audio) over its SSE stream, one run per turn. Its own module (and chat.css)
// so the rest of the page stays as it was; app.js only routes here.
//
// An image goes into the turn as an OpenAI `image_url` part (a data URL): the gateway reads
// it with its captioner and OCR models, as ask_image does. A recording goes through
// /v1/audio/transcriptions (Whisper), as ask_audio does: beside a question it is attached as
// its transcript; alone, the transcript is the question (dictation).

import { api, httpError, sse } from "./http.js";
import { commands as pipelineCommands, formatMs } from "./render.js";
import { chatCommands, FILE } from "./chat_commands.js";
import { addMessage, chatSection, copy, imageMime, renderAssistant, userMessage }
  from "./chat_render.js";
import { el, makeField } from "./widgets.js";

const $ = (id) => document.getElementById(id);
const chat = { target: null, env: null, history: [], running: null, image: null, audio: null };

const tasksOf = (model) => (model.tasks?.length ? model.tasks : Object.keys(model.inputs || {}));

/** Whether a model gets the chat view (it serves `chat`). */
export const chatsWith = (model) => tasksOf(model).includes("chat");

/** Whether a pipeline gets the chat view: one of its steps is a model's `chat`, it takes a
 * text input to ask with, every other input it needs is one a turn can attach (an image or a
 * recording; `ask_documents`' list of documents is not), and it answers in words (an image or
 * audio output belongs on the form, where outputs are drawn by type). */
export function isChatPipeline(spec) {
  const question = questionInput(spec);
  const needed = Object.entries(spec.inputs || {})
    .filter(([name, d]) => name !== question && d.required !== false && d.default == null);
  return Object.values(spec.steps || {}).some((s) => s.task === "chat")
    && !!question
    && needed.every(([, d]) => d.type === "image" || d.type === "audio")
    && !Object.values(spec.outputs || {}).some((t) => /image|audio/.test(String(t)));
}

function questionInput(spec) {
  const texts = Object.entries(spec.inputs || {}).filter(([, d]) => d.type === "text")
    .map(([name]) => name);
  return ["question", "prompt", "text"].find((n) => texts.includes(n)) || texts[0] || null;
}

const inputOf = (spec, type) => Object.entries(spec.inputs || {})
  .find(([, d]) => d.type === type)?.[0] || null;

/* ---------- the view ---------- */

function build() {
  const section = chatSection();
  $("workspace").append(section);
  $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("chat-stop").addEventListener("click", () => chat.running?.abort());
  $("chat-new").addEventListener("click", reset);
  $("chat-format").addEventListener("change", () => {
    $("chat-schema").hidden = $("chat-format").value !== "json_schema";
  });
  section.addEventListener("input", updateCommands);
  section.addEventListener("change", updateCommands);
  $("chat-commands").addEventListener("click", copy);
  document.addEventListener("paste", onPaste);
}

/** Open the view for `target` ({kind: "model"|"pipeline", name, model|spec}); `env` is the
 * page's: {headers(extra), describeError(err), models}. */
export function openChat(target, env) {
  if (!$("chat")) build();
  const same = chat.target && chat.target.kind === target.kind && chat.target.name === target.name;
  chat.env = env;
  chat.target = target;
  $("chat").hidden = false;
  if (same) return;
  const isModel = target.kind === "model";
  $("chat-name").textContent = `${target.name} · chat`;
  $("chat-about").textContent = isModel
    ? "A conversation with the model: every turn sends the whole history to "
      + "/v1/chat/completions and streams the answer. Attach an image (read by the captioner "
      + "and OCR) or a recording (transcribed by Whisper) to a turn."
    : `Each turn is one run of the pipeline ${target.name} (earlier turns are not sent), `
      + "its answer streamed as it is generated. " + (target.spec.description || "");
  for (const node of document.querySelectorAll("#chat .chat-model-only")) node.hidden = !isModel;
  reset();
}

export function closeChat() {
  chat.running?.abort();
  if ($("chat")) $("chat").hidden = true;
  chat.target = null;
}

function reset() {
  chat.running?.abort();
  chat.history = [];
  $("chat-log").replaceChildren();
  $("chat-status").textContent = "";
  $("chat-error").hidden = true;
  makeAttachments();
  updateCommands();
}

/** The attachment fields (the form's own widgets: file, drop, paste, camera, microphone),
 * made afresh for every turn. A pipeline takes what its inputs declare. */
function makeAttachments() {
  const t = chat.target;
  const wantsImage = t.kind === "model" || inputOf(t.spec, "image");
  const wantsAudio = t.kind === "model" || inputOf(t.spec, "audio");
  chat.image = wantsImage ? makeField("chat-image", { type: "image",
    description: "attach an image to the next message" }) : null;
  chat.audio = wantsAudio ? makeField("chat-audio", { type: "audio",
    description: "attach a recording to the next message" }) : null;
  for (const [field, label] of [[chat.image, "Image"], [chat.audio, "Recording"]]) {
    if (field) field.node.querySelector("label").firstChild.textContent = label;
  }
  $("chat-attach").replaceChildren(...[chat.image, chat.audio].filter(Boolean).map((f) => f.node));
}

function onPaste(e) {
  if (!chat.target || $("chat").hidden || !chat.image?.acceptFile) return;
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (!file) return;
  e.preventDefault();
  chat.image.acceptFile(file);
}

/* ---------- a turn ---------- */

async function send() {
  const t = chat.target;
  if (!t || chat.running) return;
  const text = $("chat-input").value.trim();
  const imageB64 = chat.image ? await chat.image.read() : undefined;
  const imageName = chat.image?.describe()?.file;
  const audioB64 = chat.audio ? await chat.audio.read() : undefined;
  const audioName = chat.audio?.describe()?.file;
  if (!text && !imageB64 && !audioB64) { $("chat-input").focus(); return; }
  $("chat-input").value = "";
  const image = imageB64 ? { b64: imageB64, name: imageName || "image.png" } : null;
  await turn(async (controller, started) => {
    if (t.kind !== "model") {
      userMessage(text, image, audioB64 ? `recording ${audioName || ""}` : null);
      chat.history.push({ role: "user", content: text,
                          files: { image: image?.name, audio: audioB64 ? audioName : undefined } });
      makeAttachments();
      const node = addMessage("assistant", t.name);
      await streamPipeline(t, text, imageB64, audioB64, node, controller, started);
      return;
    }
    let transcript = null;
    if (audioB64) {
      $("chat-status").textContent = "Transcribing the recording…";
      transcript = await transcribe(audioB64, audioName, controller);
    }
    const question = text || transcript || "";
    const note = transcript !== null && text
      ? `recording ${audioName || ""} · transcript: ${transcript}`
      : transcript !== null ? `(dictated: ${audioName || "recording"})` : null;
    userMessage(question, image, note);
    const parts = [];
    if (image) {
      parts.push({ type: "image_url",
                   image_url: { url: `data:${imageMime(image.b64)};base64,${image.b64}` } });
    }
    if (transcript !== null && text) {
      parts.push({ type: "text", text: `[A recording. Transcript: ${transcript}]` });
    }
    const content = parts.length
      ? [...parts, ...(question ? [{ type: "text", text: question }] : [])] : question;
    chat.history.push({ role: "user", content, files: image ? { image: image.name } : null });
    makeAttachments();
    await streamModel(addMessage("assistant", t.name), controller, started);
  });
}

/** A tool's result (typed under its call) goes back as a `tool` message, and the model
 * answers it. Refused (false) while another answer is streaming. */
function replyToTool(call, result) {
  if (chat.running) return false;
  const node = addMessage("tool", `tool · ${call.function?.name || ""}`);
  node.querySelector(".msg-body").append(Object.assign(document.createElement("pre"),
    { className: "json", textContent: result }));
  chat.history.push({ role: "tool", tool_call_id: call.id, content: result });
  turn((controller, started) => streamModel(addMessage("assistant", chat.target.name),
                                            controller, started));
  return true;
}

/** One exchange: Send off and Stop on while `work` runs; a stop or an error is shown on the
 * answer being written (an answer that never began is taken out of the transcript). */
async function turn(work) {
  $("chat-error").hidden = true;
  const controller = new AbortController();
  chat.running = controller;
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const started = performance.now();
  try {
    await work(controller, started);
  } catch (err) {
    const node = [...document.querySelectorAll('#chat-log [data-role="assistant"]')].pop();
    const live = node?.dataset.state === "streaming" ? node : null;
    if (controller.signal.aborted) {
      if (live) {
        live.dataset.state = "stopped";
        live.querySelector(".msg-meta").textContent = "stopped";
      }
      $("chat-status").textContent = "Stopped.";
    } else {
      if (live && !live.dataset.chunks) live.remove();
      else if (live) live.dataset.state = "error";
      const e = err instanceof Error ? { message: `${err.name}: ${err.message}` } : err;
      const banner = $("chat-error");
      banner.textContent = chat.env.describeError(e) + (e.field ? ` (field: ${e.field})` : "")
        + (e.requestId ? ` · request ${e.requestId}` : "");
      banner.hidden = false;
      $("chat-status").textContent = "Failed.";
    }
  } finally {
    if (chat.running === controller) chat.running = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    updateCommands();
    if (!$("chat").hidden) $("chat-input").focus();
  }
}

async function transcribe(b64, name, controller) {
  const whisper = chat.env.models.find((m) => tasksOf(m).includes("transcribe"));
  if (!whisper) throw { message: "this gateway serves no speech-to-text model for a recording" };
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const form = new FormData();
  form.append("file", new Blob([bytes], { type: "audio/wav" }), name || "recording.wav");
  form.append("model", whisper.name);
  form.append("response_format", "json");
  const r = await fetch(api("v1/audio/transcriptions"), {
    method: "POST", body: form, signal: controller.signal, headers: chat.env.headers() });
  if (!r.ok) throw await httpError(r);
  return ((await r.json()).text || "").trim();
}

function settings() {
  const num = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  return { max_tokens: num("chat-max-tokens"), temperature: num("chat-temperature"),
           seed: num("chat-seed") };
}

/** What /v1/chat/completions gets, from the history (and `draft`, a message not yet sent).
 * A JSON field that does not parse goes as its text: the gateway names it in a 400. With
 * `forCopy`, each image is a placeholder naming its file (a copy never carries the bytes). */
function requestBody(draft = null, forCopy = false) {
  const body = { model: chat.target.name, messages: [] };
  const system = $("chat-system").value.trim();
  if (system) body.messages.push({ role: "system", content: system });
  for (const m of [...chat.history, ...(draft ? [draft] : [])]) {
    const { files, ...message } = m;
    if (forCopy && Array.isArray(message.content)) {
      const name = String(files?.image || "image.png").replace(/[^\w.-]/g, "_");
      message.content = message.content.map((part) => (part.type === "image_url"
        ? { ...part, image_url: { url: FILE + name } } : part));
    }
    body.messages.push(message);
  }
  for (const [k, v] of Object.entries(settings())) if (v !== undefined) body[k] = v;
  const parse = (text) => { try { return JSON.parse(text); } catch { return text; } };
  const format = $("chat-format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    body.response_format = { type: "json_schema", json_schema: {
      name: "answer", schema: parse($("chat-schema").value.trim() || "{}"), strict: true } };
  }
  const tools = $("chat-tools").value.trim();
  if (tools) body.tools = parse(tools);
  const choice = $("chat-tool-choice").value.trim();
  if (choice) {
    body.tool_choice = ["auto", "none", "required"].includes(choice) ? choice
      : { type: "function", function: { name: choice } };
  }
  return body;
}

async function streamModel(node, controller, started) {
  node.dataset.state = "streaming";
  $("chat-status").textContent = "Generating…";
  const body = { ...requestBody(), stream: true, stream_options: { include_usage: true } };
  const r = await fetch(api("v1/chat/completions"), {
    method: "POST", body: JSON.stringify(body), signal: controller.signal,
    headers: chat.env.headers({ "Content-Type": "application/json",
                                Accept: "text/event-stream" }) });
  if (!r.ok) throw await httpError(r);
  let content = "";
  const calls = [];
  let finish = null;
  let usage = null;
  let first = null;
  const message = { role: "assistant", content: "" };
  chat.history.push(message); // kept (partial) if the answer is stopped
  for await (const { data } of sse(r)) {
    if (data === "[DONE]") break;
    if (data?.error) {
      const e = data.error;
      throw { code: e.code, message: e.message, field: e.param || e.field,
              requestId: e.request_id };
    }
    if (data?.usage) usage = data.usage;
    const choice = data?.choices?.[0];
    if (!choice) continue;
    const delta = choice.delta || {};
    if (typeof delta.content === "string" && delta.content) {
      first ??= performance.now();
      content += delta.content;
      node.dataset.chunks = String(Number(node.dataset.chunks || 0) + 1); // as they came
    }
    for (const tc of delta.tool_calls || []) { // OpenAI's deltas: by index, arguments in pieces
      first ??= performance.now();
      const at = tc.index ?? calls.length;
      calls[at] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
      if (tc.id) calls[at].id = tc.id;
      if (tc.function?.name) calls[at].function.name += tc.function.name;
      if (tc.function?.arguments) calls[at].function.arguments += tc.function.arguments;
    }
    if (choice.finish_reason) finish = choice.finish_reason;
    message.content = content;
    if (calls.length) message.tool_calls = calls;
    renderAssistant(node, content, calls, false);
  }
  renderAssistant(node, content, calls, true, replyToTool);
  node.dataset.state = "done";
  if (finish) node.dataset.finish = finish;
  const ms = performance.now() - started;
  const tokens = usage?.completion_tokens;
  const rate = tokens && first ? ` · ${(tokens / ((performance.now() - first) / 1000)).toFixed(1)} tokens/s`
    : "";
  node.querySelector(".msg-meta").textContent = [finish && `finish: ${finish}`,
    tokens !== undefined && `${tokens} tokens`, formatMs(ms)].filter(Boolean).join(" · ") + rate;
  $("chat-status").textContent = `Done in ${formatMs(ms)}.`;
}

async function streamPipeline(t, text, imageB64, audioB64, node, controller, started) {
  node.dataset.state = "streaming";
  $("chat-status").textContent = "Running…";
  const r = await fetch(api(`v1/pipelines/${encodeURIComponent(t.name)}?stream=true`), {
    method: "POST", body: JSON.stringify({ inputs: pipelineInputs(t, text, imageB64, audioB64) }),
    signal: controller.signal,
    headers: chat.env.headers({ "Content-Type": "application/json", Accept: "text/event-stream" }) });
  if (!r.ok) throw await httpError(r);
  let content = "";
  const message = { role: "assistant", content: "" };
  chat.history.push(message);
  for await (const { event, data } of sse(r)) {
    if (event === "token" && typeof data?.text === "string") {
      content += data.text;
      node.dataset.chunks = String(Number(node.dataset.chunks || 0) + 1);
      message.content = content;
      renderAssistant(node, content, [], false);
    } else if (event === "result") {
      const outputs = data.outputs || {};
      const answer = typeof outputs.answer === "string" ? outputs.answer : content;
      message.content = answer;
      renderAssistant(node, answer, [], true);
      const extra = Object.entries(outputs).filter(([k, v]) => k !== "answer"
        && (typeof v === "string" || typeof v === "number"));
      if (extra.length) {
        node.querySelector(".msg-body").append(el("dl", { class: "meta msg-outputs" },
          extra.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])));
      }
      node.dataset.state = "done";
      const ms = performance.now() - started;
      node.querySelector(".msg-meta").textContent = `${formatMs(ms)} · cache ${data.cache}`;
      $("chat-status").textContent = `Done in ${formatMs(ms)} · request ${data.request_id}`;
      return;
    } else if (event === "error") {
      const e = data.error || {};
      throw { code: e.code, message: e.message, field: e.field, requestId: e.request_id };
    }
  }
  throw { message: "the stream ended without a result" };
}

function pipelineInputs(t, text, imageB64, audioB64) {
  const spec = t.spec;
  const inputs = {};
  const q = questionInput(spec);
  if (text) inputs[q] = text;
  const image = inputOf(spec, "image");
  const audio = inputOf(spec, "audio");
  if (image && imageB64) inputs[image] = imageB64;
  if (audio && audioB64) inputs[audio] = audioB64;
  for (const [k, v] of Object.entries(settings())) {
    if (v !== undefined && spec.inputs?.[k]) inputs[k] = v;
  }
  return inputs;
}

/* ---------- copy as curl / SDK / CLI ---------- */

function updateCommands() {
  const t = chat.target;
  if (!t || !$("chat")) return;
  const base = api(".").replace(/\/$/, "");
  const withKey = !!chat.env.headers().Authorization;
  let c;
  if (t.kind === "model") {
    const draft = $("chat-input").value.trim();
    c = chatCommands(base, requestBody(draft ? { role: "user", content: draft } : null, true),
                     withKey);
  }
  else {
    const inputs = pipelineInputs(t, $("chat-input").value.trim(), undefined, undefined);
    const image = inputOf(t.spec, "image");
    const audio = inputOf(t.spec, "audio");
    if (image && chat.image?.describe()) inputs[image] = chat.image.describe();
    if (audio && chat.audio?.describe()) inputs[audio] = chat.audio.describe();
    c = pipelineCommands(base, { kind: "pipeline", name: t.name }, inputs, false, withKey);
  }
  $("chat-cmd-curl").textContent = c.curl;
  $("chat-cmd-sdk").textContent = c.sdk;
  $("chat-cmd-cli").textContent = c.cli;
}
