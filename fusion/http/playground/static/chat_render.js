// The chat view's markup and its messages: the section (settings, the transcript with
// role="log", the composer, the copied commands), and each message as it streams in. The
// logic of a turn is in chat.js.

import { el } from "./widgets.js";

const $ = (id) => document.getElementById(id);

function number(id, label, attrs) {
  return el("label", { class: "chat-setting", for: id }, label,
    el("input", { id, type: "number", ...attrs }));
}

/** The chat view's section, empty. */
export function chatSection() {
  return el("section", { id: "chat", hidden: true, "aria-labelledby": "chat-name" },
    el("h2", { id: "chat-name" }),
    el("p", { id: "chat-about", class: "hint" }),
    el("details", { id: "chat-settings" }, el("summary", { text: "Settings" }),
      el("div", { class: "chat-model-only" },
        el("label", { for: "chat-system", class: "chat-label", text: "System prompt" }),
        el("textarea", { id: "chat-system", rows: 2, placeholder: "You are a helpful assistant." })),
      el("div", { class: "chat-settings-row" },
        number("chat-max-tokens", "max tokens", { min: "1", step: "1", value: "128" }),
        number("chat-temperature", "temperature", { min: "0", max: "2", step: "0.1", value: "0" }),
        number("chat-seed", "seed", { step: "1", placeholder: "none" })),
      el("div", { class: "chat-model-only" },
        el("label", { for: "chat-format", class: "chat-label", text: "Response format" }),
        el("select", { id: "chat-format" },
          el("option", { value: "", text: "text" }),
          el("option", { value: "json_object", text: "JSON object" }),
          el("option", { value: "json_schema", text: "JSON schema" })),
        el("textarea", { id: "chat-schema", rows: 4, spellcheck: "false", hidden: true,
                         "aria-label": "JSON schema",
                         placeholder: '{"type": "object", "properties": {...}}' }),
        el("label", { for: "chat-tools", class: "chat-label", text: "Tools (OpenAI's JSON list)" }),
        el("textarea", { id: "chat-tools", rows: 3, spellcheck: "false",
                         placeholder: '[{"type": "function", "function": {"name": ..., "parameters": {...}}}]' }),
        el("label", { for: "chat-tool-choice", class: "chat-label", text: "Tool choice" }),
        el("input", { id: "chat-tool-choice", type: "text", placeholder: "auto, none, required or a function name" }))),
    el("div", { id: "chat-log", class: "chat-log", role: "log", "aria-live": "polite",
                "aria-label": "Conversation" }),
    el("p", { id: "chat-status", class: "status", role: "status" }),
    el("div", { id: "chat-error", class: "banner error", role: "alert", hidden: true }),
    el("form", { id: "chat-form", class: "chat-form", novalidate: true },
      el("div", { id: "chat-attach", class: "chat-attach" }),
      el("label", { for: "chat-input", class: "chat-label", text: "Message" }),
      el("textarea", { id: "chat-input", rows: 3,
                       placeholder: "Ask something (Enter sends, Shift+Enter a new line)" }),
      el("div", { class: "actions" },
        el("button", { type: "submit", id: "chat-send", class: "primary", text: "Send" }),
        el("button", { type: "button", id: "chat-stop", disabled: true, text: "Stop" }),
        el("button", { type: "button", id: "chat-new", text: "New chat" }))),
    el("details", { id: "chat-commands" },
      el("summary", { text: "Copy as curl / SDK / CLI" }),
      ...["curl", "sdk", "cli"].map((kind) => el("div", { class: "command", "data-kind": kind },
        el("h3", { text: { curl: "curl", sdk: "Python SDK", cli: "fusion CLI" }[kind] }),
        el("pre", { id: `chat-cmd-${kind}` }),
        el("button", { type: "button", class: "copy", "data-copy": `chat-cmd-${kind}`,
                       text: `Copy ${kind === "sdk" ? "SDK" : kind === "cli" ? "CLI" : kind}` })))));
}

