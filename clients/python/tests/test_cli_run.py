"""The ``fusion`` command's ``run``, ``stream`` and ``call``: inputs sent, outputs written and
printed (``fusion`` and ``cat`` fixtures: conftest.py)."""

from __future__ import annotations

import io
import json

import httpx
from conftest import LABELS, PNG, b64, error_body, pipeline_result, sse


def classify_result(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=pipeline_result(
        {"caption": "a cat on a mat", "labels": LABELS},
        {"caption": "text", "labels": "labels"}, cache="miss", rid="rid-cli"))




# ---- run ---------------------------------------------------------------------------------

def test_run_caption_then_classify(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", classify_result)
    r = fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "cat, dog")
    assert r.code == 0, r.err
    assert gateway.bodies()[-1] == {"inputs": {"image": b64(PNG), "labels": ["cat", "dog"]}}
    assert r.out.splitlines() == ["caption: a cat on a mat", "labels:", "  cat  0.9000",
                                  "  dog  0.1000"]
    assert "steps: caption 12 ms" in r.err
    assert "cache: miss" in r.err and "request id: rid-cli" in r.err


def test_run_json_output(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", classify_result)
    r = fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "cat",
               "--json")
    data = json.loads(r.out)
    assert data["outputs"]["labels"] == LABELS
    assert data["request_id"] == "rid-cli" and data["cache"] == "miss"
    assert data["steps"]["caption"]["ms"] == 12.5
    assert r.err == ""


def test_run_text_to_image_writes_output(fusion, gateway, tmp_path):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result(
        {"image": b64(PNG), "caption": None}, {"image": "image", "caption": "text"}))
    out = tmp_path / "out.png"
    r = fusion("run", "text_to_image", "--prompt", "a red square", "--seed", "1",
               "-o", str(out))
    assert r.code == 0, r.err
    assert gateway.bodies()[-1] == {"inputs": {"prompt": "a red square", "seed": 1}}
    assert out.read_bytes() == PNG
    assert f"image: written to {out} (PNG 2x1, {len(PNG)} bytes)" in r.out
    assert "caption: (none)" in r.out


def test_run_json_replaces_written_images_with_paths(fusion, gateway, tmp_path):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result(
        {"image": b64(PNG)}, {"image": "image"}))
    out = tmp_path / "img"
    r = fusion("run", "text_to_image", "--prompt", "p", "-o", str(out), "--json")
    data = json.loads(r.out)
    assert data["outputs"]["image"] == {"path": str(out) + ".png", "bytes": len(PNG)}
    assert (tmp_path / "img.png").read_bytes() == PNG
    # without -o the base64 is kept
    data = json.loads(fusion("run", "text_to_image", "--prompt", "p", "--json").out)
    assert data["outputs"]["image"] == b64(PNG)


def test_run_without_output_flag_describes_the_image(fusion, gateway):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result(
        {"image": b64(PNG)}, {"image": "image"}))
    r = fusion("run", "text_to_image", "--prompt", "p")
    assert "image: <PNG 2x1" in r.out and "use -o PATH to save" in r.out


def test_run_several_images_get_suffixed_names(fusion, gateway, tmp_path, cat):
    gateway.route("POST", "/v1/pipelines/gallery", pipeline_result(
        {"images": [b64(PNG), b64(PNG)], "thumb": b64(PNG), "speech": b64(b"RIFF\0\0\0\0WAVE"),
         "vec": [0.5, 0.25, 0.125, 1, 2]},
        {"images": "list[image]", "thumb": "image", "speech": "audio", "vec": "embedding"}))
    r = fusion("run", "gallery", "--images", f"{cat},{cat}", "-o", str(tmp_path / "out.png"))
    assert r.code == 0, r.err
    assert gateway.bodies()[-1] == {"inputs": {"images": [b64(PNG), b64(PNG)]}}
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert names == ["out_images_0.png", "out_images_1.png", "out_speech.png", "out_thumb.png"]
    assert "vec: [0.5000, 0.2500, 0.1250, 1.0000, ...] (5 dims)" in r.out


def test_run_output_folder(fusion, gateway, tmp_path):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result(
        {"image": b64(PNG)}, {"image": "image"}))
    r = fusion("run", "text_to_image", "--prompt", "p", "-o", str(tmp_path))
    assert r.code == 0 and (tmp_path / "image.png").read_bytes() == PNG


