"""The ``image_classify`` family on a CNN trained here for a few seconds (coloured shapes):
checkpoint formats, class names, preprocessing, and agreement with the model in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deployments.image_classify import ImageClassifier, preprocess_config, to_tensor
from fusion.config import ModelConfig
from fusion.errors import BadInput, SpecError
from tests.families import shapes_cnn

pytestmark = pytest.mark.models  # loads the family's models in-process

ARCH = "tests.families.shapes_cnn:SmallCNN"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = shapes_cnn.train(folder)
    finally:
        torch.set_num_threads(threads)
    return folder, model


def load(folder, **over) -> ImageClassifier:
    cfg = ModelConfig.model_validate({"name": "cnn", "family": "image_classify",
                                      "source": f"path:{folder}", **over})
    return ImageClassifier.load(cfg)


def test_served_predictions_match_the_model_in_process_and_beat_chance(trained):
    folder, model = trained
    images, truth = shapes_cnn.dataset(200, seed=99)
    backend = load(folder)
    items = [backend.prepare("classify", {"image": shapes_cnn.png(im)}) for im in images]
    served = backend.run("classify", items)
    with torch.no_grad():
        probs = model(shapes_cnn.to_batch(images)).softmax(-1).numpy()
    for out, p in zip(served, probs, strict=True):
        scores = {x["label"]: x["score"] for x in out["labels"]}
        assert [scores[c] for c in shapes_cnn.CLASSES] == pytest.approx(p.tolist(), abs=1e-5)
    top = np.array([shapes_cnn.CLASSES.index(o["labels"][0]["label"]) for o in served])
    assert (top == truth).mean() > 0.8  # chance is 0.25


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_with_classes_inside_and_top_k(trained, tmp_path):
    folder, model = trained
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"),
                   _extra_files={"classes.txt": "\n".join(shapes_cnn.CLASSES)})
    (tmp_path / "preprocess.json").write_text(json.dumps(shapes_cnn.PREPROCESS))
    backend = load(tmp_path, backend="torchscript")
    image = shapes_cnn.draw(1, np.random.default_rng(5))
    [out] = backend.run("classify", [backend.prepare("classify", {
        "image": shapes_cnn.png(image), "top_k": 2})])
    assert len(out["labels"]) == 2 and backend.classes == shapes_cnn.CLASSES
    ref = load(folder).run("classify", [load(folder).prepare("classify", {
        "image": shapes_cnn.png(image)})])[0]["labels"][:2]
    assert [x["label"] for x in out["labels"]] == [x["label"] for x in ref]


def test_bare_state_dict_with_labels_file_and_arch_option(trained, tmp_path):
    _, model = trained
    torch.save(model.state_dict(), tmp_path / "checkpoint.pt")
    (tmp_path / "labels.txt").write_text("\n".join(shapes_cnn.CLASSES) + "\n")
    backend = load(tmp_path, options={"arch": ARCH, "arch_kwargs": {"num_classes": 4},
                                      "preprocess": shapes_cnn.PREPROCESS})
    assert backend.classes == shapes_cnn.CLASSES and backend.info()["classes"] == 4
    with pytest.raises(SpecError, match="needs options.arch"):
        load(tmp_path)


def test_torchvision_architecture_by_name(tmp_path):
    import torchvision

    net = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=3)
    torch.save({"state_dict": net.state_dict(), "classes": ["a", "b", "c"],
                "arch": "torchvision:squeezenet1_1"}, tmp_path / "checkpoint.pt")
    backend = load(tmp_path, options={"preprocess": {"resize": 80, "crop": 64}})
    image = shapes_cnn.draw(0, np.random.default_rng(1)).resize((100, 70))
    [out] = backend.run("classify", [backend.prepare("classify", {"image": shapes_cnn.png(image)})])
    assert sorted(x["label"] for x in out["labels"]) == ["a", "b", "c"]
    assert sum(x["score"] for x in out["labels"]) == pytest.approx(1, abs=1e-5)


def test_preprocessing_resize_and_crop():
    from PIL import Image

    pre = preprocess_config({"resize": 40, "crop": 32, "mean": [0, 0, 0], "std": [1, 1, 1]})
    x = to_tensor(Image.new("RGB", (80, 50), (255, 0, 0)), pre)
    assert tuple(x.shape) == (3, 32, 32) and float(x[0].min()) == 1.0 and float(x[1].max()) == 0
    with pytest.raises(SpecError, match="unknown keys \\['scale'\\]"):
        preprocess_config({"scale": 2})


def test_bad_inputs_name_the_field(trained):
    backend = load(trained[0])
    with pytest.raises(BadInput) as err:
        backend.prepare("classify", {"image": b"not an image"})
    assert err.value.field == "image"
    with pytest.raises(BadInput) as err:
        backend.prepare("classify", {"image": shapes_cnn.png(shapes_cnn.draw(
            0, np.random.default_rng(0))), "top_k": -1})
    assert err.value.field == "top_k"


def test_tiny_shapes_cnn_trains_once_deterministically_then_loads(tmp_path, monkeypatch):
    """``tiny:shapes-cnn`` (the default profile's ``shapes``): trained on first use into the
    model folder, fingerprinted from the saved checkpoint, served through the family's loader
    with real accuracy on fresh images; a second start loads the same folder, untrained."""
    from deployments.sources import resolve
    from deployments.tiny import shapes_cnn as source
    from fusion.config import ModelSource

    monkeypatch.setenv("FUSION_MODEL_DIR", str(tmp_path))
    first = resolve(ModelSource.model_validate("tiny:shapes-cnn"))
    checkpoint = tmp_path / "tiny-shapes-cnn" / "checkpoint.pt"
    built_at = checkpoint.stat().st_mtime_ns
    again = resolve(ModelSource.model_validate("tiny:shapes-cnn"))
    assert again.fingerprint == first.fingerprint and first.fingerprint.startswith(
        "tiny:shapes-cnn#")
    assert checkpoint.stat().st_mtime_ns == built_at  # loaded, not trained again
    elsewhere = tmp_path / "second"
    source.build_tiny_shapes_cnn(elsewhere)  # the same bytes on another build: seeded
    assert (elsewhere / "checkpoint.pt").read_bytes() == checkpoint.read_bytes()

    backend = ImageClassifier.load(ModelConfig.model_validate(
        {"name": "shapes", "family": "image_classify", "source": "tiny:shapes-cnn"}))
    images, truth = source.dataset(200, seed=4242)  # not the training seed
    served = backend.run("classify", [backend.prepare("classify", {"image": source.png(im)})
                                      for im in images])
    top = np.array([source.CLASSES.index(o["labels"][0]["label"]) for o in served])
    assert (top == truth).mean() > 0.9
