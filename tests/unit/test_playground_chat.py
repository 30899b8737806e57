"""The playground's chat view in a real Chromium, against an in-process gateway whose ``llm``
is the real tiny language model (tests/llm_inprocess.py; fakes for the captioner, OCR and
Whisper): multi-turn history, tokens streamed into the page, the stop button (which stops the
generation on the gateway), a system prompt, an image and a recording attached to a turn,
an LLM pipeline as a chat, errors, and the copied commands. JSON-mode and tool-call answers
are rendered from a scripted stream (the page's logic alone).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fusion.http.app import create_api
from tests.browser import serve_app
from tests.fakes import png
from tests.llm_inprocess import LlmModels, llm_gateway

pytestmark = pytest.mark.browser


class SlowLlm:
    """The tiny model, generating a token every 50 ms: a stream a test can stop midway."""

    def __init__(self, llm) -> None:
        self._llm = llm

    def __getattr__(self, name: str):
        return getattr(self._llm, name)

    def generate(self, items, on_text, cancel):
        def slow(text: str) -> None:
            time.sleep(0.05)
            on_text(text)

        return self._llm.generate(items, slow, cancel)


@pytest.fixture(scope="module")
def served(llm):
    models = LlmModels(SlowLlm(llm))
    gw = llm_gateway(models)
    with serve_app(create_api(lambda: gw)) as base:
        yield base, models


@pytest.fixture
def url(served) -> str:
    return served[0]


@pytest.fixture
def models(served) -> LlmModels:
    return served[1]


@pytest.fixture
async def page(browser, url):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    p = await context.new_page()
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.set_default_timeout(60_000)
    yield p
    await context.close()
    assert not errors, errors  # no uncaught exception in the page's scripts


def chat_requests(page) -> list[dict]:
    """The bodies the page posts to /v1/chat/completions, as they go."""
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") and r.method == "POST" else None)
    return sent


async def answer(page, n: int):
    """The n-th assistant message (1-based), once it is done."""
    msg = page.locator('#chat-log [data-role="assistant"]').nth(n - 1)
    done = page.locator(f'#chat-log [data-role="assistant"][data-state="done"] >> nth={n - 1}')
    failed = page.locator("#chat-error")
    await done.or_(failed).first.wait_for()
    assert await failed.is_hidden(), await failed.inner_text()
    return msg


async def test_a_conversation_streams_and_keeps_its_history(page, url):
    sent = chat_requests(page)
    await page.goto(url)
    await page.click('button[data-task="llm/chat"]')  # the chat task opens the chat view
    await page.locator("#chat").wait_for()
    assert page.url.endswith("#chat/llm")
    assert await page.get_attribute("#chat-log", "role") == "log"
    await page.click("#chat-settings summary")
    await page.fill("#chat-system", "You are terse.")
    await page.fill("#chat-max-tokens", "12")
    await page.fill("#chat-input", "Say hello.")
    await page.press("#chat-input", "Enter")
    first = await answer(page, 1)
    text = await first.locator(".msg-text").text_content()
    assert int(await first.get_attribute("data-chunks")) > 1  # streamed, piece by piece
    assert await first.get_attribute("data-finish") == "length"
    assert "12 tokens" in await first.locator(".msg-meta").inner_text()
    # the page's stream says what the API says, unstreamed, for the same request
    body = {"model": "llm", "max_tokens": 12, "temperature": 0, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]}
    whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert text == whole["choices"][0]["message"]["content"]

    await page.fill("#chat-input", "And again?")
    await page.click("#chat-send")
    await answer(page, 2)
    roles = await page.locator("#chat-log .msg").evaluate_all(
        "els => els.map(e => e.dataset.role)")
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert sent[1]["messages"][2]["content"] == text and sent[1]["stream"] is True
    assert sent[1]["max_tokens"] == 12 and sent[1]["temperature"] == 0

    await page.fill("#chat-input", "third")  # the draft is the next turn of the copies
    await page.click("#chat-commands summary")
    curl = await page.text_content("#chat-cmd-curl")
    assert f"'{url}/v1/chat/completions'" in curl and '"content":"third"' in curl
    assert '"role":"assistant"' in curl and '"You are terse."' in curl
    sdk = await page.text_content("#chat-cmd-sdk")
    assert 'fusion.stream_chat(messages, model="llm", max_tokens=12, temperature=0)' in sdk
    assert '{"role": "user", "content": "third"}' in sdk
    cli = await page.text_content("#chat-cmd-cli")
    assert "chat --model 'llm' --system 'You are terse.' --max-tokens 12" in cli
    assert cli.rstrip().endswith("'third'") and "earlier turns" in cli

    await page.click("#chat-new")
    assert await page.locator("#chat-log .msg").count() == 0


async def test_stop_ends_the_stream_and_the_generation(page, url, models):
    await page.goto(f"{url}/#chat/llm")
    await page.click("#chat-settings summary")
    await page.fill("#chat-max-tokens", "400")  # 20 s at this model's pace: stopped long before
    await page.fill("#chat-input", "Tell me a long story.")
    models.cancelled.clear()
    await page.click("#chat-send")
    await page.locator('#chat-log [data-role="assistant"][data-chunks]').wait_for()
    assert await page.locator("#chat-stop").is_enabled()
    await page.click("#chat-stop")
    stopped = page.locator('#chat-log [data-role="assistant"][data-state="stopped"]')
    await stopped.wait_for()
    assert "stopped" in await stopped.locator(".msg-meta").inner_text()
    assert await page.locator("#chat-send").is_enabled()
    assert await page.locator("#chat-stop").is_disabled()
    # the gateway saw the client leave and stopped generating (waits on the event)
    assert await asyncio.to_thread(models.cancelled.wait, 30)


async def test_image_and_recording_go_through_the_readers(page, url, models, tmp_path):
    """An image as an ``image_url`` part (read by the captioner and OCR on the gateway), a
    recording from Chromium's fake microphone transcribed by Whisper: beside a question it is
    its transcript; alone, it is the question."""
    sent = chat_requests(page)
    await page.context.grant_permissions(["microphone"])
    await page.goto(f"{url}/#chat/llm")
    await page.set_input_files("#in-chat-image", files=[
        {"name": "sign.png", "mimeType": "image/png", "buffer": png((200, 10, 10), 16)}])
    await page.fill("#chat-input", "What is in the picture?")
    captions = models.calls["captioner/caption"]
    await page.click("#chat-send")
    await answer(page, 1)
    user = page.locator('#chat-log [data-role="user"]').first
    assert await user.locator("img.msg-image").count() == 1
    parts = sent[0]["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url"
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert parts[1] == {"type": "text", "text": "What is in the picture?"}
    assert models.calls["captioner/caption"] == captions + 1  # read on the gateway
    assert await page.locator("#field-chat-image .hint", has_text="sign.png").count() == 0

    await page.click("#chat-commands summary")  # the copy reads the image from its file
    curl = await page.text_content("#chat-cmd-curl")
    assert "base64,'\"$(base64 < sign.png | tr -d '\\n')\"'" in curl and "iVBOR" not in curl
    assert 'image_b64("sign.png")' in await page.text_content("#chat-cmd-sdk")

    for question in ("What was said?", ""):
        await page.locator("#field-chat-audio button", has_text="Record").click()
        stop = page.locator("#field-chat-audio button", has_text="Stop recording")
        await stop.wait_for()
        await page.wait_for_timeout(800)  # the recording's length, not a race
        await stop.click()
        await page.locator("#field-chat-audio .hint", has_text="recording.wav").wait_for()
        await page.fill("#chat-input", question)
        done = await page.locator('#chat-log [data-role="assistant"][data-state="done"]').count()
        await page.click("#chat-send")
        await answer(page, done + 1)
    first, second = sent[1]["messages"][-1], sent[2]["messages"][-1]
    transcript = first["content"][0]["text"]  # the fake Whisper: "<n> bytes of speech"
    assert transcript.startswith("[A recording. Transcript: ") and "bytes of speech" in transcript
    assert first["content"][1] == {"type": "text", "text": "What was said?"}
    assert second["content"].endswith("bytes of speech")  # dictated: the transcript is the turn
    notes = await page.locator('#chat-log [data-role="user"] .msg-attachment').all_inner_texts()
    assert "transcript:" in notes[0] and "dictated" in notes[1]


async def test_an_llm_pipeline_as_a_chat(page, url):
    """ask_image in the chat view: each turn one run, the image into its input, the answer's
    tokens streamed from the pipeline's ``token`` events, its other outputs beside it."""
    await page.goto(url)
    await page.locator('#pipeline-list button[data-pipeline="describe_then_draw"]').wait_for()
    assert await page.locator("[data-chat-pipeline]").evaluate_all(  # words out, not images
        "els => els.map(e => e.dataset.chatPipeline)") == ["ask_audio", "ask_image"]
    await page.click('#pipeline-list button[data-chat-pipeline="ask_image"]')
    await page.locator("#chat").wait_for()
    assert page.url.endswith("#chat-pipeline/ask_image")
    assert await page.locator("#chat-system").is_hidden()  # a pipeline has its own prompt
    assert await page.locator("#field-chat-audio").count() == 0  # ask_image takes no audio
    await page.set_input_files("#in-chat-image", files=[
        {"name": "p.png", "mimeType": "image/png", "buffer": png((1, 2, 3), 12)}])
    await page.fill("#chat-input", "What colour is it?")
    await page.click("#chat-commands summary")
    cli = await page.text_content("#chat-cmd-cli")
    assert "run ask_image" in cli and "--image 'p.png'" in cli
    await page.click("#chat-send")
    msg = await answer(page, 1)
    assert int(await msg.get_attribute("data-chunks")) > 1
    outputs = await msg.locator(".msg-outputs").inner_text()
    assert "caption" in outputs and "an image of" in outputs
    assert (await msg.locator(".msg-text").text_content()).strip()


