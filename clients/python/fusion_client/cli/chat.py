"""``fusion chat``: a language model from the shell.

    fusion chat "what is a haiku?"            # one question; the answer streams as it comes
    echo "summarise: ..." | fusion chat       # the question from stdin
    fusion chat                               # on a terminal: a conversation, /exit to end

Tokens are printed as they arrive (``--no-stream``: the whole answer at once); ``--json``
prints the answer with its token counts. ``--json-schema FILE`` makes the answer JSON valid
against the schema in FILE (the gateway enforces it while generating). In a conversation
every turn is sent with the ones before it, so the model sees the whole exchange.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from fusion_client.chat import json_schema
from fusion_client.cli.inputs import UsageError
from fusion_client.cli.output import write_json
from fusion_client.client import FusionClient

PROMPT = "you> "


def _schema(path: str | None) -> dict[str, Any] | None:
    """``--json-schema FILE``: the response_format asking for JSON valid against it."""
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--json-schema: cannot read {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--json-schema: {path!r} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema: {path!r} must hold a JSON schema object")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(path).stem)[:64]
    return json_schema(schema, name or "response")


def _params(args) -> dict[str, Any]:
    return {"model": args.model, "system": args.system, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
            "stop": args.stop or None, "cache_control": args.cache_control,
            "response_format": _schema(getattr(args, "json_schema", None))}


def _answer(client: FusionClient, messages: list[dict], args, out: IO[str]) -> str:
    """Print one answer (streamed unless --no-stream) and return its text."""
    if args.json:
        result = client.chat(messages, **_params(args))
        write_json(out, result.model_dump(mode="json"))
        return result.text
    if args.no_stream:
        text = client.chat(messages, **_params(args)).text
        out.write(text)
    else:
        pieces = []
        for piece in client.stream_chat(messages, **_params(args)):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        text = "".join(pieces)
    out.write("\n")
    out.flush()
    return text


def cmd_chat(client: FusionClient, args, out: IO[str], err: IO[str],
             stdin: IO[str] | None = None) -> None:
    stdin = stdin or sys.stdin
    if args.prompt is not None or not stdin.isatty():
        prompt = args.prompt if args.prompt is not None else stdin.read()
        _answer(client, [{"role": "user", "content": prompt}], args, out)
        return
    messages: list[dict] = []
    err.write(f"chatting with {args.model!r} at {client.base_url}; /exit or Ctrl-D ends\n")
    while True:
        err.write(PROMPT)
        err.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            err.write("\n" if not line else "")
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        messages.append({"role": "assistant", "content": _answer(client, messages, args, out)})
