"""``fusion``: the gateway from a shell (stdlib argparse, no extra dependency).

    fusion pipelines | models | cache-stats | clear-cache | health
    fusion run caption_then_classify --image cat.png --labels cat,dog
    fusion run text_to_image --prompt "a red square" --seed 1 -o out.png
    fusion stream text_to_image --prompt "a red square"
    fusion call text embed --text "hello"

Pipeline inputs are ``--name value`` (or ``--name=value``, or ``-i name=value``), parsed by the
types the pipeline declares in ``GET /v1/pipelines``: ``list[...]`` from comma lists (or a JSON
array, or repeated flags), ``int``/``float``/``bool`` from strings, ``image``/``audio`` from file
paths. ``call`` has no declared types: ``image``/``audio`` are file paths, ``labels`` a comma
list, numbers look like numbers, anything else is text.

Exit status: 0 ok, 2 usage error or rejected request (4xx bad input), 1 any other error.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from fusion_client._version import __version__
from fusion_client.client import FusionClient
from fusion_client.encoding import (
    BINARY_TYPES,
    CALL_INPUT_TYPES,
    b64,
    element_type,
    sniff_extension,
)
from fusion_client.errors import BadRequest, FusionError, NotFound
from fusion_client.types import (
    CallResult,
    PipelineInfo,
    PipelineResult,
    ProgressEvent,
    ResultEvent,
    StepEvent,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# ``call`` has no declared input types: these names are always text, never numbers.
TEXT_NAMES = frozenset({"text", "prompt", "negative_prompt", "template", "language"})


class UsageError(Exception):
    """A command-line mistake found after argparse (bad input flag or value): exit 2."""


# ---- argument parsing --------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default,
                        help="gateway URL (default: $FUSION_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=default,
                        help="API key (default: $FUSION_API_KEY)")
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float,
                        default=argparse.SUPPRESS if suppress else 60.0,
                        help="seconds per request (default 60)")
    parser.add_argument("--retries", type=int, default=argparse.SUPPRESS if suppress else 3,
                        help="retries on 503 / connection errors (default 3)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="write image/audio outputs here (a file, or a folder); with "
                             "several binary outputs the output name is added to the file name")
    parser.add_argument("-i", "--input", metavar="NAME=VALUE", action="append", default=[],
                        help="an input given as NAME=VALUE (same as --NAME VALUE)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--no-cache", dest="cache_control", action="store_const",
                       const="no-cache", help="recompute every step, then store the results")
    cache.add_argument("--no-store", dest="cache_control", action="store_const",
                       const="no-store", help="bypass the cache entirely")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion", allow_abbrev=False,
        description="Command line of the fusion multimodal model gateway.",
        epilog="Inputs: --NAME VALUE, parsed by the pipeline's declared types.")
    parser.add_argument("--version", action="version", version=f"fusion-client {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        _common(p, suppress=True)
        return p

    add("pipelines", "list the pipelines and their input/output types")
    add("models", "list the served models")
    add("health", "check that the gateway answers")
    add("cache-stats", "show the cache counters")
    add("clear-cache", "clear the gateway's cache (admin key)")
    run = add("run", "run a pipeline and print its outputs")
    run.add_argument("pipeline")
    _run_options(run)
    stream = add("stream", "run a pipeline, showing steps and progress as they happen")
    stream.add_argument("pipeline")
    _run_options(stream)
    call = add("call", "call one task of one model")
    call.add_argument("model")
    call.add_argument("task")
    _run_options(call)
    return parser


def split_input_args(extra: Sequence[str], pairs: Sequence[str]) -> list[tuple[str, str | None]]:
    """``--name value`` / ``--name=value`` / bare ``--flag`` tokens and ``-i name=value`` pairs
    → ``[(name, raw value or None)]``, in order."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; inputs are given as --NAME VALUE")
        name, eq, value = token[2:].partition("=")
        if not name:
            raise UsageError(f"unexpected argument {token!r}")
        if eq:
            out.append((name, value))
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append((name, extra[i + 1]))
            i += 1
        else:
            out.append((name, None))
        i += 1
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise UsageError(f"-i expects NAME=VALUE, got {pair!r}")
        out.append((name, value))
    return out


