"""The learned-fusion loop over HTTP on the built-in ``shapes_fused`` pipeline, on both stores.

The embedded runtime's gateway (the same Gateway, executor and HTTP app a Serve router runs)
is driven in-process over ASGI, with the default profile's two models of that pipeline: the
trained shapes CNN (informative) and the tiny random CLIP (uninformative). A second gateway
over the same database stands for a second router replica. Images are drawn here, in another
style than the CNN's training generator (no background noise, other sizes). The loop:
answers → feedback → fit (held-out evaluation) → activate (seen by both replicas) → fresh
images: the learned profile is within 2 points of the best single source and above the
hand-written fusion, with a lower calibration error → rollback → shadow; and each bad input
is a 4xx naming its field.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from fusion.core.gateway import Gateway
from fusion.core.keys import hash_key
from fusion.core.startup import load_config, start_gateway
from fusion.embedded.models import LocalModels
from fusion.http.app import create_api
from fusion.observe import MemoryRecorder
from fusion.pipeline.fuse import fuse_labels
from fusion.pipeline.learn import metrics

pytestmark = pytest.mark.models

LABELS = ["circle", "square", "triangle", "cross"]
PIPELINE = "shapes_fused"
ADMIN_KEY = "learn-admin-key"  # fitting and activating are admin routes
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# the same steps under another name: a pipeline whose labels are all one class
COPY = {"name": "shapes_copy", "inputs": {"image": "image", "labels": "list[text]"},
        "steps": {"cnn": {"model": "shapes", "task": "classify",
                          "with": {"image": "$inputs.image"}},
                  "clip": {"model": "clip", "task": "zero_shot",
                           "with": {"image": "$inputs.image", "labels": "$inputs.labels"}},
                  "fused": {"fuse": {"weights": [0.5, 0.5], "explain": True},
                            "with": {"labels": ["$steps.cnn.labels", "$steps.clip.labels"]}}},
        "outputs": {"labels": "$steps.fused.labels"}}


def picture(label: int, rng: np.random.Generator) -> bytes:
    """A PNG of one shape drawn at 48x48 on heavier noise than the CNN was trained on, then
    shrunk to 32x32 (softer edges): a shift the CNN meets unsure and biased, as a model
    meets its users' own pictures."""
    noise = rng.integers(0, 100, (48, 48, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    r = int(rng.integers(6, 12))
    cx, cy = (int(v) for v in rng.integers(r + 2, 48 - r - 2, 2))
    colour = tuple(int(v) for v in rng.integers(90, 256, 3))
    shape = LABELS[label]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    buf = io.BytesIO()
    img.resize((32, 32), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def images(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(LABELS[y], base64.b64encode(picture(int(y), rng)).decode())
            for y in rng.integers(0, 4, n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = load_config({"models": [
        {"name": "shapes", "family": "image_classify", "source": "tiny:shapes-cnn"},
        {"name": "clip", "family": "clip", "source": "tiny:clip"}]})
    return LocalModels(config, None)


@pytest.fixture
async def replicas(models, database_url):
    """Two router replicas (gateways) over one database, each with its HTTP app."""
    args = {"models": [{"name": "shapes", "family": "image_classify",
                        "source": "tiny:shapes-cnn"},
                       {"name": "clip", "family": "clip", "source": "tiny:clip"}],
            "pipelines": [COPY], "database": {"url": database_url},
            "feedback": {"poll_s": 0.2},
            "auth": {"anonymous": True, "admin_key_hashes": [hash_key(ADMIN_KEY)]},
            "observability": {"access_log": "off"}}
    config = load_config(args)
    recorder = MemoryRecorder()
    first = start_gateway(config, models, recorder)
    second = Gateway(config, models)  # no cache: every answer computed
    clients = []
    for gw in (first, second):
        app = create_api(lambda gw=gw: gw)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://replica", timeout=60))
    yield clients, recorder
    for c in clients:
        await c.aclose()
    first.learning.close()
    second.learning.close()


async def ask(client: httpx.AsyncClient, image: str, pipeline: str = PIPELINE,
              labels: list[str] | None = None) -> dict:
    inputs = {"image": image, **({"labels": labels} if labels else {})}
    r = await client.post(f"/v1/pipelines/{pipeline}", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return r.json()


def dist(labels: list[dict]) -> np.ndarray:
    scores = {x["label"]: x["score"] for x in labels}
    p = np.array([scores[k] for k in LABELS])
    return p / p.sum()


def scored(answers: list[tuple[str, dict]], key) -> dict[str, float]:
    probs = [key(out) for _, out in answers]
    return metrics(probs, [LABELS.index(t) for t, _ in answers], np.ones(len(answers)))


async def test_feedback_fit_activate_evaluate_rollback_shadow(replicas):
    (one, two), recorder = replicas
    # 1. answers under the hand-written weights, labelled
    for truth, image in images(200, seed=101):
        out = await ask(one, image)
        assert out["outputs"]["explanation"]["profile"] is None
        r = await one.post("/v1/feedback", json={"request_id": out["request_id"],
                                                 "label": truth})
        assert r.status_code == 201, r.text
        assert r.json()["replaced"] is False and r.json()["profile"] is None
    assert recorder.count("fusion_feedback_total", pipeline=PIPELINE,
                          profile="handwritten") == 200

    # 2. fit: evaluated on a held-out split
    r = await one.post(f"/v1/pipelines/{PIPELINE}/fusion/fit", json={}, headers=ADMIN)
    assert r.status_code == 201, r.text
    fitted = r.json()
    ev, profile = fitted["evaluation"], fitted["profile"]
    assert ev["held_out"] and ev["n_test"] >= 20
    best = max(ev["sources"][s]["accuracy"] for s in ("cnn", "clip"))
    assert ev["learned"]["accuracy"] >= best - 0.02
    # the held-out split is ~50 answers chosen by random request ids: accuracy can tie (seen
    # in CI: 0.786 both) where log-loss cannot; the strict accuracy claim is on the 150 fresh
    # images below
    assert ev["learned"]["accuracy"] >= ev["handwritten"]["accuracy"]
    assert ev["learned"]["log_loss"] < ev["handwritten"]["log_loss"]
    assert fitted["params"]["weights"][0] > fitted["params"]["weights"][1]  # cnn over clip

    # a picture answered (and cached) before the promotion
    _, before_image = images(1, seed=7)[0]
    cached = await ask(one, before_image)
    assert (await ask(one, before_image))["cache"] == "hit"

    # 3. activate on one replica: the other serves it within poll_s, without a restart
    r = await one.post(f"/v1/pipelines/{PIPELINE}/fusion/profiles/{profile}/activate",
                       headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "active"
    deadline = time.monotonic() + 30
    while (await ask(two, before_image))["outputs"]["explanation"]["profile"] is None:
        assert time.monotonic() < deadline, "the second replica never saw the promotion"
        await asyncio.sleep(0.1)
    after = await ask(one, before_image)  # a new cache key: not the old profile's answer
    assert after["outputs"]["explanation"]["profile"]["id"] == profile
    assert after["outputs"]["labels"] != cached["outputs"]["labels"]
    assert set(after["outputs"]["explanation"]["profile"]["weights"]) == {"cnn", "clip"}

    # 4. fresh images: learned vs each source and the hand-written fusion
    fresh = [(truth, await ask(two, image)) for truth, image in images(150, seed=202)]
    learned = scored(fresh, lambda o: dist(o["outputs"]["labels"]))
    cnn = scored(fresh, lambda o: dist(o["outputs"]["cnn"]))
    clip = scored(fresh, lambda o: dist(o["outputs"]["clip"]))
    hand = scored(fresh, lambda o: dist(fuse_labels([o["outputs"]["cnn"],
                                                     o["outputs"]["clip"]], [0.5, 0.5])))
    print(f"fresh images: learned {learned}, cnn {cnn}, clip {clip}, handwritten {hand}")
    assert learned["accuracy"] >= max(cnn["accuracy"], clip["accuracy"]) - 0.02
    assert learned["accuracy"] > hand["accuracy"]
    assert learned["ece"] < hand["ece"]
    for truth, out in fresh[:30]:  # live accuracy of the profile, from its feedback
        r = await two.post("/v1/feedback", json={"request_id": out["request_id"],
                                                 "label": truth})
        assert r.json()["profile"] == profile
    listed = (await one.get(f"/v1/pipelines/{PIPELINE}/fusion/profiles")).json()
    mine = next(p for p in listed["profiles"] if p["id"] == profile)
    assert listed["active"] == {"fused": profile} and mine["state"] == "active"
    assert mine["live"]["labelled"] == 30 and mine["live"]["accuracy"] > 0.6
    assert mine["evaluation"]["learned"] == ev["learned"]

    # 5. rollback to the hand-written weights, then the profile as the shadow
    r = await one.post(f"/v1/pipelines/{PIPELINE}/fusion/profiles/handwritten/activate",
                       headers=ADMIN)
    assert r.status_code == 200
    assert (await ask(one, before_image))["outputs"]["explanation"]["profile"] is None
    r = await one.post(f"/v1/pipelines/{PIPELINE}/fusion/profiles/{profile}/activate",
                       json={"shadow": True}, headers=ADMIN)
    assert r.json()["state"] == "shadow"
    for truth, image in images(20, seed=303):
        out = await ask(one, image)
        assert out["outputs"]["explanation"]["profile"] is None  # answers unchanged
        await one.post("/v1/feedback", json={"request_id": out["request_id"], "label": truth})
    listed = (await one.get(f"/v1/pipelines/{PIPELINE}/fusion/profiles")).json()
    mine = next(p for p in listed["profiles"] if p["id"] == profile)
    assert listed["shadow"] == {"fused": profile} and listed["active"] == {}
    assert mine["shadow"]["answers"] == 20 and mine["shadow"]["labelled"] == 20
    assert 0 <= mine["shadow"]["agreement"] <= 1 and mine["shadow"]["accuracy"] > 0.6


async def test_bad_feedback_and_fits_are_4xx_naming_the_field(replicas):
    (one, _), _ = replicas
    truth, image = images(1, seed=5)[0]
    out = await ask(one, image)
    rid = out["request_id"]

    async def refused(path: str, body: dict, status: int, field: str) -> None:
        r = await one.post(path, json=body, headers=ADMIN)
        assert r.status_code == status, r.text
        assert r.json()["error"]["field"] == field, r.text

    await refused("/v1/feedback", {"request_id": "no-such-request", "label": "circle"}, 404,
                  "request_id")
    await refused("/v1/feedback", {"request_id": rid, "label": "hexagon"}, 422, "label")
    await refused("/v1/feedback", {"request_id": rid, "label": truth,
                                   "pipeline": "shapes_copy"}, 422, "pipeline")
    await refused("/v1/feedback", {"request_id": rid, "label": truth, "weight": -1}, 422,
                  "weight")
    await refused("/v1/feedback", {"label": truth}, 422, "request_id")
    await refused(f"/v1/pipelines/{PIPELINE}/fusion/profiles/fp-nothing/activate", {}, 404,
                  "profile")
    await refused(f"/v1/pipelines/{PIPELINE}/fusion/fit", {}, 422, "feedback")  # too few
    no_admin = await one.post(f"/v1/pipelines/{PIPELINE}/fusion/fit", json={})
    assert no_admin.status_code == 401  # fitting and promotion need an admin key
    # labels outside the request's own: two labels offered, a third sent
    small = await ask(one, image, labels=["circle", "square"])
    r = await one.post("/v1/feedback", json={"request_id": small["request_id"],
                                             "label": "triangle"})
    # the CNN scores all four of its classes: they were offered by the answer
    assert r.status_code == 201
    # a duplicate replaces the earlier label
    r1 = await one.post("/v1/feedback", json={"request_id": rid, "label": "circle"})
    r2 = await one.post("/v1/feedback", json={"request_id": rid, "label": truth})
    assert (r1.status_code, r2.status_code) == (201, 201) and r2.json()["replaced"]
    # one class only
    for _, img in images(24, seed=9):
        copy = await ask(one, img, pipeline="shapes_copy", labels=LABELS)
        await one.post("/v1/feedback", json={"request_id": copy["request_id"],
                                             "label": "circle"})
    await refused("/v1/pipelines/shapes_copy/fusion/fit", {}, 422, "feedback.label")
    await refused("/v1/pipelines/embed/fusion/fit", {}, 404, "pipeline")
