"""``fusion feedback``, ``fusion fit`` and ``fusion profiles``: the learned-fusion loop from
the command line (docs/how-to/learned-fusion.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fusion_client.cli.inputs import UsageError
from fusion_client.cli.output import write_json
from fusion_client.client import FusionClient

IMPORT_CHUNK = 500  # items per request of ``fusion feedback import``


def cmd_feedback(client: FusionClient, args, out, err) -> None:
    """``fusion feedback REQUEST_ID LABEL`` or ``fusion feedback import labels.jsonl``."""
    words = list(args.words)
    if words and words[0] == "import":
        if len(words) != 2:
            raise UsageError("usage: fusion feedback import FILE.jsonl")
        _import(client, Path(words[1]), args, out)
        return
    if len(words) != 2:
        raise UsageError("usage: fusion feedback REQUEST_ID LABEL [--step S] [--weight W]")
    body = client.feedback(words[0], words[1], step=args.step, weight=args.weight,
                           pipeline=args.pipeline)
    if args.json:
        write_json(out, body)
        return
    verb = "replaced the label of" if body.get("replaced") else "labelled"
    served = body.get("served_label")
    out.write(f"{verb} {body['pipeline']}/{body['step']} answer {body['request_id']}: "
              f"{body['label']}" + (f" (served: {served})" if served else "") + "\n")


def _import(client: FusionClient, path: Path, args, out) -> None:
    """One JSON object per line (``{"request_id": ..., "label": ...}``); blank lines and
    ``#`` comments skipped; sent in chunks."""
    items: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n}: not JSON ({exc.msg})") from None
    totals: dict[str, Any] = {"imported": 0, "replaced": 0, "errors": []}
    for start in range(0, len(items), IMPORT_CHUNK):
        body = client.import_feedback(items[start:start + IMPORT_CHUNK])
        totals["imported"] += body.get("imported", 0)
        totals["replaced"] += body.get("replaced", 0)
        totals["errors"] += [{**e, "index": e.get("index", 0) + start}
                             for e in body.get("errors", [])]
    if args.json:
        write_json(out, totals)
        return
    out.write(f"imported {totals['imported']} labels ({totals['replaced']} replaced), "
              f"{len(totals['errors'])} refused\n")
    for e in totals["errors"][:20]:
        out.write(f"  item {e['index']}: {e.get('code')}: {e.get('message')}\n")


def _metrics_table(evaluation: dict[str, Any], out) -> None:
    rows = [(f"source {name}", m) for name, m in evaluation.get("sources", {}).items()]
    rows += [(f"source {name} (calibrated)", m)
             for name, m in evaluation.get("sources_calibrated", {}).items()]
    rows += [("hand-written fusion", evaluation.get("handwritten") or {}),
             ("learned fusion", evaluation.get("learned") or {})]
    width = max(len(r[0]) for r in rows)
    out.write(f"{'':{width}}  accuracy  log-loss    ECE\n")
    for name, m in rows:
        out.write(f"{name:{width}}  {m.get('accuracy', 0):8.1%}  {m.get('log_loss', 0):8.3f}"
                  f"  {m.get('ece', 0):5.3f}\n")
    held = "held-out" if evaluation.get("held_out") else "training (too few for a split)"
    out.write(f"on {evaluation.get('n_test')} {held} answers; fitted on "
              f"{evaluation.get('n_train')}\n")


def cmd_fit(client: FusionClient, args, out, err) -> None:
    body = client.fit(args.pipeline, step=args.step, since=args.since,
                      min_labels=args.min_labels, test_fraction=args.test_fraction)
    if args.json:
        write_json(out, body)
        return
    params = body.get("params") or {}
    out.write(f"profile {body['profile']} ({body.get('pipeline')}/{body.get('step')}), "
              "inactive until activated\n")
    weights = ", ".join(f"{s} {w:.2f} (T {t:.2f})" for s, w, t in zip(
        params.get("sources", []), params.get("weights", []), params.get("temperatures", []),
        strict=False))
    out.write(f"weights: {weights}\n")
    _metrics_table(body.get("evaluation") or {}, out)
    out.write(f"activate: fusion profiles {args.pipeline} --activate {body['profile']}\n")


def cmd_profiles(client: FusionClient, args, out, err) -> None:
    if args.activate:
        body = client.activate_profile(args.pipeline, args.activate, shadow=args.shadow,
                                       step=args.step)
        if args.json:
            write_json(out, body)
        else:
            out.write(f"{body['profile']} is now {body['state']} for "
                      f"{body['pipeline']}/{body['step']}\n")
        return
    body = client.profiles(args.pipeline)
    if args.json:
        write_json(out, body)
        return
    rows = [("ID", "STEP", "STATE", "HELD-OUT ACC", "HAND-WRITTEN", "LIVE ACC", "SHADOW")]
    for p in body.get("profiles", []):
        ev, live, shadow = p.get("evaluation") or {}, p.get("live") or {}, p.get("shadow")
        rows.append((p["id"], p["step"], p["state"],
                     _pct((ev.get("learned") or {}).get("accuracy")),
                     _pct((ev.get("handwritten") or {}).get("accuracy")),
                     f"{_pct(live.get('accuracy'))} of {live.get('labelled', 0)}",
                     f"agree {_pct(shadow['agreement'])}, acc {_pct(shadow['accuracy'])}"
                     if shadow else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    for f in body.get("fitting", []):
        out.write(f"fitting {f['pipeline']}/{f['step']}: {f['stage']}\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
