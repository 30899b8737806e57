"""No process a test session starts outlives it: a session that leaks one fails, naming it,
and the leaked process is killed (tests/leftovers.py, the hook in tests/conftest.py).

The leaking session is a real pytest run in a subprocess, with this suite's hook; its leak
is a ``sleep`` that a shell starts in the background and abandons, so the orphan is no
longer pytest's descendant and only the session token finds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests import leftovers

ROOT = Path(__file__).resolve().parents[2]
# the inner session's conftest: this suite's hook, with a short grace (a leak never ends)
CONFTEST = ("import tests.leftovers\n"
            "from tests.conftest import pytest_sessionfinish  # noqa: F401\n"
            "tests.leftovers.GRACE_S = 0.5\n")

LEAKY = """
import subprocess


def test_leaks_an_orphan():
    out = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    open("leaked.pid", "w").write(out.stdout.strip())
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _session(tmp_path: Path, test: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test))
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_session_that_leaks_a_process_fails_naming_it(tmp_path):
    out = _session(tmp_path, LEAKY)
    pid = int((tmp_path / "leaked.pid").read_text())
    try:
        assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout + out.stderr
        assert "1 passed" in out.stdout
        assert "1 processes outlived the test session (killed now)" in out.stdout
        assert f"{pid} sleep: sleep 300" in out.stdout, out.stdout
        assert _gone(pid), "the leaked process was not killed"
    finally:
        if not _gone(pid):
            psutil.Process(pid).kill()


def test_a_clean_session_passes(tmp_path):
    out = _session(tmp_path, "def test_nothing():\n    assert True\n")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "outlived" not in out.stdout


def test_an_orphan_is_found_by_its_token_and_a_child_by_descent():
    token = os.environ[leftovers.MARKER]
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})  # no token
    orphan = int(subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                                capture_output=True, text=True, check=True).stdout)
    try:
        assert psutil.Process(orphan).ppid() != os.getpid()
        found = {p.pid for p in leftovers.session_processes(token)}
        assert {child.pid, orphan} <= found
        assert {child.pid, orphan} <= {p.pid for p in leftovers.survivors(token, grace_s=0.1)}
    finally:
        leftovers.kill([psutil.Process(child.pid), psutil.Process(orphan)])
    assert child.poll() is not None and _gone(orphan)
