"""Find or start a PostgreSQL for tests, and give each test a database of its own.

``postgres_admin_url()``: ``$FUSION_TEST_POSTGRES_URL`` if it answers, else the machine's server
on ``127.0.0.1:5432`` (user ``postgres``, trust auth), else a private server started from
Debian's binaries (``initdb`` + ``postgres`` on a free port, trust auth) for this session and
stopped at its end. Raises ``PostgresUnavailable`` when none can be had.

``fresh_database()``: a new, empty database on that server (dropped by the caller via
``drop_database``); never share one between tests.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import psycopg

from tests.redis_server import free_port

_admin_url: str | None = None
_private: list[subprocess.Popen] = []
_private_dirs: list[str] = []


class PostgresUnavailable(RuntimeError):
    pass


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except (psycopg.Error, OSError):
        return False


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _start_private() -> str:
    bindir = _binaries()
    if bindir is None:
        raise PostgresUnavailable("no PostgreSQL answers and initdb is not installed")
    data = tempfile.mkdtemp(prefix="fusion-pg-")
    _private_dirs.append(data)
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd
        pwd.getpwnam("postgres")
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, f"{bindir}/initdb", "-D", data, "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [*run_as, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", data,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _private.append(proc)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PostgresUnavailable(f"private postgres exited with {proc.returncode}")
        if answers(url):
            return url
        time.sleep(0.1)
    raise PostgresUnavailable("private postgres did not answer in 30 s")


def postgres_admin_url() -> str:
    """A URL of a PostgreSQL superuser connection (see the module docstring)."""
    global _admin_url
    if _admin_url is not None:
        return _admin_url
    for url in (os.environ.get("FUSION_TEST_POSTGRES_URL"),
                "postgresql://postgres@127.0.0.1:5432/postgres"):
        if url and answers(url):
            _admin_url = url
            return url
    _admin_url = _start_private()
    return _admin_url


def fresh_database(prefix: str = "fusion_test") -> str:
    """Create an empty database; its URL (``postgresql://...``)."""
    admin = postgres_admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    admin = postgres_admin_url()
    name = url.rsplit("/", 1)[1]
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@atexit.register
def stop_all() -> None:
    """Stop the private server this module started, if any."""
    for proc in _private:
        with contextlib.suppress(Exception):
            proc.terminate()
            proc.wait(10)
    for data in _private_dirs:
        shutil.rmtree(data, ignore_errors=True)