async def test_a_refused_turn_names_its_field(page, url):
    await page.goto(f"{url}/#chat/llm")
    await page.click("#chat-settings summary")
    await page.fill("#chat-max-tokens", "0")
    await page.fill("#chat-input", "hi")
    await page.click("#chat-send")
    banner = page.locator("#chat-error")
    await banner.wait_for()
    text = await banner.inner_text()
    assert text.startswith("400") and "(field: max_tokens)" in text
    assert await page.locator("#chat-send").is_enabled()


def sse(*chunks: dict) -> str:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llm"}
    return "".join(f"data: {json.dumps({**head, 'choices': [c]})}\n\n" for c in chunks) + \
        "data: [DONE]\n\n"


async def test_json_and_tool_call_answers_render_readably(page, url):
    """A JSON-mode answer is shown as indented JSON; tool calls (OpenAI's deltas: id and name
    first, arguments in pieces) as cards with their arguments, and a tool's result typed
    under its call goes back as a ``tool`` message; the settings go in the body."""
    sent = chat_requests(page)
    streams = [
        sse({"index": 0, "delta": {"role": "assistant", "content": ""}},
            {"index": 0, "delta": {"content": '{"city": "Pa'}},
            {"index": 0, "delta": {"content": 'ris", "days": 3}'}},
            {"index": 0, "delta": {}, "finish_reason": "stop"}),
        sse({"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}}]}},
            {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": '{"city": '}}]}},
            {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": '"Paris"}'}}]}},
            {"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
        sse({"index": 0, "delta": {"role": "assistant", "content": "It is 21 degrees."}},
            {"index": 0, "delta": {}, "finish_reason": "stop"})]

    async def fulfil(route):
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                            body=streams.pop(0))

    await page.route("**/v1/chat/completions", fulfil)
    await page.goto(f"{url}/#chat/llm")
    await page.click("#chat-settings summary")
    await page.select_option("#chat-format", "json_object")
    await page.fill("#chat-input", "Plan a trip as JSON.")
    await page.click("#chat-send")
    msg = await answer(page, 1)
    pretty = await msg.locator(".msg-json pre").text_content()
    assert json.loads(pretty) == {"city": "Paris", "days": 3} and "\n  " in pretty
    assert sent[0]["response_format"] == {"type": "json_object"}

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    await page.select_option("#chat-format", "")
    await page.fill("#chat-tools", json.dumps(tools))
    await page.fill("#chat-tool-choice", "get_weather")
    await page.fill("#chat-input", "Weather in Paris?")
    await page.click("#chat-send")
    msg = await answer(page, 2)
    call = msg.locator('.tool-call[data-name="get_weather"]')
    assert await call.locator(".tool-call-id").inner_text() == "call_1"
    assert json.loads(await call.locator("pre").text_content()) == {"city": "Paris"}
    assert await msg.get_attribute("data-finish") == "tool_calls"
    assert sent[1]["tools"] == tools and "response_format" not in sent[1]
    assert sent[1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent[1]["messages"][1]["content"] == '{"city": "Paris", "days": 3}'
    await page.click("#chat-commands summary")
    sdk = await page.text_content("#chat-cmd-sdk")
    assert "fusion.chat(messages, " in sdk and "model_dump_json" in sdk
    assert 'tool_choice={"type": "function", "function": {"name": "get_weather"}}' in sdk

    await page.fill("#chat-tool-choice", "")  # the tool's result goes back as a tool message
    await call.locator(".tool-reply textarea").fill('{"temperature": 21}')
    await call.locator(".tool-reply button").click()
    msg = await answer(page, 3)
    assert await msg.locator(".msg-text").inner_text() == "It is 21 degrees."
    assert await call.locator(".tool-reply").count() == 0
    roles = await page.locator("#chat-log .msg").evaluate_all(
        "els => els.map(e => e.dataset.role)")
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert sent[2]["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert sent[2]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                       "content": '{"temperature": 21}'}


async def test_usable_at_360_px(page, url):
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.goto(f"{url}/#chat/llm")
    await page.fill("#chat-input", "A rather long question that should wrap on a small phone.")
    await page.click("#chat-send")
    await answer(page, 1)
    await page.click("#chat-commands summary")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    box = await page.locator("#chat-send").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360
