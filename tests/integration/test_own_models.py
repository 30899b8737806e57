"""Models the gateway's code does not know, served from config alone (conftest OWN_MODELS):
a family declared in a test module, a custom backend by import path in a pipeline, and a CNN
trained for seconds, compared with itself in-process and fused with CLIP, explained."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from tests.families import shapes_cnn

pytestmark = pytest.mark.serve


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(http, path: str, **inputs) -> dict:
    r = http.post(path, json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


def test_family_from_a_test_module_is_listed_and_served(http):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert (models["rev"]["family"], models["rev"]["backend"]) == ("reverse", "python")
    assert models["rev"]["inputs"] == {"reverse": {"text": "text"}, "shout": {"text": "text"}}
    assert post(http, "/v1/models/rev/reverse", text="fusion") == {"text": "rev:noisuf",
                                                                    "length": 6}
    r = http.post("/v1/models/rev/reverse", json={"inputs": {"text": 5}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.text"


def test_custom_backend_runs_in_a_pipeline(http):
    assert post(http, "/v1/models/kw/classify", text="wheel wheel",
                labels=["fruit", "car"])["labels"][0]["label"] == "car"
    out = post(http, "/v1/pipelines/shout_then_keywords", text="an apple a day",
               labels=["car", "fruit"])
    assert out["text"] == "rev:AN APPLE A DAY"
    assert [x["label"] for x in out["labels"]] == ["fruit", "car"]


@pytest.fixture(scope="module")
def in_process(own_model_dirs) -> torch.nn.Module:
    ckpt = torch.load(own_model_dirs["classifier"] / "checkpoint.pt", weights_only=True)
    model = shapes_cnn.SmallCNN(len(shapes_cnn.CLASSES))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def test_trained_cnn_through_the_gateway_matches_in_process_and_beats_chance(http, in_process):
    images, truth = shapes_cnn.dataset(40, seed=7)
    with torch.no_grad():
        probs = in_process(shapes_cnn.to_batch(images)).softmax(-1).numpy()
    r = http.post("/v1/models/classifier/classify",
                  json={"inputs": [{"image": b64(shapes_cnn.png(im))} for im in images]})
    assert r.status_code == 200, r.text
    served = [item["labels"] for item in r.json()["outputs"]]
    for labels, p in zip(served, probs, strict=True):
        scores = {x["label"]: x["score"] for x in labels}
        assert [scores[c] for c in shapes_cnn.CLASSES] == pytest.approx(p.tolist(), abs=1e-4)
    top = np.array([shapes_cnn.CLASSES.index(labels[0]["label"]) for labels in served])
    assert (top == truth).mean() >= 0.8  # chance: 0.25


def test_cnn_fused_with_clip_explains_itself(http):
    image = shapes_cnn.draw(2, np.random.default_rng(3))  # a triangle
    out = post(http, "/v1/pipelines/classifier_with_clip", image=b64(shapes_cnn.png(image)),
               labels=shapes_cnn.CLASSES)
    why = out["explanation"]
    assert why["sources"] == ["classifier", "clip"] and why["weights"] == [0.7, 0.3]
    fused = {x["label"]: x["score"] for x in out["labels"]}
    assert set(fused) == set(shapes_cnn.CLASSES)
    for row in why["labels"]:
        assert sum(row["contributions"].values()) == pytest.approx(fused[row["label"]])
    assert why["agreement"]["top1"]["classifier"] == out["classifier"][0]["label"]
    assert -1 <= why["agreement"]["kendall_tau"] <= 1
