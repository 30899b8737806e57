"""Find or start a Redis for tests.

``redis_url()``: ``$REDIS_URL`` if it answers PING, else ``redis://127.0.0.1:6379/0`` if that
answers, else a ``redis-server`` started on a free port for this test session (stopped at the
session's end by tests/conftest.py, or at exit). Raises ``RedisUnavailable`` when none can be
had (no binary): callers skip.

``RedisServer``: a dedicated throwaway ``redis-server`` on a free port, for tests that stop,
restart or pause it. Never use ``FLUSHALL``/``FLUSHDB`` on a shared server: give each test
its own namespace instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import redis

_started: list[RedisServer] = []
_url: str | None = None


class RedisUnavailable(RuntimeError):
    pass


def ping(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, for a server a test starts later.

    Chosen between Ray's worker ports (10002-19999) and the kernel's ephemeral range: a port
    the kernel hands out (bind to 0) is released here and can be handed to any process that
    binds 0 before our server binds it — Ray starts dozens of such processes in between (seen
    in CI: the Serve proxy of tests/e2e/test_cluster.py failed to bind its port)."""
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randrange(20000, low) if low > 20001 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port between 20000 and the ephemeral range")


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None


class RedisServer:
    """A dedicated ``redis-server`` subprocess (no persistence) that tests may stop and start."""

    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RedisUnavailable("redis-server is not installed")
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="fusion-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir,
             "--loglevel", "warning", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self not in _started:
            _started.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self.proc.returncode} "
                                       f"on port {self.port}")
            if ping(self.url, timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server on port {self.port} did not answer in {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_url() -> str:
    """A Redis URL that answers PING (see the module docstring); cached per process."""
    global _url
    if _url is not None and ping(_url):
        return _url
    candidates = [os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/0"]
    for url in candidates:
        if url and ping(url):
            _url = url
            return url
    _url = RedisServer().start().url
    return _url


@atexit.register
def stop_all() -> None:
    """Stop every server this module started (at exit, or at the end of a test session)."""
    for server in _started:
        with contextlib.suppress(Exception):
            server.stop()
        with contextlib.suppress(Exception):
            shutil.rmtree(server.dir, ignore_errors=True)
