"""Fixtures shared by the unit and integration packages."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium per test session (the playground tests open pages in it), with
    Chromium's fake camera and microphone, so capture and recording run for real."""
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium_path

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield chromium
        finally:
            chromium.close()
