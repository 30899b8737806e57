"""``fusion``: the gateway from a shell (stdlib argparse, no extra dependency).

    fusion pipelines | models | cache-stats | clear-cache | health
    fusion run caption_then_classify --image cat.png --labels cat,dog
    fusion run text_to_image --prompt "a red square" --seed 1 -o out.png
    fusion stream text_to_image --prompt "a red square"
    fusion call text embed --text "hello"
    fusion rerank "a kitten" "the stock market fell" "a kitten on a rug"

Pipeline inputs are ``--name value`` (or ``--name=value``, or ``-i name=value``), parsed by the
types the pipeline declares in ``GET /v1/pipelines``: ``list[...]`` from comma lists (or a JSON
array, or repeated flags), ``int``/``float``/``bool`` from strings, ``image``/``audio`` from file
paths. ``call`` has no declared types: ``image``/``audio`` are file paths, ``labels`` a comma
list, numbers look like numbers, anything else is text.

Exit status: 0 ok, 2 usage error or rejected request (4xx bad input), 1 any other error.

The package: :mod:`.parser` builds the argparse parser, :mod:`.inputs` turns the leftover
``--NAME VALUE`` tokens into typed inputs, :mod:`.commands` holds one handler per sub-command,
:mod:`.output` renders results and writes image/audio files; :func:`main` here ties them
together and maps errors to exit statuses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

import httpx

from fusion_client.cli.commands import COMMANDS, INPUT_COMMANDS
from fusion_client.cli.inputs import (
    UsageError,
    build_inputs,
    guess_type,
    parse_value,
    split_input_args,
)
from fusion_client.cli.output import ProgressBar
from fusion_client.cli.parser import build_parser
from fusion_client.client import FusionClient
from fusion_client.errors import BadRequest, FusionError

__all__ = [
    "EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "ProgressBar", "UsageError", "build_inputs",
    "build_parser", "guess_type", "main", "parse_value", "report_error", "split_input_args",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def report_error(exc: FusionError, err: IO[str]) -> None:
    err.write(f"error: {exc.message}\n")
    if exc.field:
        err.write(f"  field: {exc.field}\n")
    if exc.status is not None or exc.code:
        status = "" if exc.status is None else str(exc.status)
        code = f" ({exc.code})" if exc.code and status else (exc.code or "")
        err.write(f"  status: {status}{code}\n")
    if exc.request_id:
        err.write(f"  request id: {exc.request_id}\n")


def main(argv: Sequence[str] | None = None, *,
         transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Entry point of ``fusion``; returns the exit status. ``transport`` (tests) replaces the
    network for the client the command builds."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int | None) else EXIT_USAGE
    if args.command not in INPUT_COMMANDS and extra:
        err.write(f"fusion: error: unrecognized arguments: {' '.join(extra)}\n")
        return EXIT_USAGE
    try:
        with FusionClient(args.url, args.api_key, timeout=args.timeout, retries=args.retries,
                          transport=transport, decode_images=False) as client:
            if args.command in INPUT_COMMANDS:
                INPUT_COMMANDS[args.command](client, args, out, err, extra)
            else:
                COMMANDS[args.command](client, args, out, err)
        return EXIT_OK
    except UsageError as exc:
        err.write(f"fusion {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except BadRequest as exc:
        report_error(exc, err)
        return EXIT_USAGE
    except FusionError as exc:
        report_error(exc, err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # writing an output file failed
        err.write(f"error: {exc}\n")
        return EXIT_ERROR
