"""Fixtures shared by the unit and integration packages, and the resource markers.

Each test is marked with the resources it needs (``browser``, ``redis``, ``serve``, ``models``;
registered in pyproject.toml), so a contributor without Chromium or Redis, or without the
minutes a Serve app takes, runs ``-m "not browser and not serve"``. Most marks follow from
the fixtures a test uses (below); a module that reaches a resource without such a fixture says
so itself with ``pytestmark``.
"""

from __future__ import annotations

import pytest

# fixture → the resource it brings (a test using it, directly or through another fixture)
RESOURCE_FIXTURES = {
    "browser": "browser",  # Chromium (tests/browser.py); the playground's ``page`` uses it
    "shared_redis_url": "redis",  # the unit tests' shared Redis
    "shipped_redis": "redis",  # test_k8s_redis: the redis-server of ops/k8s
    "gateway_url": "serve",  # the integration package's Serve application
    "gateway_config": "redis",  # ... whose cache is the shared Redis
    "llm": "models",  # the real tiny LLM, loaded in-process
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
    if callspec is not None and any(isinstance(v, str) and v == "redis"
                                    for v in callspec.params.values()):
        found.add("redis")
    found |= {m.name for m in item.iter_markers() if m.name in IMPLIED}
    for resource in list(found):
        found.update(IMPLIED.get(resource, ()))
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for resource in sorted(resources_of(item) - have):
            item.add_marker(resource)


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
