"""The family registry: families declared once and read everywhere, families from outside
``deployments/``, and ``family: custom`` models checked at start-up (errors name the model).

Models here are served by the real ``ServedModel`` (without Ray) from configs alone: no
gateway module knows about ``tests.families``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fusion.config import ModelConfig
from fusion.core.gateway import served_tasks
from fusion.core.startup import load_config
from fusion.errors import BadInput, SpecError
from fusion.pipeline.spec import load_pipelines
from fusion.registry import ENTRY_POINTS, Family, _Registry, families, family, tiny_recipes
from fusion.serve.app import build_app
from fusion.serve.served import ServedModel
from fusion.tasks import TaskSpec, param

REVERSE = {"name": "rev", "family": "reverse", "family_module": "tests.families.reverse",
           "source": "tiny:reverse"}
KEYWORDS = "tests.families.custom_backends:KeywordLabels"
CLASSIFY = {"classify": {"inputs": {"text": "text", "labels": "list[text]"},
                         "outputs": {"labels": "labels"}}}


@pytest.fixture
def keyword_dir(tmp_path):
    (tmp_path / "keywords.json").write_text(json.dumps({"fruit": ["apple", "pear"],
                                                        "car": ["wheel", "engine"]}))
    return tmp_path


def custom(folder, **over) -> dict:
    return {"name": "kw", "family": "custom", "backend": KEYWORDS, "source": f"path:{folder}",
            "tasks": CLASSIFY, **over}


def test_builtin_families_are_found_without_importing_torch_or_ray():
    code = ("import sys; from fusion import registry; f = registry.families(); "
            "print(sorted(f), sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ("['audio', 'caption', 'clip', 'diffusion', 'image_classify', 'llm', 'ocr', "
                   "'text', 'tts'] []")


def plugin(root, entries: str, name: str = "fusion-test-plugin"):
    """An installed distribution's metadata, as pip writes it, declaring ``entries``."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINTS}]\n{entries}\n")


def test_families_come_from_the_entry_points_of_installed_packages(tmp_path, monkeypatch):
    plugin(tmp_path, "reverse = tests.families.reverse:FAMILY")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = _Registry()
    found = registry.families()
    assert {"reverse", "text", "clip"} <= set(found)  # the plugin's, beside the built-in ones
    assert found["reverse"].model_class().__name__ == "ReverseModel"


@pytest.mark.parametrize("entries, message", [
    ("rev = tests.families.reverse:FAMILY", "entry point 'rev' .* declares \\['reverse'\\]"),
    ("reverse = tests.families.reverse:ReverseModel", "must name a module's FAMILY"),
    ("reverse = tests.fakes:FAMILY", "'tests.fakes' declares no FAMILY"),
])
def test_bad_entry_points_are_refused_naming_them(tmp_path, monkeypatch, entries, message):
    plugin(tmp_path, entries)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError, match=message):
        _Registry().families()


