"""The Redis of ops/k8s, started with the StatefulSet's own command, works with the gateway.

The container's shell command is run as written (only the port moved to a free one and the
bind narrowed to 127.0.0.1) with the local ``redis-server``: the password reaches Redis
through stdin and appears on no command line, a client without it is refused, the settings
are a cache's, the gateway's Redis backend, given a REDIS_URL of the shipped form, stores and
reads through it, and the process started is redis-server itself (PID 1 in the pod), which
stops on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from fusion.cache.backends import CacheUnavailable, RedisBackend
from tests.redis_server import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "k8s-test-password"


def redis_container() -> dict:
    docs = yaml.safe_load_all((ROOT / "ops/k8s/base/redis.yaml").read_text())
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    return statefulset["spec"]["template"]["spec"]["containers"][0]


def start_shipped_redis() -> tuple[int, subprocess.Popen]:
    """Run the container's command as written (port moved, bind narrowed) and wait for PING."""
    binary = redis_server_binary()
    assert binary, "redis-server is needed (the suite's Redis tests use it too)"
    container = redis_container()
    assert container["command"] == ["sh", "-c"]
    port = free_port()
    script = container["args"][0]
    assert "--port 6379" in script
    script = script.replace("--port 6379", f"--port {port} --bind 127.0.0.1")
    script = re.sub(r"exec redis-server\b", f"exec {binary}", script)
    env = os.environ | {"REDIS_PASSWORD": PASSWORD}
    proc = subprocess.Popen(["sh", "-c", script], env=env, cwd="/tmp",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return port, proc
        except redis.ConnectionError:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the shipped Redis did not start"
            time.sleep(0.05)


def answers(port: int) -> bool:
    """Whether anything accepts connections on the port (a stopped Redis refuses them)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def shipped_redis():
    port, proc = start_shipped_redis()
    yield port, proc
    proc.terminate()
    proc.wait(timeout=10)
    assert not answers(port), "the module's Redis outlived its module"


def test_redis_server_is_the_started_process_and_stops_on_sigterm():
    """``exec`` replaces the shell: the container's PID 1 is redis-server itself, so the
    SIGTERM a pod stop sends reaches Redis (a shell PID 1 ignores it and the pod waits out
    its grace period; in a pipeline here the shell would die and leave Redis running)."""
    port, proc = start_shipped_redis()
    try:
        assert psutil.Process(proc.pid).name() == "redis-server"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # Redis's own SIGTERM handler: a clean exit
        assert not answers(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_password_is_required_and_on_no_command_line(shipped_redis):
    port, proc = shipped_redis
    once = Retry(NoBackoff(), 0)  # redis-py would retry a refused AUTH for seconds
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=1, retry=once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong", socket_timeout=1, retry=once).ping()
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert PASSWORD.encode() not in cmdline and b"redis-server" in cmdline


def test_settings_are_a_caches(shipped_redis):
    port, _ = shipped_redis
    config = redis.Redis(port=port, password=PASSWORD, decode_responses=True).config_get("*")
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert int(config["maxmemory"]) == 1024 ** 3
    assert config["save"] == "" and config["appendonly"] == "no"


async def test_gateway_caches_through_it_with_the_shipped_url_form(shipped_redis):
    port, _ = shipped_redis
    example = (ROOT / "ops/k8s/base/gateway.env.example").read_text()
    shipped = re.search(r"^REDIS_URL=(.+)$", example, re.M).group(1)
    url = re.sub(r"://:[^@]*@fusion-redis:6379/",
                 f"://:{PASSWORD}@127.0.0.1:{port}/", shipped)
    assert url != shipped
    backend = RedisBackend(url, timeout_s=1.0)
    try:
        await backend.set("fusion-k8s-test:key", b"value", ttl_s=60)
        assert await backend.get("fusion-k8s-test:key") == b"value"
        assert backend.healthy
    finally:
        await backend.aclose()
    refused = RedisBackend(url.replace(PASSWORD, "wrong"), timeout_s=1.0)
    try:
        with pytest.raises(CacheUnavailable, match="AuthenticationError"):
            await refused.set("fusion-k8s-test:key", b"other", ttl_s=60)
        assert not refused.healthy  # the step cache then serves uncached
    finally:
        await refused.aclose()
