"""The playground in a real Chromium against the shared integration gateway (real Serve app,
tiny and packaged models): the catalog, uploads, live progress, the cache badge, 422s next
to their input, microphone recording, and the README's screenshots.

``FUSION_PLAYGROUND_SHOTS=docs`` writes the screenshots into ``docs/`` (the README's
figures); otherwise they go to a temporary folder and are only checked.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest

from tests.fakes import png

pytestmark = pytest.mark.serve

BUILT_IN = ("caption_then_classify", "text_to_image", "transcribe_then_classify",
            "clip_zero_shot", "fused_image_labels", "embed")


@pytest.fixture
async def page(browser, gateway_url):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    p = await context.new_page()
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.set_default_timeout(120_000)  # a cold model on two shared cores
    yield p
    await context.close()
    assert not errors, errors


def png_file(name: str, color: tuple[int, int, int], size: int = 32) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": png(color, size)}


async def add_labels(page, *labels: str) -> None:
    await page.focus("#in-labels")
    for label in labels:
        await page.keyboard.type(label)
        await page.keyboard.press("Enter")


async def state_of(page, step: str) -> str | None:
    return await page.get_attribute(f'.node[data-step="{step}"]', "data-state")


async def test_page_lists_the_built_in_pipelines_and_models(page, gateway_url):
    await page.goto(gateway_url)
    await page.locator("#pipeline-list button", has_text="embed").wait_for()
    listed = await page.locator("#pipeline-list button").all_inner_texts()
    assert {text.split("\n")[0] for text in listed} >= set(BUILT_IN)
    captioner = page.locator('#model-list li[data-model="captioner"]')
    assert "caption" in await captioner.inner_text()
    await page.click('button[data-task="captioner/caption"]')
    meta = await page.inner_text("#target-meta")
    assert "fingerprint" in meta and "tiny:caption" in meta


async def test_caption_then_classify_shows_a_caption_and_two_bars_clip_too(page, gateway_url):
    await page.goto(f"{gateway_url}/#pipeline/caption_then_classify")
    await page.set_input_files("#in-image", files=[png_file("green.png", (10, 200, 10))])
    await add_labels(page, "cat", "dog")
    await page.click("#run")
    caption = page.locator('.output[data-output="caption"] .text-output')
    await caption.wait_for()
    assert (await caption.inner_text()).strip()
    bars = page.locator('.output[data-output="labels"] .bar')
    assert await bars.count() == 2
    assert {await bars.nth(i).get_attribute("aria-label") for i in range(2)} == {"cat", "dog"}
    for step in ("caption", "classify"):
        assert await state_of(page, step) == "done"
    await page.click('#pipeline-list button[data-pipeline="clip_zero_shot"]')
    await page.set_input_files("#in-image", files=[png_file("green.png", (10, 200, 10))])
    assert await page.input_value("#in-template") == "a photo of a {}"  # the default
    await add_labels(page, "green", "red")
    await page.click("#run")
    await page.locator('.output[data-output="labels"] .bar').nth(1).wait_for()


async def test_text_to_image_shows_progress_then_an_image_then_the_cached_badge(
        page, gateway_url):
    await page.goto(f"{gateway_url}/#pipeline/text_to_image")
    await page.fill("#in-prompt", f"a lighthouse {uuid.uuid4().hex[:8]}")  # a miss
    await page.fill("#in-steps", "3")
    await page.click("#run")
    await page.locator('.output[data-output="image"] img').wait_for()
    progress = page.locator('.node[data-step="generate"] progress')
    assert await progress.get_attribute("max") == "3"
    assert await progress.evaluate("p => p.value") == 3
    events = await page.locator("#events li").evaluate_all(
        "els => els.map(e => e.dataset.event)")
    assert events.count("progress") == 3
    assert events.index("start") < events.index("progress") < events.index("step") < \
        events.index("result")
    generate = page.locator('.node[data-step="generate"]')
    assert await generate.locator(".badge.cached").count() == 0
    await page.click("#rerun")
    await generate.locator(".badge.cached").wait_for()
    assert "cache hit" in await page.inner_text("#status")
    assert await state_of(page, "caption") == "skipped"
    await page.check("#no-cache")  # recompute: no badge, progress again
    await page.click("#run")
    await generate.locator(".badge.state-done").wait_for()
    assert await generate.locator(".badge.cached").count() == 0
    assert await page.locator('#events li[data-event="progress"]').count() == 3


async def test_corrupt_upload_shows_the_422_next_to_the_image_input(page, gateway_url):
    await page.goto(f"{gateway_url}/#pipeline/caption_then_classify")
    await page.set_input_files("#in-image", files=[{
        "name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG but not really"}])
    await add_labels(page, "cat", "dog")
    await page.click("#run")
    error = page.locator("#err-image")
    await error.wait_for()
    text = await error.inner_text()
    assert text.startswith("422 bad_input:") and "image" in text
    assert await page.get_attribute("#in-image", "aria-invalid") == "true"
    assert await state_of(page, "caption") == "error"
    assert await page.locator("#outputs .output").count() == 0


async def test_microphone_recording_is_sent_as_wav_and_transcribed(page, gateway_url):
    """Chromium's fake microphone (a beep) through MediaRecorder, converted to WAV in the
    page, accepted by the real Whisper replica."""
    await page.context.grant_permissions(["microphone"])
    await page.goto(f"{gateway_url}/#model/whisper/transcribe")
    await page.locator("#field-audio button", has_text="Record").click()
    stop = page.locator("#field-audio button", has_text="Stop recording")
    await stop.wait_for()
    await page.wait_for_timeout(1200)  # a second of audio: the recording's length, not a race
    await stop.click()
    await page.locator("#field-audio .hint", has_text="recording.wav").wait_for()
    await page.click("#run")
    await page.locator('.output[data-output="text"]').wait_for()
    assert await page.locator("#run-error").is_hidden()


async def test_speech_embedding_and_transcription_render(page, gateway_url, tmp_path):
    """The other output kinds: an audio player (Piper), an embedding (MiniLM), and the
    spoken sentence back through transcribe_then_classify from an uploaded WAV."""
    await page.goto(f"{gateway_url}/#model/tts/speak")
    await page.fill("#in-text", "I really love this wonderful phone.")
    await page.click("#run")
    player = page.locator('.output[data-output="audio"] audio')
    await player.wait_for()
    assert await player.evaluate(
        "a => new Promise(ok => a.readyState > 0 ? ok(a.duration) :"
        " a.addEventListener('loadedmetadata', () => ok(a.duration)))") > 0.5
    src = await player.get_attribute("src")  # the spoken sentence, as the player holds it
    assert src.startswith("data:audio/wav;base64,")
    wav = tmp_path / "speech.wav"
    wav.write_bytes(base64.b64decode(src.split(",", 1)[1]))

    await page.goto(f"{gateway_url}/#pipeline/embed")
    await page.fill("#in-text", "hello world")
    await page.click("#run")
    await page.locator(".output .embedding", has_text="384 dimensions").wait_for()
    assert await state_of(page, "image") == "skipped"

    await page.goto(f"{gateway_url}/#pipeline/transcribe_then_classify")
    await page.set_input_files("#in-audio", str(wav))
    await add_labels(page, "positive", "negative")
    await page.click("#run")
    text = page.locator('.output[data-output="text"] .text-output')
    await text.wait_for()
    assert "phone" in (await text.inner_text()).lower()
    assert await page.locator('.output[data-output="labels"] .bar').count() == 2


async def test_fused_image_labels_screenshots(page, gateway_url, tmp_path):
    out = Path(os.environ.get("FUSION_PLAYGROUND_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    await page.goto(f"{gateway_url}/#pipeline/fused_image_labels")
    await page.set_input_files("#in-image", files=[png_file("sky.png", (40, 110, 230), 64)])
    await add_labels(page, "sky", "grass", "fire")
    await page.click("#run")
    await page.locator('.output[data-output="caption_labels"] .bar').nth(2).wait_for()
    for step in ("clip", "caption", "classify", "fused"):
        assert await state_of(page, step) == "done"
    assert await page.locator('.output[data-output="labels"] .bar').count() == 3
    await page.screenshot(path=str(out / "playground-desktop.png"), full_page=True)
    await page.set_viewport_size({"width": 360, "height": 780})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    assert await page.locator("#catalog-details").evaluate("d => !d.open")  # folded
    await page.screenshot(path=str(out / "playground-360.png"), full_page=True)
    for name in ("playground-desktop.png", "playground-360.png"):
        assert (out / name).stat().st_size > 10_000


async def test_chat_with_the_llm_streams_and_reads_an_image(page, gateway_url, tmp_path):
    """The chat view on the Serve app: the tiny LLM's tokens streamed into the transcript over
    two turns, an attached image read by the tiny captioner and the real OCR model on the
    gateway. ``FUSION_PLAYGROUND_SHOTS=docs`` writes docs/playground-chat.png."""
    out = Path(os.environ.get("FUSION_PLAYGROUND_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    await page.goto(gateway_url)
    await page.click('button[data-task="llm/chat"]')
    await page.click("#chat-settings summary")
    await page.fill("#chat-system", "Answer briefly.")
    await page.fill("#chat-max-tokens", "16")
    await page.set_input_files("#in-chat-image", files=[png_file("sky.png", (40, 110, 230), 64)])
    await page.fill("#chat-input", "What is in this picture?")
    await page.click("#chat-send")
    done = page.locator('#chat-log [data-role="assistant"][data-state="done"]')
    await done.first.wait_for()
    assert await page.locator("#chat-error").is_hidden()
    assert int(await done.first.get_attribute("data-chunks")) > 1  # streamed into the page
    assert (await done.first.locator(".msg-text").text_content()).strip()
    await page.fill("#chat-input", "Say it again, in other words.")
    await page.press("#chat-input", "Enter")
    await done.nth(1).wait_for()
    roles = await page.locator('[role="log"] .msg').evaluate_all(
        "els => els.map(e => e.dataset.role)")
    assert roles == ["user", "assistant", "user", "assistant"]
    await page.click("#chat-settings summary")  # folded, for the picture
    await page.screenshot(path=str(out / "playground-chat.png"), full_page=True)
    assert (out / "playground-chat.png").stat().st_size > 10_000
