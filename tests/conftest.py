"""Fixtures shared by the unit and integration packages."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium per test session (the playground tests open pages in it)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium_path

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path())
        try:
            yield chromium
        finally:
            chromium.close()