def _scalar(raw: str, type_: str | None, flag: str) -> Any:
    if type_ == "int":
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{flag} must be an integer, got {raw!r}") from None
    if type_ == "float":
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{flag} must be a number, got {raw!r}") from None
    if type_ == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{flag} must be true or false, got {raw!r}")
    if type_ in BINARY_TYPES:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UsageError(f"{flag}: no such file {raw!r}")
        return path
    if type_ in ("json", "labels"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw  # text and anything unknown


def parse_value(raws: list[str | None], type_: str | None, flag: str) -> Any:
    """The command-line strings given for one input → the value sent, by declared type."""
    inner = element_type(type_)
    if inner is not None or type_ == "embedding":
        inner = inner or "float"
        items: list[Any] = []
        for raw in raws:
            if raw is None:
                raise UsageError(f"{flag} needs a value")
            text = raw.strip()
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except ValueError:
                    raise UsageError(f"{flag} is not a JSON list: {raw!r}") from None
                if not isinstance(parsed, list):
                    raise UsageError(f"{flag} must be a list")
                items.extend(_scalar(v, inner, flag) if isinstance(v, str) and
                             inner in BINARY_TYPES else v for v in parsed)
            else:
                items.extend(_scalar(p.strip(), inner, flag) for p in text.split(",")
                             if p.strip())
        return items
    raw = raws[-1]
    if raw is None:
        if type_ in ("bool", None):
            return True
        raise UsageError(f"{flag} needs a value")
    return _scalar(raw, type_, flag)


def guess_type(name: str, raw: str | None) -> str:
    """Type of a ``call`` input, which has no declaration: by name, then by look."""
    if name in CALL_INPUT_TYPES:
        return CALL_INPUT_TYPES[name]
    if name in TEXT_NAMES or raw is None:
        return "text" if raw is not None else "bool"
    for type_, conv in (("int", int), ("float", float)):
        try:
            conv(raw)
            return type_
        except ValueError:
            pass
    if raw.strip().lower() in ("true", "false"):
        return "bool"
    return "text"


def build_inputs(given: list[tuple[str, str | None]],
                 types: dict[str, str] | None, where: str) -> dict[str, Any]:
    """Group the given flags by input name and parse them; ``types=None`` means guess."""
    grouped: dict[str, list[str | None]] = {}
    for name, raw in given:
        dashed = name.replace("-", "_")
        if types is None or (name not in types and dashed in types):
            name = dashed
        if types is not None and name not in types:
            raise UsageError(f"unknown input --{name} for {where}; expected: "
                             + ", ".join(f"--{n}" for n in types))
        grouped.setdefault(name, []).append(raw)
    inputs: dict[str, Any] = {}
    for name, raws in grouped.items():
        type_ = types[name] if types is not None else guess_type(name, raws[-1])
        inputs[name] = parse_value(raws, type_, f"--{name}")
    return inputs


# ---- output ------------------------------------------------------------------------------

def _png_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _describe_bytes(data: bytes) -> str:
    ext = sniff_extension(data).lstrip(".").upper()
    size = _png_size(data)
    dims = f" {size[0]}x{size[1]}" if size else ""
    return f"{ext}{dims}, {len(data)} bytes"


def binary_outputs(outputs: dict[str, Any], types: dict[str, str]
                   ) -> list[tuple[str, int | None, bytes]]:
    found: list[tuple[str, int | None, bytes]] = []
    for name, value in outputs.items():
        type_ = types.get(name)
        if type_ in BINARY_TYPES and isinstance(value, bytes):
            found.append((name, None, value))
        elif element_type(type_) in BINARY_TYPES and isinstance(value, list):
            found.extend((name, i, v) for i, v in enumerate(value) if isinstance(v, bytes))
    return found


def write_binaries(found: list[tuple[str, int | None, bytes]], output: str | None
                   ) -> dict[tuple[str, int | None], str]:
    """Write binary outputs to ``output`` (file or folder); returns where each went."""
    if not output or not found:
        return {}
    target = Path(output).expanduser()
    written: dict[tuple[str, int | None], str] = {}
    for name, index, data in found:
        label = name if index is None else f"{name}_{index}"
        if target.is_dir() or output.endswith(("/", os.sep)):
            path = target / f"{label}{sniff_extension(data)}"
        elif len(found) == 1:
            path = target if target.suffix else target.with_suffix(sniff_extension(data))
        else:
            suffix = target.suffix or sniff_extension(data)
            path = target.with_name(f"{target.stem}_{label}{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[(name, index)] = str(path)
    return written


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def result_json(result: PipelineResult | CallResult,
                written: dict[tuple[str, int | None], str]) -> dict[str, Any]:
    """The result as JSON; binary outputs written to disk become ``{"path", "bytes"}``."""
    data = result.model_dump(mode="python", exclude={"outputs"})
    outputs: dict[str, Any] = {}
    for name, value in result.outputs.items():
        if isinstance(value, list):
            outputs[name] = [
                {"path": written[(name, i)], "bytes": len(v)} if (name, i) in written
                else _json_value(v) for i, v in enumerate(value)]
        elif (name, None) in written:
            outputs[name] = {"path": written[(name, None)], "bytes": len(value)}
        else:
            outputs[name] = _json_value(value)
    return {"outputs": outputs, **data}


def _format_labels(value: list, indent: str = "  ") -> list[str]:
    rows = [v for v in value if isinstance(v, dict) and "label" in v]
    width = max((len(str(r["label"])) for r in rows), default=0)
    return [f"{indent}{str(r['label']).ljust(width)}  {float(r.get('score', 0)):.4f}"
            for r in rows]


def format_output(name: str, value: Any, type_: str | None,
                  written: dict[tuple[str, int | None], str]) -> list[str]:
    if value is None:
        return [f"{name}: (none)"]
    if type_ in BINARY_TYPES and isinstance(value, bytes):
        where = written.get((name, None))
        if where:
            return [f"{name}: written to {where} ({_describe_bytes(value)})"]
        return [f"{name}: <{_describe_bytes(value)}; use -o PATH to save>"]
    if element_type(type_) in BINARY_TYPES and isinstance(value, list):
        lines = [f"{name}:"]
        for i, v in enumerate(value):
            where = written.get((name, i))
            lines.append(f"  [{i}] written to {where}" if where else
                         f"  [{i}] <{_describe_bytes(v)}; use -o PATH to save>")
        return lines
    if type_ == "labels" and isinstance(value, list):
        return [f"{name}:", *_format_labels(value)]
    if type_ == "embedding" and isinstance(value, list):
        head = ", ".join(f"{float(v):.4f}" for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return [f"{name}: [{head}{more}] ({len(value)} dims)"]
    if isinstance(value, str):
        return [f"{name}: {value}"]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [f"{name}:", *(f"  - {v}" for v in value)]
    return [f"{name}: {json.dumps(value, ensure_ascii=False)}"]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def summary_line(result: PipelineResult | CallResult) -> str:
    parts = []
    if isinstance(result, PipelineResult):
        steps = []
        for name, s in result.steps.items():
            flags = [f for f in ("cached", "coalesced", "skipped") if getattr(s, f)]
            steps.append(f"{name} {_ms(s.ms)}" + (f" ({', '.join(flags)})" if flags else ""))
        if steps:
            parts.append("steps: " + "; ".join(steps))
        if result.cache:
            parts.append(f"cache: {result.cache}")
    else:
        parts.append(f"{result.model}/{result.task} {_ms(result.ms)}"
                     + (" (cached)" if result.cached else ""))
    if result.request_id:
        parts.append(f"request id: {result.request_id}")
    return " · ".join(parts)


def print_result(result: PipelineResult | CallResult, args: argparse.Namespace,
                 out: IO[str], err: IO[str]) -> None:
    written = write_binaries(binary_outputs(result.outputs, result.types), args.output)
    if args.json:
        if args.command == "stream":
            payload = {"event": "result", **result_json(result, written)}
            out.write(json.dumps(payload, ensure_ascii=False) + "\n")
        else:
            out.write(json.dumps(result_json(result, written), indent=2,
                                 ensure_ascii=False) + "\n")
        return
    for name, value in result.outputs.items():
        for line in format_output(name, value, result.types.get(name), written):
            out.write(line + "\n")
    err.write(summary_line(result) + "\n")


class ProgressBar:
    """A plain-text progress bar on a stream (redrawn in place on a terminal)."""

    width = 30

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.active = False

    def update(self, event: ProgressEvent) -> None:
        frac = event.fraction
        label = event.step or "progress"
        if frac is None:
            text = f"{label} {event.progress:g}"
        else:
            filled = round(frac * self.width)
            total = f"{event.progress:g}/{event.total:g}"
            text = f"{label} [{'#' * filled}{'-' * (self.width - filled)}] {total} {frac:4.0%}"
        if self.tty:
            self.stream.write("\r" + text)
            self.active = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.active = False


# ---- commands ----------------------------------------------------------------------------

def _write_json(out: IO[str], data: Any) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def cmd_pipelines(client: FusionClient, args, out, err) -> None:
    items = client.pipelines()
    if args.json:
        _write_json(out, [p.model_dump(mode="json") for p in items])
        return
    for p in items:
        out.write(f"{p.name}" + (f"  {p.description}" if p.description else "") + "\n")
        ins = []
        for name, spec in p.inputs.items():
            default = "" if spec.required else f" = {json.dumps(spec.default)}"
            ins.append(f"{name}: {spec.type}{default}")
        out.write(f"  inputs:  {', '.join(ins) or '-'}\n")
        outs = ", ".join(f"{k}: {v}" for k, v in p.outputs.items())
        out.write(f"  outputs: {outs or '-'}\n")


def cmd_models(client: FusionClient, args, out, err) -> None:
    items = client.models()
    if args.json:
        _write_json(out, [m.model_dump(mode="json") for m in items])
        return
    header = ("NAME", "FAMILY", "BACKEND", "DEVICE", "DTYPE", "TASKS")
    rows = [(m.name, m.family or "-", m.backend or "-", m.device or "-", m.dtype or "-",
             ",".join(m.tasks) or "-") for m in items]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def cmd_health(client: FusionClient, args, out, err) -> None:
    body = client.health()
    if args.json:
        _write_json(out, body)
    else:
        out.write(f"{(body or {}).get('status', 'ok')} ({client.base_url})\n")


def cmd_cache_stats(client: FusionClient, args, out, err) -> None:
    stats = client.cache_stats()
    if args.json:
        _write_json(out, stats.model_dump(mode="json"))
        return
    data = stats.model_dump(mode="json", exclude={"per_task"})
    width = max(len(k) for k in data)
    for key, value in data.items():
        line = f"{key.ljust(width)}  {value}"
        if key == "hits" and stats.hit_rate is not None:
            line += f"  (hit rate {stats.hit_rate:.1%})"
        out.write(line + "\n")
    if stats.per_task:
        out.write("per task:\n")
        for name, counters in stats.per_task.items():
            text = " ".join(f"{k}={v}" for k, v in counters.items()) \
                if isinstance(counters, dict) else str(counters)
            out.write(f"  {name}: {text}\n")


def cmd_clear_cache(client: FusionClient, args, out, err) -> None:
    deleted = client.clear_cache()
    if args.json:
        _write_json(out, {"deleted": deleted})
    else:
        out.write(f"deleted {deleted} entries\n")


def _pipeline_inputs(client: FusionClient, args, extra: list[str]) -> dict[str, Any]:
    given = split_input_args(extra, args.input)
    info: PipelineInfo | None = client.pipeline(args.pipeline)
    if info is None:
        names = ", ".join(sorted(p.name for p in client.pipelines()))
        raise NotFound(f"unknown pipeline {args.pipeline!r}; available: {names or 'none'}",
                       field="pipeline")
    return build_inputs(given, info.input_types, f"pipeline {args.pipeline}")


def cmd_run(client: FusionClient, args, out, err, extra: list[str]) -> None:
    inputs = _pipeline_inputs(client, args, extra)
    result = client.run(args.pipeline, inputs, cache_control=args.cache_control)
    print_result(result, args, out, err)


def cmd_stream(client: FusionClient, args, out, err, extra: list[str]) -> None:
    inputs = _pipeline_inputs(client, args, extra)
    bar = ProgressBar(err)
    try:
        for event in client.stream(args.pipeline, inputs, cache_control=args.cache_control):
            if isinstance(event, ResultEvent):
                bar.end()
                print_result(event.result, args, out, err)
            elif args.json:
                out.write(json.dumps({"event": event.type, **event.model_dump(
                    mode="json", exclude={"type"})}) + "\n")
                out.flush()
            elif isinstance(event, ProgressEvent):
                bar.update(event)
            elif isinstance(event, StepEvent):
                bar.end()
                flags = [f for f in ("cached", "coalesced", "skipped") if getattr(event, f)]
                err.write(f"step {event.step} done in {_ms(event.ms)}"
                          + (f" ({', '.join(flags)})" if flags else "") + "\n")
                err.flush()
    finally:
        bar.end()


def cmd_call(client: FusionClient, args, out, err, extra: list[str]) -> None:
    given = split_input_args(extra, args.input)
    inputs = build_inputs(given, None, f"{args.model}/{args.task}")
    result = client.call(args.model, args.task, inputs, cache_control=args.cache_control)
    print_result(result, args, out, err)


COMMANDS = {
    "pipelines": cmd_pipelines, "models": cmd_models, "health": cmd_health,
    "cache-stats": cmd_cache_stats, "clear-cache": cmd_clear_cache,
}
INPUT_COMMANDS = {"run": cmd_run, "stream": cmd_stream, "call": cmd_call}


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