export function imageMime(b64) {
  if (b64.startsWith("/9j/")) return "image/jpeg";
  if (b64.startsWith("R0lG")) return "image/gif";
  if (b64.startsWith("UklGR")) return "image/webp";
  return "image/png";
}

export function addMessage(role, who) {
  const body = el("div", { class: "msg-body" });
  const node = el("article", { class: "msg", "data-role": role },
    el("div", { class: "msg-who", text: who }), body, el("div", { class: "msg-meta" }));
  $("chat-log").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

export function userMessage(text, image, audioNote) {
  const node = addMessage("user", "You");
  const body = node.querySelector(".msg-body");
  if (text) body.append(el("p", { class: "msg-text", text }));
  if (image) {
    body.append(el("img", { class: "msg-image", alt: `attached ${image.name}`,
                            src: `data:${imageMime(image.b64)};base64,${image.b64}` }));
  }
  if (audioNote) body.append(el("p", { class: "msg-attachment", text: audioNote }));
  return node;
}

/** Pretty JSON when the whole answer is a JSON object or array (JSON mode, a schema),
 * else null. */
function asJson(text) {
  const t = (text || "").trim();
  if (!/^[[{]/.test(t)) return null;
  try { return JSON.parse(t); } catch { return null; }
}

function renderToolCalls(calls, onReply) {
  return el("div", { class: "tool-calls", "aria-label": "Tool calls" }, calls.map((c, i) => {
    const fn = c.function || {};
    const args = asJson(fn.arguments);
    const reply = onReply && c.id ? toolReply(c, i, onReply) : null;
    return el("div", { class: "tool-call", "data-name": fn.name || "" },
      el("div", { class: "tool-call-head" }, el("span", { class: "badge", text: "tool call" }),
        el("strong", { text: fn.name || "(unnamed)" }),
        c.id ? el("code", { class: "tool-call-id", text: c.id }) : null),
      el("pre", { class: "json", text: args !== null ? JSON.stringify(args, null, 2)
        : fn.arguments || "" }),
      args === null && fn.arguments ? el("p", { class: "hint", text: "arguments are not valid JSON" })
        : null, reply);
  }));
}

/** A form under a tool call: what the tool returned goes back as a `tool` message. */
function toolReply(call, i, onReply) {
  const id = `tool-result-${call.id.replace(/[^\w-]/g, "_")}-${i}`;
  const input = el("textarea", { id, rows: 1, spellcheck: "false",
                                 placeholder: '{"temperature": 21}' });
  const form = el("form", { class: "tool-reply", novalidate: true },
    el("label", { for: id, class: "hint", text: `Result of ${call.function?.name || "the call"}` }),
    input, el("button", { type: "submit", text: "Send result" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (onReply(call, input.value)) form.remove();
  });
  return form;
}

/** The assistant's message as it stands: text (as JSON when it parses), then tool calls
 * (with a form for each result once the answer is final, when `onReply` is given). */
export function renderAssistant(node, content, toolCalls, final, onReply = null) {
  const body = node.querySelector(".msg-body");
  const json = final ? asJson(content) : null;
  const parts = [];
  if (json !== null) {
    parts.push(el("div", { class: "msg-json" }, el("span", { class: "badge", text: "JSON" }),
      el("pre", { class: "json", text: JSON.stringify(json, null, 2) })));
  } else if (content) parts.push(el("p", { class: "msg-text", text: content }));
  if (toolCalls.length) parts.push(renderToolCalls(toolCalls, final ? onReply : null));
  body.replaceChildren(...parts);
}

/** A copy button's click: its command on the clipboard (or selected to copy by hand). */
export function copy(e) {
  const button = e.target.closest("button.copy");
  if (!button) return;
  const text = $(button.dataset.copy).textContent;
  const label = button.textContent;
  const done = (ok) => {
    button.textContent = ok ? "Copied" : "Select and copy";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard?.writeText) navigator.clipboard.writeText(text).then(() => done(true), () => done(false));
  else {
    getSelection().selectAllChildren($(button.dataset.copy));
    done(document.execCommand?.("copy"));
  }
}
