"""The ``fusion`` sub-commands: each takes the client, the parsed arguments and the output
streams; ``run``, ``stream`` and ``call`` also take the leftover ``--NAME VALUE`` tokens."""

from __future__ import annotations

import json
from typing import Any

from fusion_client.cli.chat import cmd_chat
from fusion_client.cli.inputs import build_inputs, split_input_args
from fusion_client.cli.keys import cmd_keys, cmd_usage
from fusion_client.cli.learning import cmd_feedback, cmd_fit, cmd_profiles
from fusion_client.cli.output import (
    ProgressBar,
    print_result,
    start_line,
    step_line,
    write_json,
)
from fusion_client.cli.rerank import cmd_rerank
from fusion_client.client import FusionClient
from fusion_client.errors import NotFound
from fusion_client.types import (
    PipelineInfo,
    ProgressEvent,
    ResultEvent,
    StartEvent,
    StepEvent,
    TokenEvent,
)

# ---- listings and admin ------------------------------------------------------------------

def cmd_pipelines(client: FusionClient, args, out, err) -> None:
    items = client.pipelines()
    if args.json:
        write_json(out, [p.model_dump(mode="json") for p in items])
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
        write_json(out, [m.model_dump(mode="json") for m in items])
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
        write_json(out, body)
    else:
        out.write(f"{(body or {}).get('status', 'ok')} ({client.base_url})\n")


def cmd_cache_stats(client: FusionClient, args, out, err) -> None:
    stats = client.cache_stats()
    if args.json:
        write_json(out, stats.model_dump(mode="json"))
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
        write_json(out, {"deleted": deleted})
    else:
        out.write(f"deleted {deleted} entries\n")


# ---- runs --------------------------------------------------------------------------------

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
            elif isinstance(event, TokenEvent):  # generated text, as it comes
                bar.end()
                err.write(event.text)
                err.flush()
            elif isinstance(event, (StartEvent, StepEvent)):
                bar.end()
                err.write((start_line(event) if isinstance(event, StartEvent)
                           else step_line(event)) + "\n")
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
COMMANDS["chat"] = cmd_chat
COMMANDS.update(feedback=cmd_feedback, fit=cmd_fit, profiles=cmd_profiles)
COMMANDS["keys"] = cmd_keys
COMMANDS["usage"] = cmd_usage
COMMANDS["rerank"] = cmd_rerank
