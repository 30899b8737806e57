// Copy a chat as curl, the Python SDK or the `fusion` CLI: the request the chat view would
// send next, with each image read from its file rather than carried in the copy.

const shq = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
export const FILE = "\u0000file:"; // a placeholder for an image, replaced per language
const mimeOfName = (name) => (/\.jpe?g$/i.test(name) ? "image/jpeg"
  : /\.webp$/i.test(name) ? "image/webp" : /\.gif$/i.test(name) ? "image/gif" : "image/png");

function py(v) {
  if (v === true) return "True";
  if (v === false) return "False";
  if (v === null || v === undefined) return "None";
  if (typeof v === "string" && v.startsWith(FILE)) return `image_b64(${JSON.stringify(v.slice(FILE.length))})`;
  if (Array.isArray(v)) return `[${v.map((x) => py(x)).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${py(x)}`).join(", ")}}`;
  }
  return JSON.stringify(v);
}

/** curl, SDK and CLI for `body` (a chat request whose images are `FILE` placeholders). The
 * key is never copied: $FUSION_API_KEY names it. */
export function chatCommands(base, body, withKey) {
  const ask = body.messages.length && body.messages[body.messages.length - 1].role === "user";
  // the JSON in single quotes; each image read from its file by the shell (names are safe)
  const json = JSON.stringify(body).replace(/'/g, "'\\''").replace(/"\\u0000file:([\w.-]*)"/g,
    (_, f) => `"data:${mimeOfName(f)};base64,'"$(base64 < ${f} | tr -d '\\n')"'"`);
  const curl = [`curl -sS ${shq(base + "/v1/chat/completions")}`];
  if (withKey) curl.push(`-H "Authorization: Bearer $FUSION_API_KEY"`);
  curl.push("-H 'Content-Type: application/json'", `-d '${json}'`);
  const { model, messages, ...params } = body;
  const args = [`model=${JSON.stringify(model)}`,
    ...Object.entries(params).map(([k, v]) => `${k}=${py(v)}`)];
  const hasImage = JSON.stringify(messages).includes("\\u0000file:");
  const special = "response_format" in params || "tools" in params;
  const sdk = [
    ...(hasImage ? ["import base64", ""] : []),
    "from fusion_client import FusionClient",
    "",
    ...(hasImage ? ["def image_b64(path):  # an image_url part: the file as a data URL",
      '    with open(path, "rb") as f:',
      '        return "data:image/png;base64," + base64.b64encode(f.read()).decode()',
      "", ""] : []),
    `messages = [\n${messages.map((m) => `    ${py(m)},`).join("\n")}\n]`,
    `with FusionClient(${JSON.stringify(base)}) as fusion:  # key: $FUSION_API_KEY`,
    ...(special ? [`    result = fusion.chat(messages, ${args.join(", ")})`, "    print(result.model_dump_json(indent=2))"]
      : [`    for piece in fusion.stream_chat(messages, ${args.join(", ")}):`,
         '        print(piece, end="", flush=True)']),
  ].join("\n");
  const last = [...body.messages].reverse().find((m) => m.role === "user");
  const lastText = typeof last?.content === "string" ? last.content
    : (last?.content || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
  const cli = [`fusion --url ${shq(base)} chat --model ${shq(model)}`];
  const system = body.messages.find((m) => m.role === "system");
  if (system) cli.push(`--system ${shq(system.content)}`);
  if (params.max_tokens !== undefined) cli.push(`--max-tokens ${params.max_tokens}`);
  if (params.temperature !== undefined) cli.push(`--temperature ${params.temperature}`);
  if (params.seed !== undefined) cli.push(`--seed ${params.seed}`);
  cli.push(shq(lastText || "…"));
  const turns = body.messages.filter((m) => m.role !== "system").length;
  const note = turns > 1 || hasImage || special
    ? "# the CLI sends one question: the earlier turns, images, tools and response format are "
      + "left out (curl and the SDK carry them)\n" : "";
  return { curl: curl.join(" \\\n  ") + (ask ? "" : "\n# (type a message: it becomes the last turn)"),
           sdk, cli: note + cli.join(" ") };
}