def test_input_forms(fusion, gateway):
    gateway.route("POST", "/v1/pipelines/text_to_image", pipeline_result({}, {}))
    r = fusion("run", "text_to_image", "--prompt=a=b", "--negative-prompt", "blurry",
               "--seed", "-3", "--guidance", "2.5", "--then_caption", "-i", "seed=4",
               "--no-store")
    assert r.code == 0, r.err
    assert gateway.bodies()[-1] == {"inputs": {"prompt": "a=b", "negative_prompt": "blurry",
                                               "seed": 4, "guidance": 2.5,
                                               "then_caption": True}}
    assert gateway.requests[-1].headers["cache-control"] == "no-store"
    fusion("run", "text_to_image", "--prompt", "p", "--then-caption", "no", "--no-cache")
    assert gateway.bodies()[-1]["inputs"]["then_caption"] is False
    assert gateway.requests[-1].headers["cache-control"] == "no-cache"


def test_list_inputs_from_json_and_repeats(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", classify_result)
    fusion("run", "caption_then_classify", "--image", str(cat), "--labels", '["a,b", "c"]')
    assert gateway.bodies()[-1]["inputs"]["labels"] == ["a,b", "c"]
    fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "a",
           "--labels", "b,c")
    assert gateway.bodies()[-1]["inputs"]["labels"] == ["a", "b", "c"]


# ---- stream ------------------------------------------------------------------------------

STREAM = sse(("start", {"step": "generate", "model": "diffusion", "task": "generate"}),
             ("progress", {"step": "generate", "progress": 1, "total": 4}),
             ("progress", {"step": "generate", "progress": 4, "total": 4}),
             ("step", {"step": "generate", "ms": 250.0, "cached": False}),
             ("step", {"step": "caption", "ms": 0, "skipped": True}),
             ("result", pipeline_result({"image": b64(PNG), "caption": None},
                                        {"image": "image", "caption": "text"}, rid="rid-st")))


def test_stream_shows_progress_then_result(fusion, gateway, tmp_path):
    gateway.route("POST", "/v1/pipelines/text_to_image", httpx.Response(
        200, content=STREAM, headers={"Content-Type": "text/event-stream"}))
    out = tmp_path / "o.png"
    r = fusion("stream", "text_to_image", "--prompt", "a red square", "-o", str(out))
    assert r.code == 0, r.err
    assert gateway.requests[-1].url.params["stream"] == "true"
    err_lines = r.err.splitlines()
    assert err_lines[0] == "step generate started (diffusion/generate)"
    assert err_lines[1] == "generate [########----------------------] 1/4  25%"
    assert err_lines[2] == "generate [##############################] 4/4 100%"
    assert err_lines[3] == "step generate done in 250 ms"
    assert err_lines[4] == "step caption done in 0.0 ms (skipped)"
    assert "request id: rid-st" in err_lines[5]
    assert out.read_bytes() == PNG and f"image: written to {out}" in r.out


def test_stream_json_is_one_event_per_line(fusion, gateway):
    gateway.route("POST", "/v1/pipelines/text_to_image", httpx.Response(
        200, content=STREAM, headers={"Content-Type": "text/event-stream"}))
    r = fusion("stream", "text_to_image", "--prompt", "p", "--json")
    events = [json.loads(line) for line in r.out.splitlines()]
    assert [e["event"] for e in events] == ["start", "progress", "progress", "step", "step",
                                            "result"]
    assert events[0] == {"event": "start", "step": "generate", "model": "diffusion",
                         "task": "generate"}
    assert events[1] == {"event": "progress", "step": "generate", "progress": 1.0, "total": 4.0}
    assert events[-1]["outputs"]["image"] == b64(PNG)


def test_stream_error_event(fusion, gateway):
    gateway.route("POST", "/v1/pipelines/text_to_image", httpx.Response(
        200, headers={"Content-Type": "text/event-stream"},
        content=sse(("progress", {"step": "generate", "progress": 1, "total": 2}),
                    ("error", error_body("step_timeout", "generate took too long",
                                         rid="rid-t")))))
    r = fusion("stream", "text_to_image", "--prompt", "p")
    assert r.code == 1
    assert "error: generate took too long" in r.err and "request id: rid-t" in r.err


