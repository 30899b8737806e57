"""Processes a test session started that are still running when it ends.

A server a test forgets to stop keeps its port, memory and CPU after the suite (a
``redis-server`` did, from a shell pipeline that lost track of it), and the next session on the
same machine meets it. tests/conftest.py marks the session at start (an environment variable
with a token of its own, which every process started from then on inherits, even one that
left the pytest process tree when its parent died) and, at the end, fails the session naming
every process still running that carries the token or descends from pytest, then kills them.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import psutil

MARKER = "FUSION_TEST_SESSION"
GRACE_S = 15.0  # how long processes already told to stop get (Ray's exit over a few seconds)


def mark_session() -> str:
    """Give this process (and so everything it starts from now on) a fresh session token."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[MARKER] = token
    return token


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_processes(token: str) -> list[psutil.Process]:
    """Running processes of this session: pytest's descendants, and any process whose
    environment carries ``token`` (an orphan is no longer a descendant, but keeps it)."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter():
        if proc.pid in found or proc.pid == me.pid:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(MARKER) == token:
                found[proc.pid] = proc
    return [p for p in found.values() if _running(p)]


def describe(proc: psutil.Process) -> str:
    """``pid name: command line`` (shortened), for a report line."""
    try:
        cmdline = " ".join(proc.cmdline()) or proc.name()
        return f"{proc.pid} {proc.name()}: {cmdline[:160]}"
    except psutil.Error:
        return f"{proc.pid} (gone)"


def survivors(token: str, grace_s: float | None = None) -> list[psutil.Process]:
    """The session's processes still running after ``grace_s`` (default ``GRACE_S``) for
    those already told to stop."""
    grace_s = GRACE_S if grace_s is None else grace_s
    procs = session_processes(token)
    if not procs:
        return []
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    return [p for p in alive if _running(p)]


def kill(procs: list[psutil.Process], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``timeout_s``."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
