"""Template steps (checked at start-up, filled with no code), token-streaming pipeline steps,
and the cache rules for generated text: the real tiny LLM in-process, fakes elsewhere."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.core.gateway import served_tasks  # noqa: E402
from fusion.core.run_types import CachePolicy  # noqa: E402
from fusion.errors import SpecError  # noqa: E402
from fusion.pipeline.spec import load_pipelines, load_spec  # noqa: E402
from fusion.pipeline.template import fill_template, parse_template  # noqa: E402
from tests.fakes import png  # noqa: E402
from tests.llm_inprocess import llm_config, llm_gateway  # noqa: E402

MODELS = served_tasks(llm_config())


def test_template_fill_has_no_code_path():
    assert parse_template("a {x} b {{y}} {x} {z}") == ["x", "z"]
    assert fill_template("a {x} b {{y}} {z}", {"x": 1.5, "z": ["p", "q"]}) == "a 1.5 b {y} p, q"
    # values are never re-parsed or formatted: braces and attribute syntax stay text
    assert fill_template("{x}", {"x": "{x.__class__} {0}"}) == "{x.__class__} {0}"
    for bad in ("{x.y}", "{0}", "a } b", "{ x }", "", 3):
        with pytest.raises(ValueError):
            parse_template(bad)


def _spec(steps: dict, inputs: dict | None = None) -> dict:
    return {"name": "p", "inputs": inputs or {"q": "text", "image": "image"}, "steps": steps,
            "outputs": {"out": f"$steps.{next(reversed(steps))}.text"}}


@pytest.mark.parametrize(("step", "problem"), [
    ({"template": "Q: {q}", "with": {}}, "needs input 'q'"),
    ({"template": "Q: {q}", "with": {"q": "$inputs.q", "r": "$inputs.q"}}, "not used"),
    ({"template": "Q: {q", "with": {"q": "$inputs.q"}}, "stray '{'"),
    ({"template": "Q: {q}", "with": {"q": "$inputs.image"}}, "not image"),
    ({"template": "Q: {q}", "with": {"q": "$inputs.nope"}}, "undeclared input"),
    ({"template": "Q: {q}", "with": {"q": "$steps.ghost.text"}}, "unknown step"),
])
def test_template_steps_are_checked_at_start(step, problem):
    with pytest.raises(SpecError) as info:
        load_spec(_spec({"fill": step}), "test.yaml", MODELS)
    assert "step 'fill'" in str(info.value) and problem in str(info.value), str(info.value)


def test_builtin_llm_pipelines_load_and_chain_types():
    pipes = load_pipelines(MODELS)
    for name in ("ask_image", "ask_audio", "describe_then_draw"):
        assert name in pipes
    ask = pipes["ask_image"].describe()
    assert ask["steps"]["prompt"] == {"model": None, "task": "template",
                                      "needs": ["caption", "read"], "when": None}
    assert ask["steps"]["answer"]["needs"] == ["prompt"]
    assert pipes["describe_then_draw"].output_types == {"description": "text",
                                                        "image": "image"}


async def test_ask_image_streams_tokens_after_the_step_events(models):
    gw = llm_gateway(models)
    events: list[dict] = []
    inputs = {"image": png(), "question": "what is written here?", "max_tokens": 12}
    result = await gw.run_pipeline("ask_image", inputs, on_event=events.append)
    kinds = [e["event"] for e in events]
    first_token = kinds.index("token")
    steps_before = {e["step"] for e in events[:first_token] if e["event"] == "step"}
    assert steps_before == {"caption", "read", "prompt"}
    tokens = [e for e in events if e["event"] == "token"]
    assert {e["step"] for e in tokens} == {"answer"}
    assert "".join(e["text"] for e in tokens) == result.outputs["answer"]
    assert kinds[-1] == "step" and events[-1]["step"] == "answer"
    assert result.outputs["usage"]["completion_tokens"] == 12
    assert result.outputs["caption"].startswith("an image of")  # fake captioner's words
    # the prompt the LLM saw is the template filled with both readers' outputs
    prompt = models.llm.render([{"role": "user", "content": (
        f"An image shows: {result.outputs['caption']}\nText in the image: "
        f"{result.outputs['text']}\nQuestion: what is written here?\n"
        "Answer in one or two sentences.")}])
    n = len(models.llm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert result.outputs["usage"]["prompt_tokens"] == n


async def test_greedy_answer_is_cached_and_replays_as_a_stream(models):
    gw = llm_gateway(models)
    inputs = {"audio": b"RIFF fake", "question": "who speaks?", "max_tokens": 10}
    first: list[dict] = []
    one = await gw.run_pipeline("ask_audio", inputs, on_event=first.append)
    again: list[dict] = []
    two = await gw.run_pipeline("ask_audio", inputs, on_event=again.append)
    assert models.calls["llm/chat"] == 1  # computed once
    assert two.outputs == one.outputs and two.steps["answer"].cached
    assert one.steps["answer"].uncached is None
    replayed = [e["text"] for e in again if e["event"] == "token"]
    assert len(replayed) > 1 and "".join(replayed) == one.outputs["answer"]


async def test_sampled_answer_is_not_cached_and_the_report_says_why(models):
    gw = llm_gateway(models)
    inputs = {"audio": b"RIFF fake", "question": "who speaks?", "max_tokens": 10,
              "temperature": 1.0}
    one = await gw.run_pipeline("ask_audio", inputs)
    two = await gw.run_pipeline("ask_audio", inputs)
    assert models.calls["llm/chat"] == 2
    assert not two.steps["answer"].cached and "not cached" in two.steps["answer"].uncached
    assert two.steps["transcribe"].cached  # the deterministic steps still are
    assert one.outputs["answer"] != two.outputs["answer"]
    seeded = {**inputs, "seed": 5}
    a = await gw.run_pipeline("ask_audio", seeded)
    b = await gw.run_pipeline("ask_audio", seeded)
    assert models.calls["llm/chat"] == 3 and b.steps["answer"].cached
    assert a.outputs == b.outputs


async def test_describe_then_draw_feeds_the_llm_into_diffusion(models):
    gw = llm_gateway(models)
    result = await gw.run_pipeline("describe_then_draw", {"prompt": "a red boat"},
                                   CachePolicy(read=False, write=False))
    assert result.outputs["description"] and result.outputs["image"][:4] == b"\x89PNG"
    assert models.calls["diffusion/generate"] == 1 and models.calls["llm/chat"] == 1
