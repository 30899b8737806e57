// Form fields generated from a typed input declaration ({type, required, default}).
// Each field exposes read() (the JSON value to send, or undefined to leave it out),
// describe() (the value as a command line would name it) and showError()/clearError().

const BINARY = new Set(["image", "audio"]);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export async function toBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let out = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(out);
}

/** Tell the form a value changed that no native input event announced (chips, drops). */
function changed(node) {
  node.dispatchEvent(new Event("input", { bubbles: true }));
}

export function elementType(type) {
  const m = /^list\[(.+)\]$/.exec(type || "");
  return m ? m[1] : null;
}

/** One field for input `name` of declaration `decl`; `id` keeps element ids unique. */
export function makeField(name, decl) {
  const type = decl.type || "json";
  const inner = elementType(type);
  const id = `in-${name}`;
  const err = el("p", { id: `err-${name}`, class: "field-error", role: "alert", hidden: true });
  const req = decl.required === true ? "required" : decl.required === false ? "optional" : "";
  const typeText = [type, req].filter(Boolean).join(" · ");
  const label = el("label", { for: id }, name, el("span", { class: "type", text: typeText }));
  let widget;
  if (BINARY.has(type)) widget = mediaWidget(id, type, name);
  else if (type === "bool") widget = boolWidget(id, decl.default);
  else if (type === "int" || type === "float") widget = numberWidget(id, type, decl.default);
  else if (type === "text") widget = textWidget(id, name, decl.default);
  else if (inner && ["text", "int", "float"].includes(inner)) {
    widget = chipsWidget(id, name, inner, decl.default);
  } else widget = jsonWidget(id, decl.default);
  const wrap = el("div", { class: "field", id: `field-${name}`, "data-type": type },
    label, widget.node,
    decl.description ? el("p", { class: "hint", text: decl.description }) : null, err);
  widget.focusable.setAttribute("aria-describedby", err.id);
  return {
    name, type, node: wrap, read: widget.read, describe: widget.describe,
    acceptFile: widget.acceptFile, focus: () => widget.focusable.focus(),
    showError(message) {
      err.textContent = message;
      err.hidden = false;
      widget.focusable.setAttribute("aria-invalid", "true");
    },
    clearError() {
      err.textContent = "";
      err.hidden = true;
      widget.focusable.removeAttribute("aria-invalid");
    },
  };
}

function textWidget(id, name, dflt) {
  const long = ["prompt", "text", "negative_prompt"].includes(name);
  const input = long ? el("textarea", { id, rows: 2 }) : el("input", { id, type: "text" });
  if (dflt !== null && dflt !== undefined) input.value = String(dflt);
  const read = () => (input.value === "" && (dflt === null || dflt === undefined)
    ? undefined : input.value);
  return { node: input, focusable: input, read, describe: read };
}

function numberWidget(id, type, dflt) {
  const input = el("input", { id, type: "number", step: type === "int" ? "1" : "any",
                              inputmode: type === "int" ? "numeric" : "decimal" });
  if (dflt !== null && dflt !== undefined) input.value = String(dflt);
  const read = () => {
    if (input.value.trim() === "") return undefined;
    const n = Number(input.value);
    return Number.isNaN(n) ? input.value : n; // the gateway names the field if it is wrong
  };
  return { node: input, focusable: input, read, describe: read };
}

function boolWidget(id, dflt) {
  const input = el("input", { id, type: "checkbox" });
  input.checked = dflt === true;
  const read = () => input.checked;
  return { node: el("div", {}, input), focusable: input, read, describe: read };
}

function jsonWidget(id, dflt) {
  const input = el("textarea", { id, rows: 3, spellcheck: "false", placeholder: "JSON" });
  if (dflt !== null && dflt !== undefined) input.value = JSON.stringify(dflt);
  const read = () => {
    const text = input.value.trim();
    if (!text) return undefined;
    try { return JSON.parse(text); } catch { return text; }
  };
  return { node: input, focusable: input, read, describe: read };
}

function chipsWidget(id, name, inner, dflt) {
  const values = Array.isArray(dflt) ? dflt.map(String) : [];
  const box = el("div", { class: "chips" });
  const input = el("input", { id, type: "text", autocomplete: "off",
                              placeholder: "type, then Enter or comma" });
  const parse = (v) => (inner === "text" ? v : Number(v));
  box.append(input);
  const render = () => { // chips go before the input, which stays put (and keeps focus)
    for (const chip of box.querySelectorAll(".chip")) chip.remove();
    input.before(...values.map((v, i) => el("button", {
      type: "button", class: "chip", "aria-label": `Remove ${v}`,
      onclick: () => { values.splice(i, 1); render(); input.focus(); } }, v, " ×")));
    changed(box);
  };
  const commit = () => {
    for (const part of input.value.split(",")) if (part.trim()) values.push(part.trim());
    input.value = "";
    render();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === ",") {
      if (input.value.trim()) { e.preventDefault(); commit(); }
    } else if (e.key === "Backspace" && input.value === "" && values.length) {
      values.pop();
      render();
      input.focus();
    }
  });
  render();
  const read = () => {
    const all = [...values, ...input.value.split(",").map((s) => s.trim()).filter(Boolean)];
    return all.length ? all.map(parse) : undefined;
  };
  return { node: box, focusable: input, read, describe: read };
}

