"""``fusion chat``: a language model from the shell.

    fusion chat "what is a haiku?"            # one question; the answer streams as it comes
    echo "summarise: ..." | fusion chat       # the question from stdin
    fusion chat                               # on a terminal: a conversation, /exit to end

Tokens are printed as they arrive (``--no-stream``: the whole answer at once); ``--json``
prints the answer with its token counts. In a conversation every turn is sent with the ones
before it, so the model sees the whole exchange.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from fusion_client.cli.output import write_json
from fusion_client.client import FusionClient

PROMPT = "you> "


def _params(args) -> dict[str, Any]:
    return {"model": args.model, "system": args.system, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
            "stop": args.stop or None, "cache_control": args.cache_control}


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
