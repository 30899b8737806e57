"""The gateway on a two-node Ray cluster: deploy, spread, lose a node, recover, stop clean.

Two ``ray start`` nodes on this machine (a head with the dashboard, and a worker with a custom
``node2`` resource), as a user would start them on two machines. The default profile's
``text``/``clip``/``sentiment`` models go on it with ``serve deploy`` through the dashboard;
``sentiment`` asks for the ``node2`` resource, so it runs only there. The test then SIGKILLs
every process of node 2 (a machine lost), and checks that Serve replaces the replicas it had
on the head, that pipelines answer again, and that a request for the model that can only
live on node 2 is held until node 2 rejoins, then answered.

Every process is ours: both nodes run ``ray start --block`` in process groups of their own,
with ports of their own (never 6379 or 8000) and a temp dir of their own; they are stopped by
signal, and the test checks that nothing under that temp dir is left running. (``ray stop``
is not used: it stops every Ray process of the user on the machine, other people's too.)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.e2e.test_serve_run import _own_group
from tests.fakes import png
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.serve

# Node death is noticed in ~3 s instead of Ray's default ~30 s.
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3"}


def wait_for(what: str, probe: Callable[[], object], timeout_s: float, log: Path) -> object:
    """Poll ``probe`` until it returns something true; fail with the last logs if it never
    does (the bounds are generous: a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, OSError, RuntimeError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s} s\n{tail(log)}")


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


class Node:
    """One ``ray start --block`` process (and everything it starts) in its own group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     preexec_fn=_own_group)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole node at once, as losing its machine would."""
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        """SIGTERM to ``ray start``, as a pod shutdown would: it drains the node, then stops
        the processes it started (the check for leftovers is the caller's)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def ours(temp_dir: str) -> list[psutil.Process]:
    """Live processes started for this cluster: Ray puts its session dir in their arguments."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def cluster_config(http_port: int) -> dict:
    """The default profile, three of its models: ``sentiment`` pinned to node 2."""
    config = yaml.safe_load((ROOT / "ops/serve/local.yaml").read_text())
    config["http_options"]["port"] = http_port
    config["proxy_location"] = "HeadOnly"  # one proxy: both nodes share this machine's ports
    args = config["applications"][0]["args"]
    models = {m["name"]: m for m in args["models"]}
    args["router"] = {"num_replicas": 2, "num_cpus": 0.1}
    args["models"] = [{**models["text"]}, {**models["clip"], "num_replicas": 2},
                      {**models["sentiment"], "resources": {"node2": 0.1}}]
    return config


