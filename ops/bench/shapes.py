"""Build each ``shape:`` model, load it through its family's loader and answer every task.

Proves, one shape at a time in a child process (so each one's memory is measured alone and
freed), that the full-size random models of ``deployments/shapes/`` build offline, load
through the same code real weights take, and answer. Prints per shape: parameters, folder
size, build and load seconds, one answer's seconds per task, and the child's peak RSS.

    python ops/bench/shapes.py                       # every shape
    python ops/bench/shapes.py clip-vit-b-32 sd-turbo --threads 2
    python ops/bench/shapes.py --device cuda         # fp16 on a GPU where one is lent

Models are built under $FUSION_MODEL_DIR (default .fusion-models in the repository) and
reused by later runs; ``--fresh`` builds into a temporary folder to time the build.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


# per family: the model config fields and one request per task (small, deterministic inputs)
FAMILY = {
    "clip": {"config": {"family": "clip"}},
    "distilbert-sst2": {"config": {"family": "text", "backend": "classifier"}},
    "bart-large-mnli": {"config": {"family": "text", "backend": "nli"}},
    "ms-marco-minilm-l6": {"config": {"family": "text", "backend": "cross_encoder"}},
    "caption": {"config": {"family": "caption"}},
    "audio": {"config": {"family": "audio", "backend": "transformers",
                         "options": {"max_new_tokens": 32}}},
    "diffusion": {"config": {"family": "diffusion"}},
}


def _png(size: tuple[int, int] = (256, 256)) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds: float = 5.0) -> bytes:
    import numpy as np

    from deployments.media import encode_wav

    t = np.arange(int(16000 * seconds)) / 16000
    return encode_wav((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)


def requests_for(family: str, backend: str | None) -> dict[str, dict]:
    labels = ["a cat", "a dog", "a car"]
    if family == "clip":
        img = _png()
        return {"embed_image": {"image": img}, "embed_text": {"text": "a photo of a cat"},
                "zero_shot": {"image": img, "labels": labels}}
    if family == "text" and backend == "cross_encoder":
        return {"rerank": {"query": "what is a kitten", "document": "a kitten is a young cat"}}
    if family == "text" and backend == "nli":
        return {"zero_shot": {"text": "the movie was wonderful", "labels": labels}}
    if family == "text":
        return {"classify": {"text": "the movie was wonderful"}}
    if family == "caption":
        return {"caption": {"image": _png(), "max_new_tokens": 20}}
    if family == "audio":
        return {"transcribe": {"audio": _wav()}}
    if family == "diffusion":
        return {"generate": {"prompt": "a lighthouse at dusk", "steps": 1, "width": 512,
                             "height": 512, "guidance": 0.0, "seed": 1}}
    raise ValueError(family)


def run_one(name: str, model_dir: str, threads: int, device: str) -> dict:
    """In a child process: build, load, answer; return the figures."""
    import torch

    from deployments.shape_models import load_spec
    from deployments.sources import build_shape
    from fusion.config import ModelConfig
    from fusion.registry import model_class

    spec = load_spec(name)
    fields = dict(FAMILY.get(name) or FAMILY[spec["family"]])["config"]
    config = ModelConfig(name=name, source=f"shape:{name}", threads=threads,
                         num_gpus=1 if device == "cuda" else 0, **fields)
    backend_cls = model_class(config)
    t0 = time.perf_counter()
    folder = build_shape(name, Path(model_dir))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = backend_cls.load(config, model_dir)
    load_s = time.perf_counter() - t0
    modules = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
    pipe = getattr(model, "pipe", None)
    if pipe is not None:
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    params = sum(p.numel() for m in modules for p in m.parameters())
    answers = {}
    for task, inputs in requests_for(config.family, config.backend).items():
        item = model.prepare(task, inputs)
        t0 = time.perf_counter()
        model.run(task, [item])  # the first call warms up (allocations, kernels)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.run(task, [item])[0]
        answers[task] = {"s": round(time.perf_counter() - t0, 3), "first_s": round(first, 3),
                         "out": {k: (v[:60] if isinstance(v, str) else
                                     f"{type(v).__name__}[{len(v)}]")
                                 for k, v in out.items()}}
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"shape": name, "family": config.family, "backend": config.backend,
            "params_M": round(params / 1e6, 1), "folder_GB": round(size / 2**30, 2),
            "build_s": round(build_s, 1), "load_s": round(load_s, 1),
            "fingerprint": model.fingerprint, "device": model.device,
            "answers": answers,
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    from deployments.shape_models import shape_names

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=shape_names())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--fresh", action="store_true", help="build into a temporary folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model_dir = os.environ.get("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    if args.child:
        print(json.dumps(run_one(args.child, model_dir, args.threads, args.device)))
        return
    tmp = tempfile.TemporaryDirectory() if args.fresh else None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "FUSION_MODEL_DIR": tmp.name if tmp else model_dir,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    print(f"{'shape':18} {'params':>8} {'disk':>7} {'build':>7} {'load':>6} "
          f"{'peak RSS':>8}  answers (seconds per request, batch 1, after a warm-up)")
    failed = 0
    for name in args.shapes:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--threads",
                               str(args.threads), "--device", args.device],
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            failed += 1
            print(f"{name:18} FAILED\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        answers = "  ".join(f"{t} {a['s']:.2f}s" for t, a in r["answers"].items())
        print(f"{name:18} {r['params_M']:>7.1f}M {r['folder_GB']:>5.2f}GB {r['build_s']:>6.1f}s "
              f"{r['load_s']:>5.1f}s {r['peak_rss_GB']:>6.2f}GB  {answers}", flush=True)
        outs = json.dumps({t: a["out"] for t, a in r["answers"].items()})
        print(f"{'':18} {r['fingerprint']}  {outs}")
    if tmp:
        tmp.cleanup()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
