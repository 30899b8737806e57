"""Fixtures shared by the unit and integration packages, and the check that no process the
session started outlives it (tests/leftovers.py)."""

from __future__ import annotations

import pytest

from tests import leftovers, redis_server

SESSION = leftovers.mark_session()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session, naming them, if processes it started are still running (then kill
    them, so the next session does not meet them). The private Redis tests/redis_server.py
    started for the session is stopped first: it lives as long as the session, by design."""
    redis_server.stop_all()
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
