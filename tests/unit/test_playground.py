"""The playground page: served from the package, and driven in a real Chromium against an
in-process gateway (create_api over fake models, served by uvicorn; no Ray) with API keys
configured: the key flow, 503s with Retry-After, unknown stream events, a step running from
its ``start`` event, keyboard use, the camera and a 360 px viewport. The model-backed runs are
in tests/integration/test_playground.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from fusion.cache import StepCache
from fusion.config import CacheConfig
from fusion.core.gateway import Gateway
from fusion.core.keys import hash_key
from fusion.http.app import create_api
from tests.browser import serve_app
from tests.fakes import FakeModels, fake_config, png

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "fusion/http/playground/static"
KEY = "playground-key"


def gateway() -> Gateway:
    cache = CacheConfig()
    config = fake_config(auth={"key_hashes": [hash_key(KEY)]}, cache=cache.model_dump(),
                         router={"pipeline_max_in_flight": {"text_to_image": 1}})
    # generate takes 20 s over its steps: long enough to hold text_to_image's one slot
    return Gateway(config, FakeModels(delays={"generate": 20}), StepCache.from_config(cache))


@pytest.fixture(scope="module")
def url():
    with serve_app(create_api(lambda gw=gateway(): gw)) as base:
        yield base


@pytest.fixture
async def page(browser, url):
    """A fresh browser context (empty localStorage) with the key stored, on the page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(f"localStorage.setItem('fusion.apiKey', {KEY!r})")
    errors: list[str] = []
    p = await context.new_page()
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    await context.close()
    assert not errors, errors  # no uncaught exception in the page's scripts


def png_file(name: str, color: tuple[int, int, int]) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": png(color, 16)}


def test_page_and_assets_come_from_the_package(url):
    html = httpx.get(f"{url}/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["content-security-policy"]
    assert httpx.get(f"{url}/playground").text == html.text
    refs = re.findall(r'(?:src|href)="(playground/static/[^"]+)"', html.text)
    assert {"playground/static/app.js", "playground/static/style.css"} <= set(refs)
    for ref in refs:  # relative: from / and /playground alike, and under a path prefix
        r = httpx.get(f"{url}/{ref}")
        assert r.status_code == 200, ref
        assert httpx.get(f"{url}/{ref}", headers={"If-None-Match": r.headers["etag"]}
                         ).status_code == 304
    assert httpx.get(f"{url}/playground/static/../api.py").status_code == 404
    assert httpx.get(f"{url}/playground/static/nope.js").status_code == 404
    codes = httpx.get(f"{url}/playground/error-codes.json").json()
    assert codes["bad_input"]["status"] == 422 and codes["overloaded"]["status"] == 503


def test_assets_load_nothing_from_elsewhere_and_ship_in_the_wheel():
    files = sorted(p.name for p in STATIC.iterdir())
    assert {"index.html", "app.js", "http.js", "render.js", "widgets.js", "style.css"} <= set(files)
    for name in files:
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|(?:src|href)=\"//|@import|url\(", text), name
        imports = re.findall(r'from "\./([^"]+)"', text)
        assert all((STATIC / i).is_file() for i in imports), (name, imports)
    project = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; we support 3.10)
    assert re.search(r'^fusion = \[.*"http/playground/static/\*"', project, re.M)
    assert re.search(r'^dev = \[[^\]]*"playwright', project, re.M)


async def test_missing_key_shows_401_next_to_the_key_field(browser, url):
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(url)
        error = page.locator("#err-authorization")
        await error.wait_for()
        text = await error.inner_text()
        assert "401" in text and "missing API key" in text
        assert await page.get_attribute("#api-key", "aria-invalid") == "true"
        await page.fill("#api-key", "wrong")
        await page.press("#api-key", "Enter")  # change event: stored, catalog reloaded
        await page.locator("#err-authorization", has_text="invalid API key").wait_for()
        await page.fill("#api-key", KEY)
        await page.press("#api-key", "Tab")
        await page.locator("#pipeline-list button", has_text="text_to_image").wait_for()
        assert await page.locator("#err-authorization").is_hidden()
        await page.reload()  # the key is kept in localStorage
        await page.locator("#pipeline-list button", has_text="embed").wait_for()
        assert await page.input_value("#api-key") == KEY
    finally:
        await context.close()


