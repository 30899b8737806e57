// The step graph, the outputs by type, and the equivalent curl / SDK / CLI commands.

import { el, elementType } from "./widgets.js";

/* ---------- step graph ---------- */

/** Columns by depth (longest path from an input), one node per step, all pending. */
export function drawGraph(list, steps) {
  const depth = {};
  const depthOf = (name, seen = new Set()) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const needs = steps[name]?.needs || [];
    depth[name] = needs.length ? 1 + Math.max(...needs.map((n) => depthOf(n, seen))) : 0;
    return depth[name];
  };
  const names = Object.keys(steps).sort((a, b) => depthOf(a) - depthOf(b));
  const columns = Math.max(1, ...names.map((n) => depthOf(n) + 1));
  list.style.setProperty("--depth", String(Math.min(columns, 4)));
  const rows = {};
  list.replaceChildren(...names.map((name) => {
    const s = steps[name];
    const what = s.model ? `${s.model} · ${s.task}` : (s.task || "fuse");
    const node = el("li", { class: "node", "data-step": name, "data-state": "pending" },
      el("div", { class: "name", text: name }),
      el("div", { class: "what", text: what }),
      s.needs?.length ? el("div", { class: "needs", text: `after ${s.needs.join(", ")}` })
        : null,
      s.when ? el("div", { class: "needs", text: `when ${s.when}` }) : null,
      el("div", { class: "badges" }));
    const col = Math.min(depthOf(name), 3) + 1;
    rows[col] = (rows[col] || 0) + 1;
    node.style.setProperty("--col", String(col));
    node.style.setProperty("--row", String(rows[col]));
    return node;
  }));
  setStates(list, steps, null);
}

/** Re-label every node: `done` maps a finished step to its report (null: not run yet).
 * A step is running once its `start` event came (`started` maps it to that event, with `at`,
 * when it came, for the time it has been running) and until its `step` event. A gateway
 * older than `start` sends none (`started` empty): then a step whose needs are all done,
 * and that has not finished, is taken to be running. */
export function setStates(list, steps, done, failed = null, started = {}) {
  const fromEvents = Object.keys(started || {}).length > 0;
  for (const node of list.querySelectorAll(".node")) {
    const name = node.dataset.step;
    const report = done?.[name];
    let state = "pending";
    if (done === null) state = "idle";
    else if (report) state = report.skipped ? "skipped" : "done";
    else if (failed === name) state = "error";
    else if (failed === null && (fromEvents ? started[name]
      : (steps[name]?.needs || []).every((n) => done[n]))) {
      state = "running";
    }
    node.dataset.state = state;
    const badges = node.querySelector(".badges");
    const progress = badges.querySelector(".progress");
    const items = state === "idle" ? []
      : [el("span", { class: `badge state-${state}`, text: state })];
    if (state === "running" && typeof started?.[name]?.at === "number") { // time so far
      items.push(el("span", { class: "badge ms elapsed",
                              text: formatMs(performance.now() - started[name].at) }));
    }
    if (report && !report.skipped && typeof report.ms === "number") {
      items.push(el("span", { class: "badge ms", text: `${formatMs(report.ms)}` }));
    }
    if (report?.cached) items.push(el("span", { class: "badge cached", text: "cached" }));
    if (report?.coalesced) items.push(el("span", { class: "badge coalesced", text: "coalesced" }));
    if (report?.skipped) items.push(el("span", { class: "badge skipped", text: "skipped" }));
    badges.replaceChildren(...items, ...(progress ? [progress] : []));
  }
}

export function setProgress(list, step, value, total) {
  const node = list.querySelector(`.node[data-step="${CSS.escape(step)}"]`);
  if (!node) return;
  let wrap = node.querySelector(".progress");
  if (!wrap) {
    wrap = el("div", { class: "progress" },
      el("progress", { max: String(total), "aria-label": `${step} progress` }), el("span"));
    node.querySelector(".badges").append(wrap);
  }
  const bar = wrap.querySelector("progress");
  bar.max = total;
  bar.value = value;
  bar.textContent = `${value}/${total}`;
  wrap.querySelector("span").textContent = `${value}/${total}`;
}

export function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

/* ---------- outputs ---------- */

function mime(b64, fallback) {
  if (b64.startsWith("iVBOR")) return "image/png";
  if (b64.startsWith("/9j/")) return "image/jpeg";
  if (b64.startsWith("UklGR")) return b64.slice(11, 14) === "BXQ" ? "image/webp" : "audio/wav";
  if (b64.startsWith("T2dn")) return "audio/ogg";
  if (b64.startsWith("SUQz") || b64.startsWith("//")) return "audio/mpeg";
  return fallback;
}

function isLabels(value) {
  return Array.isArray(value) && value.length > 0 && value.every(
    (x) => x && typeof x === "object" && "label" in x && "score" in x);
}

function renderLabels(value) {
  const max = Math.max(...value.map((x) => x.score), 1e-9);
  return el("div", { class: "bars", role: "list" }, value.flatMap((x) => {
    const fill = el("span");
    fill.style.width = `${Math.max(0, (x.score / max) * 100).toFixed(1)}%`;
    return [
      el("span", { class: "bar-label", role: "listitem", text: x.label }),
      el("span", { class: "bar", role: "meter", "aria-label": x.label,
                   "aria-valuemin": "0", "aria-valuemax": "1",
                   "aria-valuenow": String(x.score) }, fill),
      el("span", { class: "bar-score", text: x.score.toFixed(3) }),
    ];
  }));
}

