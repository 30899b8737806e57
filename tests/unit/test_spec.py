"""Spec validation: each class of mistake is refused with the file, step and problem named."""

from __future__ import annotations

import copy

import pytest

from fusion.errors import SpecError
from fusion.pipeline.spec import load_pipelines, load_spec
from fusion.registry import model_tasks

MODELS = {"captioner": model_tasks("caption"), "text": model_tasks("text"),
          "clip": model_tasks("clip"), "diffusion": model_tasks("diffusion"),
          "whisper": model_tasks("audio")}

GOOD = {
    "name": "good",
    "inputs": {"image": "image", "labels": "list[text]"},
    "steps": {
        "caption": {"model": "captioner", "task": "caption", "with": {"image": "$inputs.image"}},
        "classify": {"model": "text", "task": "zero_shot",
                     "with": {"text": "$steps.caption.text", "labels": "$inputs.labels"}},
    },
    "outputs": {"caption": "$steps.caption.text", "labels": "$steps.classify.labels"},
}


def broken(**changes) -> dict:
    raw = copy.deepcopy(GOOD)
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return raw


def refuse(raw: dict) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(raw, "pipelines/bad.yaml", MODELS)
    msg = str(info.value)
    assert msg.startswith("pipelines/bad.yaml: pipeline 'good'"), msg
    return msg


def test_good_spec_loads_in_dependency_order():
    spec = load_spec(GOOD, "g.yaml", MODELS)
    assert list(spec.steps) == ["caption", "classify"]
    assert spec.steps["classify"].needs == ("caption",)
    assert spec.output_types == {"caption": "text", "labels": "labels"}
    assert spec.describe()["steps"]["classify"]["needs"] == ["caption"]


def test_unknown_model():
    msg = refuse(broken(steps__caption__model="blip"))
    assert "step 'caption'" in msg and "unknown model 'blip'" in msg


def test_unknown_task():
    msg = refuse(broken(steps__caption__task="generate"))
    assert "step 'caption'" in msg and "no task 'generate'" in msg


def test_wrong_type_binding():
    msg = refuse(broken(steps__caption__with={"image": "$inputs.labels"}))
    assert "step 'caption' input 'image'" in msg and "expects image but is bound to list[text]" \
        in msg


def test_wrong_type_from_step_output():
    msg = refuse(broken(steps__classify__with={"text": "$steps.caption.text",
                                               "labels": "$steps.caption.text"}))
    assert "input 'labels'" in msg and "list[text]" in msg


def test_undeclared_input():
    msg = refuse(broken(steps__caption__with={"image": "$inputs.picture"}))
    assert "step 'caption'" in msg and "$inputs.picture" in msg and "undeclared" in msg


def test_missing_required_task_input():
    msg = refuse(broken(steps__caption__with={}))
    assert "step 'caption'" in msg and "needs input 'image'" in msg


def test_unknown_task_input():
    msg = refuse(broken(steps__caption__with={"image": "$inputs.image", "colour": "red"}))
    assert "no input 'colour'" in msg


def test_cycle():
    raw = broken(steps__caption__with={"image": "$inputs.image"})
    raw["steps"]["caption"]["when"] = "$steps.classify.labels"
    msg = refuse(raw)
    assert "cycle" in msg and "caption" in msg and "classify" in msg


def test_dangling_step_reference():
    msg = refuse(broken(steps__classify__with={"text": "$steps.captin.text",
                                               "labels": "$inputs.labels"}))
    assert "step 'classify'" in msg and "unknown step 'captin'" in msg


def test_unreachable_output():
    msg = refuse(broken(outputs={"x": "$steps.nowhere.text"}))
    assert "output 'x'" in msg and "unknown step 'nowhere'" in msg
    msg = refuse(broken(outputs={"x": "$steps.caption.words"}))
    assert "output 'x'" in msg and "no output 'words'" in msg


def test_malformed_reference_and_condition():
    assert "malformed reference" in refuse(broken(steps__caption__with={"image": "$inputs"}))
    raw = broken()
    raw["steps"]["caption"]["when"] = "$inputs.image ~= 3"
    assert "when" in refuse(raw)


def test_bad_input_type_and_unknown_keys():
    assert "unknown type" in refuse(broken(inputs={"image": "picture", "labels": "list[text]"}))
    raw = broken()
    raw["steps"]["caption"]["retries"] = 3
    assert "unknown key(s) ['retries']" in refuse(raw)


def test_builtin_pipelines_all_load():
    specs = load_pipelines(MODELS)
    assert {"caption_then_classify", "text_to_image", "transcribe_then_classify",
            "clip_zero_shot", "fused_image_labels", "embed"} <= set(specs)
    fused = specs["fused_image_labels"]
    assert set(fused.steps["fused"].needs) == {"clip", "classify"}
    assert fused.steps["clip"].needs == ()  # runs in parallel with the caption branch


def test_builtin_pipelines_skip_models_not_served_but_inline_ones_do_not():
    only_text = {"text": model_tasks("text")}
    assert set(load_pipelines(only_text)) == set()  # every built-in needs another model
    with pytest.raises(SpecError, match=r"config pipelines\[0\].*unknown model 'captioner'"):
        load_pipelines(only_text, inline=[GOOD])


def test_duplicate_pipeline_names():
    with pytest.raises(SpecError, match="defined twice"):
        load_pipelines(MODELS, dirs=[], inline=[GOOD, GOOD])


RANKED = {
    "name": "good", "inputs": {"q": "text", "docs": "list[text]", "pics": "list[image]"},
    "steps": {"top": {"rank": {"model": "text"},
                      "with": {"query": "$inputs.q", "documents": "$inputs.docs",
                               "top_k": 2}}},
    "outputs": {"indices": "$steps.top.indices", "context": "$steps.top.context"},
}


def test_rank_step_loads_and_names_the_model_it_calls():
    spec = load_spec(RANKED, "r.yaml", MODELS)
    step = spec.steps["top"]
    assert (step.model, step.task, step.uses_model) == (None, "rank", "text")
    assert spec.output_types == {"indices": "list[int]", "context": "text"}
    assert spec.describe()["steps"]["top"]["model"] == "text"


@pytest.mark.parametrize("rank, with_, problem", [
    ({"model": "nope"}, {}, "model 'nope' cannot rank"),
    ({"model": "captioner"}, {}, "model 'captioner' cannot rank"),
    ({"model": "text", "top": 1}, {}, "rank: must be {model"),
    ({"model": "text"}, {"images": "$inputs.pics"}, "cannot rank images"),
    ({"model": "clip"}, {"model": "text"}, "named in rank:, not in with:"),
    ({"model": "clip"}, {"documents": "$inputs.q"}, "expects list[text] but is bound to text"),
])
def test_rank_step_mistakes_are_refused(rank, with_, problem):
    raw = copy.deepcopy(RANKED)
    raw["steps"]["top"]["rank"] = rank
    raw["steps"]["top"]["with"].update(with_)
    assert problem in refuse(raw)


def test_a_builtin_pipeline_ranking_with_an_unserved_model_is_left_out():
    served = {k: v for k, v in MODELS.items() if k != "clip"}
    assert "search_images" not in load_pipelines(served)
    assert "search_images" in load_pipelines({**served, "clip": MODELS["clip"]})
