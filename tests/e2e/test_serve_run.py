"""``serve run ops/serve/local.yaml`` as a user runs it: start, wait for /healthz, call, stop.

Runs in its own process group with its own Ray instance, before the integration package
starts another, and stops with SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes import png

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"

pytestmark = pytest.mark.serve


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _own_group() -> None:
    """A process group of its own (so SIGINT reaches all of it) and SIGINT handled as in a
    terminal, even where this test itself was started in the background with SIGINT ignored."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_run_local_profile(tmp_path):
    assert port_free(8000), "port 8000 is taken: local.yaml serves there"
    serve_bin = Path(sys.executable).with_name("serve")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "FUSION_MODEL_DIR": os.environ.get("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as a user's first run would
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(serve_bin), "run", "ops/serve/local.yaml"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_own_group)
    try:
        deadline = time.monotonic() + 420
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = httpx.get(f"{URL}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy:
                break
            time.sleep(1)
        assert healthy, (tmp_path / "serve.log").read_text()[-4000:]
        r = httpx.post(f"{URL}/v1/models/text/zero_shot", timeout=120, json={"inputs": {
            "text": "I love this phone", "labels": ["positive", "negative"]}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"]["labels"][0]["label"] == "positive"
        image = base64.b64encode(png()).decode()
        r = httpx.post(f"{URL}/v1/pipelines/clip_zero_shot", timeout=120,
                       json={"inputs": {"image": image, "labels": ["cat", "dog"]}})
        assert r.status_code == 200, r.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(10)
            pytest.fail("serve run did not stop within 90 s of SIGINT")
        log.close()
    assert rc in (0, -signal.SIGINT, 130), (tmp_path / "serve.log").read_text()[-4000:]
    deadline = time.monotonic() + 30
    while not port_free(8000) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert port_free(8000), "serve run left port 8000 open"
