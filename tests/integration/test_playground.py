"""The playground in a real Chromium against the shared integration gateway (real Serve app,
tiny and packaged models): the catalog, uploads, live progress, the cache badge, 422s next
to their input, microphone recording, and the README's screenshots.

``FUSION_PLAYGROUND_SHOTS=docs`` writes the screenshots into ``docs/`` (the README's
figures); otherwise they go to a temporary folder and are only checked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.fakes import png

pytestmark = pytest.mark.serve

BUILT_IN = ("caption_then_classify", "text_to_image", "transcribe_then_classify",
            "clip_zero_shot", "fused_image_labels", "embed")


@pytest.fixture
def page(browser, gateway_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    p = context.new_page()
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.set_default_timeout(120_000)  # a cold model on two shared cores
    yield p
    context.close()
    assert not errors, errors


def add_labels(page, *labels: str) -> None:
    page.focus("#in-labels")
    for label in labels:
        page.keyboard.type(label)
        page.keyboard.press("Enter")


def test_page_lists_the_built_in_pipelines_and_models(page, gateway_url):
    page.goto(gateway_url)
    page.locator("#pipeline-list button", has_text="embed").wait_for()
    listed = page.locator("#pipeline-list button").all_inner_texts()
    assert {text.split("\n")[0] for text in listed} >= set(BUILT_IN)
    captioner = page.locator('#model-list li[data-model="captioner"]')
    assert "caption" in captioner.inner_text()
    page.click('button[data-task="captioner/caption"]')
    meta = page.inner_text("#target-meta")
    assert "fingerprint" in meta and "tiny:caption" in meta


def test_caption_then_classify_shows_a_caption_and_two_bars(page, gateway_url):
    page.goto(f"{gateway_url}/#pipeline/caption_then_classify")
    page.set_input_files("#in-image", files=[{"name": "green.png", "mimeType": "image/png",
                                              "buffer": png((10, 200, 10), 32)}])
    add_labels(page, "cat", "dog")
    page.click("#run")
    caption = page.locator('.output[data-output="caption"] .text-output')
    caption.wait_for()
    assert caption.inner_text().strip()
    bars = page.locator('.output[data-output="labels"] .bar')
    assert bars.count() == 2
    assert {bars.nth(i).get_attribute("aria-label") for i in range(2)} == {"cat", "dog"}
    for step in ("caption", "classify"):
        assert page.get_attribute(f'.node[data-step="{step}"]', "data-state") == "done"


def test_text_to_image_shows_progress_then_an_image_then_the_cached_badge(page, gateway_url):
    page.goto(f"{gateway_url}/#pipeline/text_to_image")
    page.fill("#in-prompt", f"a lighthouse {uuid.uuid4().hex[:8]}")  # a miss, whatever ran before
    page.fill("#in-steps", "3")
    page.click("#run")
    page.locator('.output[data-output="image"] img').wait_for()
    progress = page.locator('.node[data-step="generate"] progress')
    assert progress.get_attribute("max") == "3"
    assert progress.evaluate("p => p.value") == 3
    events = page.locator("#events li").evaluate_all("els => els.map(e => e.dataset.event)")
    assert events.count("progress") == 3
    assert events.index("progress") < events.index("step") < events.index("result")
    generate = page.locator('.node[data-step="generate"]')
    assert generate.locator(".badge.cached").count() == 0
    page.click("#rerun")
    generate.locator(".badge.cached").wait_for()
    assert "cache hit" in page.inner_text("#status")
    assert page.get_attribute('.node[data-step="caption"]', "data-state") == "skipped"
    page.check("#no-cache")  # recompute: no badge, progress again
    page.click("#run")
    page.locator('.node[data-step="generate"] .badge.state-done').wait_for()
    assert generate.locator(".badge.cached").count() == 0
    assert page.locator('#events li[data-event="progress"]').count() == 3


def test_corrupt_upload_shows_the_422_next_to_the_image_input(page, gateway_url):
    page.goto(f"{gateway_url}/#pipeline/caption_then_classify")
    page.set_input_files("#in-image", files=[{"name": "broken.png", "mimeType": "image/png",
                                              "buffer": b"\x89PNG but not really"}])
    add_labels(page, "cat", "dog")
    page.click("#run")
    error = page.locator("#err-image")
    error.wait_for()
    text = error.inner_text()
    assert text.startswith("422 bad_input:") and "image" in text
    assert page.get_attribute("#in-image", "aria-invalid") == "true"
    assert page.get_attribute('.node[data-step="caption"]', "data-state") == "error"
    assert page.locator("#outputs .output").count() == 0


def test_microphone_recording_is_sent_as_wav_and_transcribed(page, gateway_url):
    """Chromium's fake microphone (a beep) through MediaRecorder, converted to WAV in the
    page, accepted by the real Whisper replica."""
    page.context.grant_permissions(["microphone"])
    page.goto(f"{gateway_url}/#model/whisper/transcribe")
    record = page.locator("#field-audio button", has_text="Record")
    record.click()
    stop = page.locator("#field-audio button", has_text="Stop recording")
    stop.wait_for()
    page.wait_for_timeout(1200)  # a second of audio: the recording's length, not a race
    stop.click()
    page.locator("#field-audio .hint", has_text="recording.wav").wait_for()
    page.click("#run")
    page.locator('.output[data-output="text"]').wait_for()
    assert page.locator("#run-error").is_hidden()


def test_fused_image_labels_screenshots(page, gateway_url, tmp_path):
    out = Path(os.environ.get("FUSION_PLAYGROUND_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.goto(f"{gateway_url}/#pipeline/fused_image_labels")
    page.set_input_files("#in-image", files=[{"name": "sky.png", "mimeType": "image/png",
                                              "buffer": png((40, 110, 230), 64)}])
    add_labels(page, "sky", "grass", "fire")
    page.click("#run")
    page.locator('.output[data-output="caption_labels"] .bar').nth(2).wait_for()
    for step in ("clip", "caption", "classify", "fused"):
        assert page.get_attribute(f'.node[data-step="{step}"]', "data-state") == "done"
    assert page.locator('.output[data-output="labels"] .bar').count() == 3
    page.screenshot(path=str(out / "playground-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 780})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.locator("#catalog-details").evaluate("d => !d.open")  # folded on a phone
    page.locator("#outputs").scroll_into_view_if_needed()
    page.screenshot(path=str(out / "playground-360.png"), full_page=True)
    for name in ("playground-desktop.png", "playground-360.png"):
        assert (out / name).stat().st_size > 10_000