function mediaWidget(id, type, name) {
  let current = null; // {blob, name}
  const input = el("input", { id, type: "file", accept: `${type}/*` });
  const preview = type === "image" ? el("img", { alt: `${name} preview`, hidden: true })
    : el("audio", { controls: true, hidden: true });
  const note = el("span", { class: "hint", text: type === "image"
    ? "or drop or paste an image here" : "or drop an audio file here" });
  const zone = el("div", { class: "drop", role: "group", "aria-label": `${name}: choose, drop`
    + (type === "image" ? ", paste or capture an image" : " or record audio") });
  const set = (blob, fileName) => {
    current = blob ? { blob, name: fileName || (type === "image" ? "image.png" : "audio.wav") }
      : null;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !current;
    if (current) preview.src = URL.createObjectURL(blob);
    note.textContent = current ? `${current.name} · ${blob.size} bytes` : note.textContent;
    changed(zone);
  };
  input.addEventListener("change", () => set(input.files[0] || null, input.files[0]?.name));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith(type))
      || e.dataTransfer?.files?.[0];
    if (file) { input.value = ""; set(file, file.name); }
  });
  const extra = type === "image" ? cameraButton(zone, set) : recordButton(zone, set);
  zone.append(input, ...extra, preview, note);
  return {
    node: zone, focusable: input,
    read: async () => (current ? toBase64(current.blob) : undefined),
    describe: () => (current ? { file: current.name } : undefined),
    acceptFile: (file) => { input.value = ""; set(file, file.name || "pasted.png"); },
  };
}

function cameraButton(zone, set) {
  if (!navigator.mediaDevices?.getUserMedia) return [];
  let stream = null;
  const video = el("video", { autoplay: true, playsinline: true, muted: true, hidden: true });
  const button = el("button", { type: "button" }, "Camera");
  const stop = () => {
    stream?.getTracks().forEach((t) => t.stop());
    stream = null;
    video.hidden = true;
    button.textContent = "Camera";
  };
  button.addEventListener("click", async () => {
    if (!stream) {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true });
      } catch (e) {
        button.textContent = `Camera unavailable (${e.name})`;
        return;
      }
      video.srcObject = stream;
      video.hidden = false;
      button.textContent = "Capture";
      return;
    }
    const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
    canvas.getContext("2d").drawImage(video, 0, 0);
    stop();
    canvas.toBlob((blob) => set(blob, "camera.png"), "image/png");
  });
  zone.append(video);
  return [button];
}

function recordButton(zone, set) {
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) return [];
  let recorder = null;
  const button = el("button", { type: "button", "aria-pressed": "false" }, "Record");
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      button.textContent = `Microphone unavailable (${e.name})`;
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      button.textContent = "Record";
      button.setAttribute("aria-pressed", "false");
      const recorded = new Blob(chunks, { type: chunks[0]?.type || "audio/webm" });
      set(await toWav(recorded), "recording.wav");
    };
    recorder.start();
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
  });
  return [button];
}

/** A MediaRecorder blob (webm/opus in Chromium, ogg in Firefox) as 16-bit mono WAV, which
 * every audio backend of the gateway reads (soundfile), whatever the browser recorded. */
export async function toWav(blob) {
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  try {
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
    const n = audio.length;
    const mono = new Float32Array(n);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const data = audio.getChannelData(c);
      for (let i = 0; i < n; i++) mono[i] += data[i] / audio.numberOfChannels;
    }
    const view = new DataView(new ArrayBuffer(44 + n * 2));
    const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
    text(0, "RIFF"); view.setUint32(4, 36 + n * 2, true); text(8, "WAVE"); text(12, "fmt ");
    view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, audio.sampleRate, true); view.setUint32(28, audio.sampleRate * 2, true);
    view.setUint16(32, 2, true); view.setUint16(34, 16, true); text(36, "data");
    view.setUint32(40, n * 2, true);
    for (let i = 0; i < n; i++) {
      const s = Math.max(-1, Math.min(1, mono[i]));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Blob([view], { type: "audio/wav" });
  } finally {
    ctx.close();
  }
}