def test_progress_bar_redraws_on_a_terminal():
    from fusion_client.cli import ProgressBar
    from fusion_client.types import ProgressEvent

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = ProgressBar(stream)
    bar.update(ProgressEvent(step="g", progress=1, total=2))
    bar.update(ProgressEvent(step="g", progress=2, total=2))
    bar.end()
    assert stream.getvalue().count("\r") == 2 and stream.getvalue().endswith("100%\n")
    bar.update(ProgressEvent(step="g", progress=3))
    assert stream.getvalue().endswith("\rg 3")


# ---- call --------------------------------------------------------------------------------

def test_call_guesses_types(fusion, gateway, cat):
    gateway.route("POST", "/v1/models/text/embed", {
        "outputs": {"embedding": [0.1, 0.2]}, "types": {"embedding": "embedding"},
        "model": "text", "task": "embed", "ms": 3.0, "cached": True, "request_id": "rc"})
    r = fusion("call", "text", "embed", "--text", "42")
    assert r.code == 0, r.err
    assert gateway.bodies()[-1] == {"inputs": {"text": "42"}}
    assert r.out == "embedding: [0.1000, 0.2000] (2 dims)\n"
    assert "text/embed 3.0 ms (cached)" in r.err and "request id: rc" in r.err
    gateway.route("POST", "/v1/models/diffusion/generate", {
        "outputs": {"image": b64(PNG)}, "types": {"image": "image"}})
    fusion("call", "diffusion", "generate", "--prompt", "7", "--steps", "2",
           "--guidance", "1.5", "--negative-prompt", "x")
    assert gateway.bodies()[-1] == {"inputs": {"prompt": "7", "steps": 2, "guidance": 1.5,
                                               "negative_prompt": "x"}}
    gateway.route("POST", "/v1/models/clip/zero_shot", {
        "outputs": {"labels": LABELS}, "types": {"labels": "labels"}})
    r = fusion("call", "clip", "zero_shot", "--image", str(cat), "--labels", "cat,dog",
               "--json")
    assert gateway.bodies()[-1] == {"inputs": {"image": b64(PNG), "labels": ["cat", "dog"]}}
    assert json.loads(r.out)["outputs"]["labels"] == LABELS


def test_call_unknown_model_exits_1(fusion, gateway):
    gateway.route("POST", "/v1/models/nope/embed", httpx.Response(
        404, json=error_body("not_found", "unknown model 'nope'", "model")))
    r = fusion("call", "nope", "embed", "--text", "x")
    assert r.code == 1 and "unknown model 'nope'" in r.err


# ---- fusion explanations -------------------------------------------------------------------

EXPLANATION = {
    "method": "weighted_mean", "sources": ["cnn", "clip"], "weights": [0.7, 0.3],
    "labels": [{"label": "cat", "score": 0.8, "contributions": {"cnn": 0.63, "clip": 0.17},
                "ranks": {"cnn": 1, "clip": 2}},
               {"label": "dog", "score": 0.2, "contributions": {"cnn": 0.07, "clip": 0.13},
                "ranks": {"cnn": 2, "clip": 1}}],
    "agreement": {"top1": {"cnn": "cat", "clip": "dog"}, "top1_agreement": 0.0,
                  "kendall_tau": -1.0, "pairs": []}}


def explained_result(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=pipeline_result(
        {"labels": LABELS, "explanation": EXPLANATION}, {"labels": "labels",
                                                         "explanation": "json"}))


def test_run_explain_prints_the_contribution_table(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", explained_result)
    r = fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "cat, dog",
               "--explain")
    assert r.code == 0, r.err
    table = r.out.splitlines()[r.out.splitlines().index("explanation:") + 1:]
    assert table == [
        "  method weighted_mean; weights cnn 0.70, clip 0.30",
        "  LABEL  FUSED  cnn         clip",
        "  cat    0.800  0.630 (#1)  0.170 (#2)",
        "  dog    0.200  0.070 (#2)  0.130 (#1)",
        "  top-1: cnn=cat, clip=dog; top-1 agreement 0%; Kendall tau -1.00"]


def test_run_without_explain_hides_the_explanation(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", explained_result)
    r = fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "cat")
    assert "explanation: (use --explain to show)" in r.out.splitlines()


def test_sdk_result_lists_its_explanations():
    from fusion_client import PipelineResult

    result = PipelineResult(outputs={"labels": LABELS, "explanation": EXPLANATION})
    assert result.explanations == {"explanation": EXPLANATION}
