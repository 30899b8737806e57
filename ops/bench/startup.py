"""Start-up time and memory of the offline default profile, as a user starts it.

Runs ``serve run ops/serve/local.yaml`` in its own session, times how long until ``/healthz``
answers and until every model has answered ``GET /v1/models``, then adds up the memory of
every process in that session (Ray's own processes, the proxy, the router and one replica
per model) as PSS — shared pages split between the processes that share them — and RSS.
Stops it with SIGINT and times the shutdown too.

    python ops/bench/startup.py [--config ops/serve/local.yaml] [--port 8000]

The tiny models are built on the first start and reused after (``$FUSION_MODEL_DIR``), so
run it twice to see a warm start.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def stop_session(proc: subprocess.Popen, wait_s: float = 120) -> None:
    """Stop a ``serve run`` / ``serve_local.py`` started in its own session the way a user
    does (SIGINT to the group), and SIGKILL the group if it is not gone after ``wait_s``."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def memory_kib(pid: int) -> tuple[int, int, str]:
    """(PSS, RSS) in KiB and a short name for one process."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]
                  if line.split()[1].isdigit()}
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[-40:]
        return fields.get("Pss", 0), fields.get("Rss", 0), name
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return 0, 0, "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ops/serve/local.yaml")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    serve_bin = Path(sys.executable).with_name("serve")

    def own_session() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    started = time.monotonic()
    proc = subprocess.Popen([str(serve_bin), "run", args.config], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=own_session)
    healthy = ready = None
    try:
        while time.monotonic() - started < 600 and proc.poll() is None:
            try:
                if healthy is None and httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    healthy = time.monotonic() - started
                if healthy is not None:
                    r = httpx.get(f"{url}/v1/models", timeout=60)
                    if r.status_code == 200:
                        ready = time.monotonic() - started
                        models = len(r.json()["models"])
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        if ready is None:
            raise SystemExit("the gateway did not come up within 600 s")
        time.sleep(5)  # let replicas settle after their first requests
        rows = [memory_kib(pid) for pid in session_pids(proc.pid)]
    finally:
        stopping = time.monotonic()
        stop_session(proc)
        stopped = time.monotonic() - stopping
    pss = sum(r[0] for r in rows) / 1024
    rss = sum(r[1] for r in rows) / 1024
    print(f"profile {args.config}: {models} models")
    print(f"  /healthz answers after        {healthy:6.1f} s")
    print(f"  every model answered after    {ready:6.1f} s")
    print(f"  memory, {len(rows)} processes:     PSS {pss:7.0f} MiB   (RSS {rss:7.0f} MiB)")
    print(f"  stopped by SIGINT in          {stopped:6.1f} s")
    print("  largest processes (PSS MiB):")
    for p, _, name in sorted(rows, reverse=True)[:10]:
        print(f"    {p / 1024:7.0f}  {name}")


if __name__ == "__main__":
    main()