def test_a_backend_may_name_its_own_class_loaded_only_for_it():
    code = ("import sys; from fusion import registry; text = registry.family('text'); "
            "print(text.model_class().__name__, 'deployments.text_onnx' in sys.modules, "
            "text.model_class('onnx').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["TextModel", "False", "OnnxTextModel"]
    spec = TaskSpec({"text": param("text")}, {"text": "text"})
    with pytest.raises(SpecError, match="class for backend 'onnx', which is not one of"):
        Family("f", {"t": spec}, {"b": ("t",)}, model="x:Y", backend_models={"onnx": "x:Z"})


def test_every_tiny_recipe_comes_from_a_family_declaration():
    recipes = tiny_recipes()
    assert recipes["clip"] == "deployments.tiny.clip:build_tiny_clip"
    assert {r for f in families().values() for r in f.tiny} == set(recipes)


def test_family_from_its_own_module_validates_types_and_serves(tmp_path):
    cfg = ModelConfig.model_validate(REVERSE)
    assert (cfg.backend, cfg.tasks.tasks) == ("python", ("reverse", "shout"))
    assert cfg.tasks.spec("reverse").outputs == {"text": "text", "length": "int"}
    quiet = ModelConfig.model_validate({**REVERSE, "backend": "quiet"})
    assert quiet.tasks.tasks == ("reverse",)
    # pipelines type-check against the declaration: an int output is not text
    pipe = {"name": "p", "inputs": {"text": "text"},
            "steps": {"r": {"model": "rev", "task": "reverse", "with": {"text": "$inputs.text"}},
                      "s": {"model": "rev", "task": "shout",
                            "with": {"text": "$steps.r.length"}}},
            "outputs": {"t": "$steps.s.text"}}
    with pytest.raises(SpecError, match="step 's'"):
        load_pipelines({"rev": cfg.tasks}, [], [pipe])


async def test_family_from_its_own_module_runs_in_the_served_model(tmp_path):
    served = ServedModel(ModelConfig.model_validate(REVERSE).model_dump(mode="json"),
                         str(tmp_path))
    # call_many: the list path (call() batches through @serve.batch, which needs a replica)
    assert await served.call_many("reverse", [{"text": "abc"}, {"text": "xy"}]) == [
        {"text": "rev:cba", "length": 3}, {"text": "rev:yx", "length": 2}]
    info = served.info()
    assert (info["family"], info["backend"]) == ("reverse", "python")
    assert info["fingerprint"].startswith("tiny:reverse#")


def test_unknown_family_and_backend_name_the_choices():
    with pytest.raises(ValueError, match="model 'x': unknown family 'nope'.*'clip'"):
        ModelConfig.model_validate({"name": "x", "family": "nope", "source": "tiny:clip"})
    with pytest.raises(ValueError, match="backend 'loud' is not one of"):
        ModelConfig.model_validate({**REVERSE, "backend": "loud"})
    with pytest.raises(ValueError, match="model 'x': cannot import family module 'no.such'"):
        ModelConfig.model_validate({**REVERSE, "name": "x", "family_module": "no.such"})


def test_bad_family_declarations_are_refused():
    spec = TaskSpec({"text": param("text")}, {"text": "text"})
    with pytest.raises(SpecError, match="backend 'b' serves tasks \\['other'\\]"):
        Family("f", {"t": spec}, {"b": ("other",)}, model="x:Y")
    with pytest.raises(SpecError, match="task 't' input 'text' has unknown type 'txt'"):
        Family("f", {"t": TaskSpec({"text": param("txt")}, {})}, {"b": ("t",)}, model="x:Y")
    with pytest.raises(SpecError, match="declares no backend"):
        Family("f", {"t": spec}, {}, model="x:Y")


def test_family_lookup_by_name():
    assert family("clip").default_backend == "open_clip"
    assert "zero_shot" in family("clip").tasks


async def test_custom_backend_by_import_path_serves_its_declared_task(keyword_dir, tmp_path):
    cfg = ModelConfig.model_validate(custom(keyword_dir))
    assert cfg.tasks.tasks == ("classify",)
    served = ServedModel(cfg.model_dump(mode="json"), str(tmp_path))
    [out] = await served.call_many("classify", [{"text": "an apple and a pear",
                                                 "labels": ["car", "fruit"]}])
    assert [x["label"] for x in out["labels"]] == ["fruit", "car"]
    assert out["labels"][0]["score"] == pytest.approx(0.75)
    with pytest.raises(BadInput) as err:  # typed inputs are checked before the model runs
        await served.call_many("classify", [{"text": 3, "labels": ["car"]}])
    assert err.value.field == "inputs[0].text"
    assert served.info()["family"] == "custom"


def test_custom_model_in_a_pipeline_and_the_app(keyword_dir):
    args = {"models": [custom(keyword_dir), REVERSE], "pipeline_dirs": [],
            "pipelines": [{"name": "rev_then_classify", "inputs": {"text": "text",
                                                                   "labels": "list[text]"},
                           "steps": {"r": {"model": "rev", "task": "shout",
                                           "with": {"text": "$inputs.text"}},
                                     "c": {"model": "kw", "task": "classify",
                                           "with": {"text": "$steps.r.text",
                                                    "labels": "$inputs.labels"}}},
                           "outputs": {"labels": "$steps.c.labels"}}]}
    config = load_config(args)
    assert "rev_then_classify" in load_pipelines(served_tasks(config), [], config.pipelines)
    build_app(args)  # imports and checks the custom class: no error


@pytest.mark.parametrize("over, message", [
    ({"backend": "tests.families.no_such_module:X"},
     "model 'kw': backend 'tests.families.no_such_module:X': cannot import"),
    ({"backend": "tests.families.custom_backends:Missing"},
     "model 'kw': .* has no attribute 'Missing'"),
    ({"backend": "tests.families.custom_backends:NotABackend"},
     "model 'kw': backend .*NotABackend' is not a subclass of .*ModelBackend"),
    ({"tasks": {"classify": {"inputs": {"text": "text", "labels": "text"},
                             "outputs": {"labels": "labels"}}}},
     "model 'kw': task 'classify' is declared with inputs .* but .*KeywordLabels takes"),
    ({"tasks": {"summarise": {"inputs": {"text": "text"}, "outputs": {"text": "text"}}}},
     "model 'kw': .*KeywordLabels does not serve task 'summarise'"),
])
def test_bad_custom_backends_stop_start_up_naming_the_model(keyword_dir, over, message):
    with pytest.raises(SpecError, match=message):
        build_app({"models": [custom(keyword_dir, **over)], "pipeline_dirs": []})


@pytest.mark.parametrize("over, message", [
    ({"backend": None}, "model 'kw': family custom needs backend"),
    ({"backend": "KeywordLabels"}, "model 'kw': family custom needs backend"),
    ({"tasks": None}, "model 'kw': family custom needs tasks"),
    ({"tasks": {"classify": {"inputs": {"text": "picture"}, "outputs": {"labels": "labels"}}}},
     "model 'kw' task 'classify' input 'text' has unknown type 'picture'"),
])
def test_bad_custom_configs_are_refused_naming_the_model(keyword_dir, over, message):
    with pytest.raises(SpecError, match=message):
        load_config({"models": [custom(keyword_dir, **over)]})


def test_tasks_are_only_for_custom_models():
    with pytest.raises(SpecError, match="model 'rev': tasks: is only for family custom"):
        load_config({"models": [{**REVERSE, "tasks": CLASSIFY}]})


def test_a_module_without_a_family_declaration_is_refused():
    with pytest.raises(SpecError, match="'tests.fakes' declares no FAMILY"):
        family("anything", "tests.fakes")
