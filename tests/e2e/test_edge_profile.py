"""The edge profile as a user starts it (``./ops/serve-local.sh --edge``: the embedded runtime,
one process, no Ray, on ``ops/serve/edge.yaml``).

One short test: every model of the default profile answers, every task they list is called,
a pipeline crosses two models, tokens stream, and a burst of mixed calls with one bad item
gives 200s for the good ones and a 422 naming the field for the bad one. Its own process
group, stopped with SIGINT, and then no process of that group is left.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.accuracy import speech_wavs
from tests.e2e.test_serve_run import _own_group, port_free
from tests.fakes import png
from tests.sse import decode

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"

pytestmark = pytest.mark.serve


def every_task() -> dict[str, dict]:
    """Inputs for each task the edge profile serves (the test checks the listing matches)."""
    image = base64.b64encode(png()).decode()
    wav = base64.b64encode(speech_wavs()[0]).decode()
    return {
        "text/embed": {"text": "The river was quiet after the storm."},
        "text/zero_shot": {"text": "The striker scored twice.", "labels": ["sports", "music"]},
        "sentiment/classify": {"text": "a wonderful movie"},
        "captioner/caption": {"image": image},
        "clip/embed_image": {"image": image},
        "clip/embed_text": {"text": "a cat"},
        "clip/zero_shot": {"image": image, "labels": ["cat", "dog"]},
        "whisper/transcribe": {"audio": wav},
        "diffusion/generate": {"prompt": "a red fox", "steps": 2},
        "ocr/ocr": {"image": image},
        "tts/speak": {"text": "Hello from the edge."},
        "llm/chat": {"prompt": "hi", "max_tokens": 4},
        "llm/complete": {"prompt": "Once upon", "max_tokens": 4},
        "shapes/classify": {"image": image},
    }


def _group_of(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, psutil.Error):
        return None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _burst() -> list[httpx.Response]:
    image = base64.b64encode(png()).decode()
    calls = [("text", "embed", {"text": f"sentence {i}"}) for i in range(4)]
    calls += [("sentiment", "classify", {"text": f"good {i}"}) for i in range(3)]
    calls += [("clip", "zero_shot", {"image": image, "labels": ["cat", "dog"]})]
    calls += [("sentiment", "classify", {"text": "   "})]  # the bad one
    async with httpx.AsyncClient(base_url=URL, timeout=120) as client:
        return await asyncio.gather(*(client.post(f"/v1/models/{m}/{t}", json={"inputs": i},
                                                  headers={"Cache-Control": "no-store"})
                                       for m, t, i in calls))


def test_edge_profile_serves_every_task_in_one_process(tmp_path):
    assert port_free(8000), "port 8000 is taken: edge.yaml serves there"
    with socket.socket() as s:  # any free port for the Prometheus export
        s.bind(("127.0.0.1", 0))
        metrics_port = str(s.getsockname()[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FUSION_METRICS_PORT": metrics_port,
           "FUSION_MODEL_DIR": os.environ.get("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(["bash", "ops/serve-local.sh", "--edge"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_own_group)
    try:
        deadline, models = time.monotonic() + 420, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{URL}/v1/models", timeout=30)
                if r.status_code == 200:
                    models = {m["name"]: m for m in r.json()["models"]}
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert models, (tmp_path / "serve.log").read_text()[-4000:]
        assert set(models) == {"text", "sentiment", "captioner", "clip", "whisper",
                               "diffusion", "ocr", "tts", "llm", "shapes"}
        assert models["text"]["backend"] == "onnx"
        assert "+onnx-int8#" in models["text"]["fingerprint"]
        assert models["whisper"]["fingerprint"].endswith("+ct2-int8")
        group = [p.cmdline() for p in psutil.process_iter() if _group_of(p) == proc.pid]
        assert len(group) == 1 and "fusion.embedded" in group[0], group  # one process, no Ray

        calls = every_task()
        listed = {f"{name}/{task}" for name, m in models.items() for task in m["tasks"]}
        assert listed == set(calls), listed ^ set(calls)
        for path, inputs in calls.items():
            r = httpx.post(f"{URL}/v1/models/{path}", json={"inputs": inputs}, timeout=120)
            assert r.status_code == 200, (path, r.text)

        wav = base64.b64encode(speech_wavs()[0]).decode()
        r = httpx.post(f"{URL}/v1/pipelines/transcribe_then_classify", timeout=120,
                       json={"inputs": {"audio": wav, "labels": ["animals", "finance"]}})
        assert r.status_code == 200, r.text
        assert "fox" in r.json()["outputs"]["text"].lower()
        assert r.json()["outputs"]["labels"][0]["label"] == "animals"

        # the LLM's tokens stream through the local replica
        r = httpx.post(f"{URL}/v1/chat/completions", timeout=120,
                       json={"model": "llm", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 8, "temperature": 0, "stream": True})
        assert r.status_code == 200, r.text
        chunks = [e.data for e in decode(r.text)]
        assert chunks[-1] == "[DONE]" and len(chunks) >= 3, r.text

        *good, bad = asyncio.run(_burst())
        assert [g.status_code for g in good] == [200] * len(good), [g.text for g in good]
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "inputs.text", bad.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(proc.pid), "a process of the edge gateway outlived SIGINT"
    while not port_free(8000) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert port_free(8000), "the edge profile left port 8000 open"
