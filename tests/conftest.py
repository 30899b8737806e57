"""Fixtures shared by the unit and integration packages, the resource markers, and the check
that no process the session started outlives it (tests/leftovers.py).

Each test is marked with the resources it needs (``browser``, ``redis``, ``serve``, ``models``;
registered in pyproject.toml), so a contributor without Chromium or Redis, or without the
minutes a Serve app takes, runs ``-m "not browser and not serve"``. Most marks follow from
the fixtures a test uses (below); a module that reaches a resource without such a fixture says
so itself with ``pytestmark``.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests import leftovers, postgres_server, redis_server

# Durable data of the gateways tests build (issued keys, usage of keyed requests) lands in a
# folder of this session, never in the developer's ~/.local/share/fusion.
os.environ.setdefault("FUSION_DATA_DIR", tempfile.mkdtemp(prefix="fusion-test-data-"))

SESSION = leftovers.mark_session()
# Durable data a test writes without naming a database (the default SQLite file: recorded
# fused answers, fusion profiles) goes to a folder of this session, never the user's own.
os.environ.setdefault("FUSION_DATA_DIR", tempfile.mkdtemp(prefix="fusion-test-data-"))

# fixture → the resource it brings (a test using it, directly or through another fixture)
RESOURCE_FIXTURES = {
    "browser": "browser",  # Chromium (tests/browser.py); the playground's ``page`` uses it
    "shared_redis_url": "redis",  # the unit tests' shared Redis
    "shipped_redis": "redis",  # test_k8s_redis: the redis-server of ops/k8s
    "gateway_url": "serve",  # the integration package's Serve application
    "serve_url": "serve",
    "embedded_url": "models",  # the embedded runtime: every model in one process
    "gateway_config": "redis",  # ... whose cache is the shared Redis
    "tenants_database": "postgres",  # ... whose keys and usage are on PostgreSQL
    "llm": "models",  # the real tiny LLM, loaded in-process
    "postgres_url": "postgres",  # a fresh database on a real PostgreSQL (tests/postgres_server.py)
}
# A Serve app of this gateway always loads its models (tiny or packaged).
IMPLIED = {"serve": ("models",)}


def resources_of(item: pytest.Item) -> set[str]:
    """The resources ``item`` needs: from its fixtures, from a ``"redis"`` parameter (the
    cache tests run each case on ``memory`` and ``redis``: only the latter needs a server),
    and from marks it already carries."""
    found = {RESOURCE_FIXTURES[f] for f in getattr(item, "fixturenames", ())
             if f in RESOURCE_FIXTURES}
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for value in callspec.params.values():
            if isinstance(value, str) and value in ("redis", "postgres"):
                found.add(value)
    found |= {m.name for m in item.iter_markers() if m.name in IMPLIED}
    for resource in list(found):
        found.update(IMPLIED.get(resource, ()))
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for resource in sorted(resources_of(item) - have):
            item.add_marker(resource)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session, naming them, if processes it started are still running (then kill
    them, so the next session does not meet them). The private Redis tests/redis_server.py
    started for the session is stopped first: it lives as long as the session, by design."""
    redis_server.stop_all()
    postgres_server.stop_all()
    left = leftovers.survivors(SESSION)
    if not left:
        return
    lines = [leftovers.describe(p) for p in left]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", f"{len(left)} processes outlived the test session (killed now)",
                           red=True)
        for line in lines:
            reporter.write_line(line)
    leftovers.kill(left)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def postgres_url():
    """A fresh, empty database on a real PostgreSQL, dropped after the test."""
    url = postgres_server.fresh_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """Each durable-store test runs on both stores: a SQLite file and a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fusion.db'}"
        return
    url = postgres_server.fresh_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
async def browser():
    """One headless Chromium per test session (the playground tests open pages in it), with
    Chromium's fake camera and microphone, so capture and recording run for real.

    Playwright's async API, on the session's event loop: its sync API would keep a loop
    running in this thread for the whole session, and every async test after it would fail.
    """
    from playwright.async_api import async_playwright

    from tests.browser import chromium_path

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path(), args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield chromium
        finally:
            await chromium.close()