function renderEmbedding(value) {
  const norm = Math.sqrt(value.reduce((s, v) => s + v * v, 0));
  const head = value.slice(0, 6).map((v) => v.toFixed(3)).join(", ");
  const max = Math.max(...value.map(Math.abs), 1e-9);
  const step = Math.max(1, Math.ceil(value.length / 96));
  const spark = el("div", { class: "spark", "aria-hidden": "true" });
  for (let i = 0; i < value.length; i += step) {
    const bar = el("span");
    bar.style.height = `${Math.max(2, (Math.abs(value[i]) / max) * 100)}%`;
    bar.style.opacity = value[i] < 0 ? "0.45" : "1";
    spark.append(bar);
  }
  return el("div", { class: "embedding" },
    el("div", { text: `${value.length} dimensions · norm ${norm.toFixed(3)}` }),
    el("code", { text: `[${head}${value.length > 6 ? ", …" : ""}]` }), spark);
}

/** One output by its declared type; a list type renders each item; unknown shapes as JSON. */
export function renderValue(type, value) {
  if (value === null || value === undefined) return el("p", { class: "hint", text: "—" });
  const inner = elementType(type);
  if (inner && Array.isArray(value) && inner !== "float") {
    return el("div", {}, value.map((v) => renderValue(inner, v)));
  }
  if ((type === "image" || type === "audio") && typeof value === "string") {
    const src = `data:${mime(value, `${type === "image" ? "image/png" : "audio/wav"}`)};base64,${value}`;
    return type === "image" ? el("img", { src, alt: "generated image" })
      : el("audio", { controls: true, src });
  }
  if (type === "labels" || isLabels(value)) {
    if (isLabels(value)) return renderLabels(value);
  }
  if (type === "embedding" && Array.isArray(value) && value.every((v) => typeof v === "number")) {
    return renderEmbedding(value);
  }
  if (typeof value === "string") return el("p", { class: "text-output", text: value });
  if (typeof value === "number" || typeof value === "boolean") {
    return el("p", { text: String(value) });
  }
  return el("pre", { class: "json", text: JSON.stringify(value, null, 2) });
}

export function renderOutputs(box, outputs, types) {
  box.replaceChildren(el("h3", { text: "Outputs" }), ...Object.entries(outputs).map(
    ([name, value]) => el("div", { class: "output", "data-output": name,
                                    "data-type": types?.[name] || "" },
      el("h4", {}, name, el("span", { class: "type", text: types?.[name] || "" })),
      renderValue(types?.[name] || "json", value))));
}

/* ---------- equivalent commands ---------- */

const shq = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;

function pyValue(v) {
  if (v === true) return "True";
  if (v === false) return "False";
  if (v === null || v === undefined) return "None";
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  if (typeof v === "object" && v.file) return JSON.stringify(v.file);
  if (typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pyValue(x)}`).join(", ")}}`;
  }
  return JSON.stringify(v);
}

/** curl, SDK and CLI for `target` ({kind: pipeline|model, name, task}) and the described
 * inputs ({name: value | {file}}). The key is never copied: $FUSION_API_KEY names it. */
export function commands(base, target, inputs, noCache, withKey) {
  const path = target.kind === "pipeline" ? `/v1/pipelines/${target.name}`
    : `/v1/models/${target.name}/${target.task}`;
  const entries = Object.entries(inputs).filter(([, v]) => v !== undefined);
  const hasFile = entries.some(([, v]) => v && typeof v === "object" && v.file);
  const curl = [`curl -sS -X POST ${shq(base + path)}`];
  if (withKey) curl.push(`-H "Authorization: Bearer $FUSION_API_KEY"`);
  if (noCache) curl.push("-H 'Cache-Control: no-cache'");
  if (hasFile) {
    for (const [k, v] of entries) {
      let part;
      if (v && typeof v === "object" && v.file) part = `${k}=@${v.file}`;
      else if (Array.isArray(v)) part = `${k}=${v.some((x) => String(x).includes(",")) ? JSON.stringify(v) : v.join(",")}`;
      else part = `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`;
      curl.push(`-F ${shq(part)}`);
    }
  } else {
    curl.push("-H 'Content-Type: application/json'",
              `-d ${shq(JSON.stringify({ inputs: Object.fromEntries(entries) }))}`);
  }
  const args = entries.map(([k, v]) => `${k}=${pyValue(v)}`);
  if (noCache) args.push('cache_control="no-cache"');
  const call = target.kind === "pipeline" ? `fusion.run(${JSON.stringify(target.name)}`
    : `fusion.call(${JSON.stringify(target.name)}, ${JSON.stringify(target.task)}`;
  const sdk = [
    "from fusion_client import FusionClient",
    "",
    `with FusionClient(${JSON.stringify(base)}) as fusion:  # key: $FUSION_API_KEY`,
    `    result = ${call}${args.length ? ", " + args.join(", ") : ""})`,
    "    print(result.outputs)",
  ].join("\n");
  const cli = [`fusion --url ${shq(base)}`,
    target.kind === "pipeline" ? `run ${target.name}` : `call ${target.name} ${target.task}`];
  for (const [k, v] of entries) {
    if (v && typeof v === "object" && v.file) cli.push(`--${k} ${shq(v.file)}`);
    else if (Array.isArray(v)) cli.push(`--${k} ${shq(v.some((x) => String(x).includes(",")) ? JSON.stringify(v) : v.join(","))}`);
    else if (typeof v === "object") cli.push(`--${k} ${shq(JSON.stringify(v))}`);
    else cli.push(`--${k} ${shq(v)}`);
  }
  if (noCache) cli.push("--no-cache");
  return { curl: curl.join(" \\\n  "), sdk, cli: cli.join(" ") };
}