async def test_refused_run_shows_retry_after(page, url):
    """text_to_image admits one run at a time: a second one is refused with Retry-After."""
    await page.goto(f"{url}/#pipeline/text_to_image")
    await page.fill("#in-prompt", "a slow lighthouse")
    await page.fill("#in-steps", "40")
    await page.click("#run")
    await page.locator('.node[data-step="generate"] progress').wait_for()  # the slot is held
    other = await page.context.new_page()
    await other.goto(f"{url}/#pipeline/text_to_image")
    await other.fill("#in-prompt", "another")
    await other.click("#run")
    banner = other.locator("#run-error")
    await banner.wait_for()
    assert re.search(r"503 overloaded: .* retry after \d+ s", await banner.inner_text())
    assert await other.locator("#run").is_enabled()
    await page.close()  # leaving cancels the slow run


async def test_unknown_and_token_events_render(page, url):
    """A stream may carry events this page does not know (chat tokens): tokens are shown
    as text, anything else lands in the event log, and the result still renders."""
    body = ("event: step\ndata: {\"step\":\"generate\",\"ms\":3.0,\"cached\":false,"
            "\"coalesced\":false,\"skipped\":false}\n\n"
            "event: token\ndata: {\"text\":\"Hel\"}\n\n"
            "event: token\ndata: {\"text\":\"lo\"}\n\n"
            "event: novelty\ndata: {\"anything\":[1,2]}\n\n"
            "event: result\ndata: {\"outputs\":{\"image\":null,\"caption\":\"ok\"},"
            "\"types\":{\"image\":\"image\",\"caption\":\"text\"},\"steps\":{},\"cache\":\"miss\","
            "\"request_id\":\"r1\"}\n\n")
    await page.route("**/v1/pipelines/text_to_image?stream=true", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    await page.goto(f"{url}/#pipeline/text_to_image")
    await page.fill("#in-prompt", "hi")
    await page.click("#run")
    await page.locator('.output[data-output="caption"]', has_text="ok").wait_for()
    assert await page.inner_text("#tokens") == "Hello"
    assert await page.locator('#events li[data-event="novelty"]').count() == 1
    assert await page.get_attribute('.node[data-step="generate"]', "data-state") == "done"


async def test_a_slow_step_is_running_from_its_start_event(page):
    """The gateway's ``start`` event marks the step running while the model works (the fake
    captioner takes a minute here), with the time so far; the step after it waits, pending."""
    gw = Gateway(fake_config(), FakeModels(delays={"caption": 60}))
    with serve_app(create_api(lambda: gw)) as base:
        await page.goto(f"{base}/#pipeline/caption_then_classify")
        await page.set_input_files("#in-image", files=[png_file("s.png", (5, 5, 5))])
        await page.fill("#in-labels", "a,b")
        await page.click("#run")
        start = page.locator('#events li[data-event="start"]')
        await start.wait_for(state="attached")  # the event log is folded
        assert '"step":"caption","model":"captioner","task":"caption"' in \
            await start.text_content()
        caption = page.locator('.node[data-step="caption"]')
        assert await caption.get_attribute("data-state") == "running"
        assert await caption.locator(".badge.state-running").inner_text() == "running"
        elapsed = caption.locator(".badge.elapsed")  # how long it has run, counting up
        first = await elapsed.inner_text()
        await page.wait_for_function(  # a function, not an expression: the CSP forbids eval
            """(first) => document.querySelector('.node[data-step="caption"] .badge.elapsed')
                .textContent !== first""", arg=first)
        assert await page.get_attribute('.node[data-step="classify"]', "data-state") == \
            "pending"
        assert await page.locator('#events li[data-event="step"]').count() == 0
        await page.close()  # leaving cancels the slow run


@pytest.mark.parametrize(("events", "classify"), [
    (("start", "step"), "pending"),  # the gateway sends start: classify has not begun
    (("step",), "running"),  # an older gateway: inferred from its needs being done
])
async def test_running_state_from_start_events_else_inferred(page, url, events, classify):
    """The same moment of a run (caption done, the stream cut) from a gateway that sends
    ``start`` and from one that does not."""
    data = {"start": '{"step":"caption","model":"captioner","task":"caption"}',
            "step": '{"step":"caption","ms":2.0,"cached":false,"coalesced":false,'
                    '"skipped":false}'}
    body = "".join(f"event: {e}\ndata: {data[e]}\n\n" for e in events)
    await page.route("**/v1/pipelines/caption_then_classify?stream=true",
                     lambda route: route.fulfill(status=200, body=body, headers={
                         "Content-Type": "text/event-stream"}))
    await page.goto(f"{url}/#pipeline/caption_then_classify")
    await page.set_input_files("#in-image", files=[png_file("c.png", (1, 1, 1))])
    await page.fill("#in-labels", "a,b")
    await page.click("#run")
    await page.locator("#run-error", has_text="the stream ended without a result").wait_for()
    assert await page.get_attribute('.node[data-step="caption"]', "data-state") == "done"
    assert await page.get_attribute('.node[data-step="classify"]', "data-state") == classify


async def test_keyboard_only_run_and_copied_commands(page, url):
    await page.goto(url)
    await page.locator("#pipeline-list button").first.wait_for()
    button = page.locator("#pipeline-list button", has_text="clip_zero_shot")
    for _ in range(30):  # Tab through the page until the pipeline's button has focus
        await page.keyboard.press("Tab")
        if await button.evaluate("b => b === document.activeElement"):
            break
    else:
        raise AssertionError("the pipeline buttons are not reachable with Tab")
    await page.keyboard.press("Enter")
    await page.locator("#field-image").wait_for()
    await page.set_input_files("#in-image", files=[png_file("red.png", (250, 0, 0))])
    await page.focus("#in-labels")
    for label in ("red", "blue"):
        await page.keyboard.type(label)
        await page.keyboard.press("Enter")  # a chip, not a submit
    assert await page.locator(".chip").count() == 2
    assert await page.locator(".bars").count() == 0
    await page.focus("#run")
    await page.keyboard.press("Enter")
    await page.locator(".bars .bar").nth(1).wait_for()
    cli = await page.text_content("#cmd-cli")
    assert "run clip_zero_shot --image 'red.png' --labels 'red,blue'" in cli
    curl = await page.text_content("#cmd-curl")
    assert "-F 'image=@red.png'" in curl and "Bearer $FUSION_API_KEY" in curl
    sdk = await page.text_content("#cmd-sdk")
    assert 'fusion.run("clip_zero_shot", image="red.png", labels=["red", "blue"])' in sdk
    assert KEY not in curl + cli + sdk  # the key is never copied


async def test_usable_at_360_px(page, url):
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.goto(f"{url}/#pipeline/caption_then_classify")
    assert await page.locator("#catalog-details").evaluate("d => !d.open")
    await page.set_input_files("#in-image", files=[png_file("g.png", (0, 200, 0))])
    await page.fill("#in-labels", "a rather long label, another rather long label")
    await page.click("#run")
    await page.locator(".bars .bar").nth(1).wait_for()
    await page.click("#commands summary")
    await page.click("#event-log summary")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    box = await page.locator("#run").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360


async def test_camera_capture_is_sent_as_png(page, url):
    """Chromium's fake camera: Camera shows the stream, Capture turns a frame into a PNG
    (the fake captioner refuses anything else), and the run succeeds."""
    await page.context.grant_permissions(["camera"])
    await page.goto(f"{url}/#pipeline/caption_then_classify")
    await page.click("#field-image button:has-text('Camera')")
    await page.locator("#field-image video").wait_for()
    await page.wait_for_function(  # a function, not an expression: the CSP forbids eval
        "() => document.querySelector('#field-image video').videoWidth > 0")
    await page.click("#field-image button:has-text('Capture')")
    await page.locator("#field-image .hint", has_text="camera.png").wait_for()
    await page.fill("#in-labels", "a,b")
    await page.click("#run")
    await page.locator('.output[data-output="caption"]', has_text="an image of").wait_for()
    assert await page.locator("#field-image video").is_hidden()  # the camera was released


async def test_drop_and_paste_fill_the_image_input(page, url):
    """Drag-and-drop onto the image zone and a pasted image (the events a browser sends,
    carrying a real File) both become the uploaded image."""
    await page.goto(f"{url}/#pipeline/caption_then_classify")
    await page.locator("#field-image").wait_for()
    make = """([bytes, name]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
        return dt; }"""
    dropped = await page.evaluate_handle(make, [list(png((1, 2, 3), 12)), "dropped.png"])
    await page.dispatch_event("#field-image .drop", "drop", {"dataTransfer": dropped})
    await page.locator("#field-image .hint", has_text="dropped.png").wait_for()
    assert "--image 'dropped.png'" in await page.text_content("#cmd-cli")
    pasted = await page.evaluate_handle(make, [list(png((9, 9, 9), 12)), "pasted.png"])
    await page.evaluate("""(dt) => document.dispatchEvent(
        new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}))""", pasted)
    await page.locator("#field-image .hint", has_text="pasted.png").wait_for()
    await page.fill("#in-labels", "x,y")
    await page.click("#run")
    await page.locator('.output[data-output="caption"]', has_text="an image of").wait_for()


async def test_dark_when_the_system_is_dark(page, url):
    await page.emulate_media(color_scheme="dark")
    await page.goto(url)
    dark = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    await page.emulate_media(color_scheme="light")
    light = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")

    def brightness(css: str) -> int:
        return sum(int(v) for v in re.findall(r"\d+", css)[:3])

    assert brightness(dark) < 150 < 600 < brightness(light)


async def test_a_starting_gateway_shows_its_503_then_the_catalog(browser):
    """While the router is starting every route answers 503 with Retry-After; the page
    says so and asks again when told, with no reload."""
    from fusion.errors import Overloaded

    ready: list[Gateway] = []

    def get_gateway() -> Gateway:
        if not ready:
            raise Overloaded("the gateway is still starting; retry shortly", retry_after_s=1.0)
        return ready[0]

    gw = Gateway(fake_config(), FakeModels())
    with serve_app(create_api(get_gateway)) as base:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(base)
            banner = page.locator("#catalog-error")
            await banner.wait_for()
            assert "503 overloaded: the gateway is still starting" in await banner.inner_text()
            assert "retry after 1 s" in await banner.inner_text()
            ready.append(gw)
            await page.locator("#pipeline-list button", has_text="embed").wait_for()
            assert await banner.is_hidden()
        finally:
            await context.close()


async def test_works_under_a_path_prefix(page):
    """Behind a proxy or Serve route prefix (the SDK allows ``http://host/fusion``) the page
    finds its assets and the API relative to itself, and copies the prefixed URL."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    gw = gateway()
    with serve_app(Starlette(routes=[Mount("/fusion", app=create_api(lambda: gw))])) as base:
        await page.goto(f"{base}/fusion/#pipeline/embed")
        await page.fill("#in-text", "prefixed")
        await page.click("#run")
        await page.locator(".output .embedding", has_text="8 dimensions").wait_for()
        assert f"'{base}/fusion/v1/pipelines/embed'" in await page.text_content("#cmd-curl")
