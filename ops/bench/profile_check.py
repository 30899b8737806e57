"""Start a serve profile as a user does, call every task of every model and every built-in
pipeline once over HTTP, and report start-up time, per-call latency and memory.

    python ops/bench/profile_check.py --config ops/serve/shapes.yaml [--port 8123]

``serve run`` runs on a copy of the config whose HTTP port is ``--port`` (so it never takes
the profiles' 8000), in its own session, with its own local Ray; it is stopped with SIGINT.
Calls send ``Cache-Control: no-store`` and small inputs: a 256x256 PNG, 5 s of a 220 Hz tone,
short texts; ``generate`` asks for one step at 512x512 (SD-Turbo's setting; the
``text_to_image`` pipeline keeps its own defaults). Any answer other than 200 fails the run.
Memory is the PSS (and RSS) of every process in the session once all calls are done.
``--budget-s`` bounds the whole run (start and calls; unanswered calls count as failures).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from startup import memory_kib, session_pids, stop_session

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TEXT = "the movie was wonderful and the cat liked it too"
LABELS = ["a cat", "a dog", "a car"]


def png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wav() -> str:
    from deployments.media import encode_wav

    t = np.arange(16000 * 5) / 16000
    data = encode_wav((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return base64.b64encode(data).decode()


def task_inputs(task: str, input_types: dict[str, str], image: str, audio: str) -> dict:
    values = {"text": TEXT, "image": image, "audio": audio, "labels": LABELS,
              "prompt": "a lighthouse at dusk"}
    inputs = {k: values[k] for k in input_types if k in values}
    if task == "generate":
        inputs.update(steps=1, width=512, height=512, guidance=0.0, seed=1)
    return inputs


PIPELINE_INPUTS = {
    "caption_then_classify": lambda img, aud: {"image": img, "labels": LABELS},
    "text_to_image": lambda img, aud: {"prompt": "a lighthouse at dusk", "then_caption": True},
    "transcribe_then_classify": lambda img, aud: {"audio": aud, "labels": LABELS},
    "clip_zero_shot": lambda img, aud: {"image": img, "labels": LABELS},
    "fused_image_labels": lambda img, aud: {"image": img, "labels": LABELS},
    "embed": lambda img, aud: {"text": TEXT},
    "ask_image": lambda img, aud: {"image": img, "question": "What is in it?",
                                   "max_tokens": 16},
    "ask_audio": lambda img, aud: {"audio": aud, "question": "What is heard?",
                                   "max_tokens": 16},
    "describe_then_draw": lambda img, aud: {"prompt": "a lighthouse at dusk", "max_tokens": 16,
                                            "steps": 1},
}


OUT_OF_TIME = httpx.Response(599, text="not answered within --budget-s")


def own_session() -> None:
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ops/serve/shapes.yaml")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--budget-s", type=float, default=1200,
                        help="stop calling (and fail) past this many seconds from the start")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / args.config).read_text())
    config["http_options"]["port"] = args.port
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(config, tmp)
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    env.pop("RAY_ADDRESS", None)
    log_path = Path(tempfile.gettempdir()) / f"profile_check-{os.getpid()}.log"
    serve_bin = Path(sys.executable).with_name("serve")
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(serve_bin), "run", tmp.name], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=own_session)
    failures = 0
    try:
        models = None
        deadline = started + args.budget_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{url}/v1/models", timeout=30)
                if r.status_code == 200:
                    models = r.json()["models"]
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if models is None:
            raise SystemExit(f"{args.config} did not come up; log: {log_path}\n"
                             + log_path.read_text()[-3000:])
        ready = time.monotonic() - started
        print(f"profile {args.config}: {len(models)} models answer /v1/models after "
              f"{ready:.0f} s")
        image, audio = png(), wav()
        headers = {"Cache-Control": "no-store"}

        def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
            left = deadline - time.monotonic()
            if left <= 0:
                return OUT_OF_TIME
            try:
                return client.post(path, json=body, timeout=left)
            except httpx.TimeoutException:
                return OUT_OF_TIME

        with httpx.Client(base_url=url, headers=headers) as client:
            for m in models:
                for task in m["tasks"]:
                    body = {"inputs": task_inputs(task, m["inputs"][task], image, audio)}
                    t0 = time.perf_counter()
                    r = post(client, f"/v1/models/{m['name']}/{task}", body)
                    ms = (time.perf_counter() - t0) * 1000
                    failures += r.status_code != 200
                    print(f"  {m['name']:>10}/{task:<12} {r.status_code}  {ms:9.0f} ms  "
                          f"{m['source']}")
            for name in client.get("/v1/pipelines").json()["pipelines"]:
                name = name["name"] if isinstance(name, dict) else name
                body = {"inputs": PIPELINE_INPUTS[name](image, audio)}
                t0 = time.perf_counter()
                r = post(client, f"/v1/pipelines/{name}", body)
                ms = (time.perf_counter() - t0) * 1000
                failures += r.status_code != 200
                print(f"  pipeline {name:<26} {r.status_code}  {ms:9.0f} ms"
                      + ("" if r.status_code == 200 else f"  {r.text[:300]}"))
        rows = [memory_kib(pid) for pid in session_pids(proc.pid)]
    finally:
        stopping = time.monotonic()
        stop_session(proc, 180)
        stopped = time.monotonic() - stopping
        os.unlink(tmp.name)
    pss = sum(r[0] for r in rows) / 2**20
    rss = sum(r[1] for r in rows) / 2**20
    print(f"  memory, {len(rows)} processes: PSS {pss:.1f} GiB (RSS {rss:.1f} GiB); "
          f"stopped by SIGINT in {stopped:.0f} s")
    print("  largest processes (PSS GiB):")
    for p, _, name in sorted(rows, reverse=True)[:9]:
        print(f"    {p / 2**20:5.2f}  {name}")
    print(f"  log: {log_path}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
