"""Learned fusion on ``shapes_fused``: each source, the hand-written fusion and the learned
profile, on fresh pictures — accuracy, log-loss and expected calibration error (ECE).

The gateway of the embedded runtime (the same Gateway and HTTP app a Serve router runs) is
driven in-process over ASGI with ``shapes_fused``'s two default-profile models: the shapes CNN
(``tiny:shapes-cnn``, trained on first start) and the tiny random CLIP (uninformative). The
loop is the user's: ``--train`` answers are labelled through ``POST /v1/feedback``, ``POST
.../fusion/fit`` fits a profile (its held-out evaluation is printed too), the profile is
activated, and ``--fresh`` new pictures are answered by the served pipeline. The pictures are
drawn here, unlike the CNN's training set (heavier noise, drawn at 48 px and shrunk): a shift
on which the CNN is unsure and biased, as a model meets its users' own pictures.

    python ops/bench/fusion_learning.py                       # SQLite in a temporary folder
    python ops/bench/fusion_learning.py --database-url postgresql://... --train 400 --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LABELS = ["circle", "square", "triangle", "cross"]


def picture(label: int, rng: np.random.Generator) -> str:
    """One shape at 48x48 on noise up to 100, shrunk to 32x32; base64 PNG."""
    img = Image.fromarray(rng.integers(0, 100, (48, 48, 3), dtype=np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    r = int(rng.integers(6, 12))
    cx, cy = (int(v) for v in rng.integers(r + 2, 48 - r - 2, 2))
    colour = tuple(int(v) for v in rng.integers(90, 256, 3))
    shape = LABELS[label]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    buf = io.BytesIO()
    img.resize((32, 32), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pictures(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(LABELS[int(y)], picture(int(y), rng)) for y in rng.integers(0, 4, n)]


def distribution(labels: list[dict]) -> np.ndarray:
    scores = {x["label"]: max(0.0, float(x["score"])) for x in labels}
    p = np.array([scores.get(k, 0.0) for k in LABELS]) + 1e-12
    return p / p.sum()


async def run(args: argparse.Namespace) -> dict:
    import httpx

    from fusion.core.startup import load_config, start_gateway
    from fusion.embedded.models import LocalModels
    from fusion.http.app import create_api
    from fusion.pipeline.fuse import fuse_labels
    from fusion.pipeline.learn import metrics

    config = load_config({
        "models": [{"name": "shapes", "family": "image_classify", "source": "tiny:shapes-cnn"},
                   {"name": "clip", "family": "clip", "source": "tiny:clip"}],
        "database": {"url": args.database_url}, "cache": {"enabled": False},
        "observability": {"access_log": "off"}})
    started = time.perf_counter()
    gateway = start_gateway(config, LocalModels(config, None), None)
    load_s = time.perf_counter() - started
    app = create_api(lambda: gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bench", timeout=120) as http:
        async def ask(image: str) -> dict:
            r = await http.post("/v1/pipelines/shapes_fused", json={"inputs": {"image": image}})
            r.raise_for_status()
            return r.json()

        for truth, image in pictures(args.train, args.seed):
            out = await ask(image)
            r = await http.post("/v1/feedback", json={"request_id": out["request_id"],
                                                      "label": truth})
            r.raise_for_status()
        started = time.perf_counter()
        r = await http.post("/v1/pipelines/shapes_fused/fusion/fit", json={})
        r.raise_for_status()
        fitted, fit_s = r.json(), time.perf_counter() - started
        r = await http.post(f"/v1/pipelines/shapes_fused/fusion/profiles/{fitted['profile']}"
                            "/activate")
        r.raise_for_status()
        fresh = [(truth, await ask(image)) for truth, image in
                 pictures(args.fresh, args.seed + 1000)]
    dialect = gateway.learning._stores[0].dialect if gateway.learning._stores else None
    gateway.learning.close()
    truth = [LABELS.index(t) for t, _ in fresh]
    ones = np.ones(len(fresh))
    outs = [o["outputs"] for _, o in fresh]
    assert all(o["explanation"]["profile"]["id"] == fitted["profile"] for o in outs)
    table = {
        "cnn": metrics([distribution(o["cnn"]) for o in outs], truth, ones),
        "clip": metrics([distribution(o["clip"]) for o in outs], truth, ones),
        "handwritten": metrics([distribution(fuse_labels([o["cnn"], o["clip"]], [0.5, 0.5]))
                                for o in outs], truth, ones),
        "learned": metrics([distribution(o["labels"]) for o in outs], truth, ones)}
    return {"train": args.train, "fresh": args.fresh, "seed": args.seed,
            "database": dialect, "models_load_s": round(load_s, 2), "fit_s": round(fit_s, 3),
            "profile": fitted["profile"], "params": fitted["params"],
            "held_out": fitted["evaluation"], "fresh_pictures": table}


def print_table(result: dict) -> None:
    def row(name: str, m: dict) -> str:
        return f"  {name:<24} {m['accuracy']:8.1%} {m['log_loss']:9.3f} {m['ece']:7.3f}"

    print(f"shapes_fused: {result['train']} labelled answers ({result['database']}), fit in "
          f"{result['fit_s']} s, profile {result['profile']}")
    p = result["params"]
    print("  weights " + ", ".join(f"{s} {w:.2f} (T {t:.2f})" for s, w, t in zip(
        p["sources"], p["weights"], p["temperatures"], strict=True)))
    held, fresh = result["held_out"], result["fresh_pictures"]
    blocks = [
        (f"held-out answers of the fit ({held['n_test']})",
         [*((f"source {k}", v) for k, v in held["sources"].items()),
          ("hand-written 0.5/0.5", held["handwritten"]), ("learned", held["learned"])]),
        (f"fresh pictures ({result['fresh']}), served",
         [("source cnn", fresh["cnn"]), ("source clip", fresh["clip"]),
          ("hand-written 0.5/0.5", fresh["handwritten"]),
          ("learned (served)", fresh["learned"])])]
    for title, rows in blocks:
        print(f"{title}:\n  {'':<24} {'accuracy':>8} {'log-loss':>9} {'ECE':>7}")
        for name, m in rows:
            print(row(name, m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300, help="labelled answers to fit on")
    parser.add_argument("--fresh", type=int, default=300, help="fresh pictures to measure")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as tmp:
        args.database_url = args.database_url or f"sqlite:///{tmp}/fusion.db"
        result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
