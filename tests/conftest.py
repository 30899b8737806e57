"""Fixtures shared by the unit and integration packages."""

from __future__ import annotations

import pytest


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
