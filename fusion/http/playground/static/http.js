// The gateway's HTTP API as the page sees it: URLs, error bodies, server-sent events.

/** A URL relative to the page's folder: the gateway may be served under a path prefix. */
export const api = (path) => new URL(path, document.baseURI).href;

/** An HTTP error as {status, code, message, field, retryAfter, requestId}; the OpenAI
 * routes name the field `param`. */
export async function httpError(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON: keep the status */ }
  const e = body.error || {};
  const retry = response.headers.get("Retry-After");
  return { status: response.status, code: e.code || "", field: e.field || e.param || null,
           message: typeof e === "string" ? e : e.message || response.statusText,
           retryAfter: retry !== null ? Number(retry) : null, requestId: e.request_id };
}

/** Server-sent events from a fetch body: yields {event, data}. */
export async function* sse(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      let parsed;
      try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
      yield { event, data: parsed };
    }
  }
}