class Dashboard:
    """The head's dashboard REST API (what ``ray list``/``serve status`` read), with the
    cluster's token: Ray enables token authentication by default."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **params) -> dict:
        r = httpx.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def state(self, resource: str, **params) -> list[dict]:
        return self.get(f"/api/v0/{resource}", limit=1000, **params)["data"]["result"]["result"]

    def alive_nodes(self) -> int:
        return sum(n["state"] == "ALIVE" for n in self.state("nodes"))

    def replicas_by_node(self) -> dict[str, set[str]]:
        """Live Serve replica actors: ``{node_id: {deployment names}}``."""
        found: dict[str, set[str]] = {}
        for actor in self.state("actors", filter_keys="state", filter_predicates="=",
                                filter_values="ALIVE"):
            name = actor.get("name") or ""
            if name.startswith("SERVE_REPLICA::fusion#"):
                found.setdefault(actor["node_id"], set()).add(name.split("#")[1])
        return found

    def app(self) -> dict:
        return self.get("/api/serve/applications/")["applications"]["fusion"]

    def healthy(self, deployment: str) -> bool:
        return self.app()["deployments"][deployment]["status"] == "HEALTHY"


def test_gateway_survives_losing_a_node(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths are long
    gcs, http_port, dash_port = free_port(), free_port(), free_port()
    token = uuid.uuid4().hex
    dash = Dashboard(f"http://127.0.0.1:{dash_port}", token)
    url = f"http://127.0.0.1:{http_port}"
    env = {**os.environ, **FAST_HEALTH, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "10",
           "FUSION_MODEL_DIR": os.environ.get("FUSION_MODEL_DIR", str(ROOT / ".fusion-models")),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    head_log, node2_log = tmp_path / "head.log", tmp_path / "node2.log"

    def common() -> list[str]:  # per node: two nodes on one machine need their own ports
        return ["--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}"]

    nodes = [Node("head", [*common(), "--head", f"--port={gcs}", "--num-cpus=2",
                           f"--temp-dir={temp_dir}", "--include-dashboard=true",
                           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                           f"--ray-client-server-port={free_port()}"], env, head_log)]

    def start_node2() -> Node:
        node = Node("node2", [*common(), f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                              "--resources=" + json.dumps({"node2": 1})], env, node2_log)
        nodes.append(node)
        return node

    image = base64.b64encode(png()).decode()

    def clip_answers() -> bool:
        r = httpx.post(f"{url}/v1/pipelines/clip_zero_shot", timeout=30, json={"inputs": {
            "image": image, "labels": ["cat", "dog"]}}, headers={"Cache-Control": "no-store"})
        return r.status_code == 200

    def sentiment(timeout_s: float = 60) -> httpx.Response:
        return httpx.post(f"{url}/v1/models/sentiment/classify", timeout=timeout_s,
                          json={"inputs": {"text": "great"}},
                          headers={"Cache-Control": "no-store"})

    names: list[str] = []
    try:
        wait_for("head dashboard up", lambda: dash.get("/api/version"), 120, head_log)
        node2 = start_node2()
        wait_for("two nodes alive", lambda: dash.alive_nodes() == 2, 120, node2_log)

        config_file = tmp_path / "cluster.yaml"
        config_file.write_text(yaml.safe_dump(cluster_config(http_port)))
        deploy = subprocess.run([str(BIN / "serve"), "deploy", str(config_file), "-a", dash.url],
                                env=env, capture_output=True, text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        wait_for("the app running", lambda: dash.app()["status"] == "RUNNING", 300, head_log)

        placed = dash.replicas_by_node()
        assert len(placed) == 2, f"replicas on {len(placed)} node(s): {placed}"
        node2_id = next(n for n, deps in placed.items() if "sentiment" in deps)
        assert all("sentiment" not in deps for n, deps in placed.items() if n != node2_id)
        assert clip_answers()
        assert sentiment().status_code == 200

        lost = placed[node2_id] - {"sentiment"}
        node2.kill()
        wait_for("node 2 seen dead", lambda: dash.alive_nodes() == 1, 120, head_log)
        # every replica that died with node 2 and may live elsewhere is back, on the head
        wait_for(f"{sorted(lost)} replaced on the head",
                 lambda: all(dash.healthy(d) for d in lost | {"router", "clip", "text"}),
                 180, head_log)
        for _ in range(5):
            wait_for("clip_zero_shot answering again", clip_answers, 120, head_log)
        assert set(dash.replicas_by_node()) == {n for n in placed if n != node2_id}
        # The model only node 2 can hold: Serve reports it unhealthy, and holds its requests
        # (no replica to send them to) until a node with ``node2`` joins; then they answer.
        # Bounding that wait with a quick 503 is the deadline work of issue 9 (item 2).
        wait_for("sentiment reported unhealthy", lambda: not dash.healthy("sentiment"), 60,
                 head_log)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(sentiment, 300)
            time.sleep(1)  # not a margin: only so the request is queued before node 2 returns
            start_node2()  # the machine comes back (a pod restarted)
            assert held.result().status_code == 200
        wait_for("sentiment healthy again", lambda: dash.healthy("sentiment"), 120, node2_log)
        assert len(dash.replicas_by_node()) == 2
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "-a", dash.url], env=env,
                       capture_output=True, timeout=120)
    finally:
        for node in reversed(nodes):
            node.stop()
        leftover = wait_for_none(lambda: ours(temp_dir), 60)
        for p in leftover:  # ours, by their session dir: end them so nothing leaks
            with contextlib.suppress(psutil.NoSuchProcess):
                names.append(" ".join(p.cmdline()[:3]))
                p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not names, f"left running after stop: {names}"


def wait_for_none(probe: Callable[[], list], timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = probe()
    return found
