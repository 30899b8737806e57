"""What ``fusion`` prints and writes: results as text or JSON, image/audio outputs saved to
files, the per-step summary and the progress bar of ``fusion stream``."""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path
from typing import IO, Any

from fusion_client.encoding import BINARY_TYPES, b64, element_type, sniff_extension
from fusion_client.explain import explanation_table, is_explanation
from fusion_client.types import (
    CallResult,
    PipelineResult,
    ProgressEvent,
    StartEvent,
    StepEvent,
    StepResult,
)

# Where each binary output went: ``(output name, list index or None)`` → file path.
Written = dict[tuple[str, int | None], str]


def write_json(out: IO[str], data: Any) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ---- binary outputs ----------------------------------------------------------------------

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


def write_binaries(found: list[tuple[str, int | None, bytes]], output: str | None) -> Written:
    """Write binary outputs to ``output`` (file or folder); returns where each went."""
    if not output or not found:
        return {}
    target = Path(output).expanduser()
    written: Written = {}
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


# ---- results -----------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def result_json(result: PipelineResult | CallResult, written: Written) -> dict[str, Any]:
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


def format_output(name: str, value: Any, type_: str | None, written: Written) -> list[str]:
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


def _step_flags(step: StepResult | StepEvent) -> str:
    """`` (cached, skipped)`` for a step's set flags, or ``""``."""
    flags = [f for f in ("cached", "coalesced", "skipped") if getattr(step, f)]
    return f" ({', '.join(flags)})" if flags else ""


def start_line(event: StartEvent) -> str:
    """One step of ``fusion stream`` beginning: what runs now, before its progress or text."""
    what = f"{event.model}/{event.task}" if event.model else event.task or "built-in"
    return f"step {event.step} started ({what})"


def step_line(event: StepEvent) -> str:
    """One finished step of ``fusion stream``."""
    return f"step {event.step} done in {_ms(event.ms)}{_step_flags(event)}"


def summary_line(result: PipelineResult | CallResult) -> str:
    parts = []
    if isinstance(result, PipelineResult):
        steps = [f"{name} {_ms(s.ms)}{_step_flags(s)}" for name, s in result.steps.items()]
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
    """Save binary outputs (``-o``), then print the outputs on ``out`` (as one JSON document,
    or one JSON line for ``stream --json``) and, as text, the summary on ``err``."""
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
        if is_explanation(value):  # fusion explanations: a table with --explain
            lines = [f"{name}:", *(f"  {x}" for x in explanation_table(value))] \
                if getattr(args, "explain", False) else [f"{name}: (use --explain to show)"]
        else:
            lines = format_output(name, value, result.types.get(name), written)
        for line in lines:
            out.write(line + "\n")
    err.write(summary_line(result) + "\n")


# ---- progress ----------------------------------------------------------------------------

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
