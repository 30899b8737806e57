"""The ``fusion`` command: listings, argument parsing, usage and server errors with their exit
codes, URL and key (``run``, ``stream`` and ``call``: test_cli_run.py)."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from conftest import error_body

from fusion_client.cli import build_inputs, guess_type, main, split_input_args

# ---- listings ----------------------------------------------------------------------------

def test_pipelines_human(fusion):
    r = fusion("pipelines")
    assert r.code == 0
    assert "caption_then_classify  Caption, then classify." in r.out
    assert "inputs:  image: image, labels: list[text]" in r.out
    assert "seed: int = 0" in r.out
    assert "outputs: caption: text, labels: labels" in r.out


def test_pipelines_json(fusion):
    r = fusion("pipelines", "--json")
    data = json.loads(r.out)
    assert [p["name"] for p in data][:2] == ["caption_then_classify", "text_to_image"]
    assert data[1]["inputs"]["seed"] == {"type": "int", "required": False, "default": 0,
                                         "description": None}


def test_models_table_and_json(fusion):
    r = fusion("models")
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "BACKEND", "DEVICE", "DTYPE", "TASKS"]
    assert lines[2].split() == ["text", "text", "embedding", "cuda:0", "fp16", "embed,zero_shot"]
    assert json.loads(fusion("--json", "models").out)[0]["name"] == "captioner"


def test_cache_stats_and_clear(fusion, gateway):
    gateway.route("GET", "/v1/cache/stats", {"backend": "redis", "hits": 3, "misses": 1,
                                             "per_task": {"text/embed": {"hits": 3}}})
    gateway.route("DELETE", "/v1/cache", {"deleted": 4})
    r = fusion("cache-stats")
    assert r.code == 0 and "backend" in r.out and "redis" in r.out
    assert "hit rate 75.0%" in r.out and "text/embed: hits=3" in r.out
    assert json.loads(fusion("cache-stats", "--json").out)["hits"] == 3
    assert fusion("clear-cache").out == "deleted 4 entries\n"
    assert json.loads(fusion("clear-cache", "--json").out) == {"deleted": 4}


def test_health(fusion):
    r = fusion("health")
    assert r.code == 0 and r.out.startswith("ok")


# ---- usage errors (exit 2) ---------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (("run", "text_to_image", "--prompt", "p", "--seed", "abc"), "--seed must be an integer"),
    (("run", "text_to_image", "--prompt", "p", "--guidance", "x"), "--guidance must be a number"),
    (("run", "text_to_image", "--prompt", "p", "--then-caption", "maybe"), "true or false"),
    (("run", "text_to_image", "--prompt", "p", "--colour", "red"), "unknown input --colour"),
    (("run", "caption_then_classify", "--image", "nope.png", "--labels", "a"), "no such file"),
    (("run", "text_to_image", "stray"), "unexpected argument 'stray'"),
    (("run", "text_to_image", "-i", "novalue"), "NAME=VALUE"),
    (("run", "text_to_image", "--prompt"), "--prompt needs a value"),
])
def test_usage_errors_exit_2(fusion, gateway, argv, message):
    r = fusion(*argv)
    assert r.code == 2
    assert message in r.err
    assert gateway.count("POST", f"/v1/pipelines/{argv[1]}") == 0


def test_argparse_errors_exit_2(fusion, capsys):
    assert fusion("frobnicate").code == 2
    assert fusion().code == 2
    assert fusion("models", "--bogus").code == 2
    assert "unrecognized arguments" in fusion("models", "--bogus").err


def test_help_exits_0(fusion, capsys):
    assert fusion("--help").code == 0
    assert "pipelines" in capsys.readouterr().out


def test_server_bad_request_exits_2_with_message_and_request_id(fusion, gateway, cat):
    gateway.route("POST", "/v1/pipelines/caption_then_classify", httpx.Response(
        422, json=error_body("bad_input", "image is not a decodable image", "inputs.image",
                             rid="rid-bad")))
    r = fusion("run", "caption_then_classify", "--image", str(cat), "--labels", "a")
    assert r.code == 2
    assert "error: image is not a decodable image" in r.err
    assert "field: inputs.image" in r.err and "status: 422 (bad_input)" in r.err
    assert "request id: rid-bad" in r.err


# ---- other errors (exit 1) ---------------------------------------------------------------

def test_unknown_pipeline_exits_1(fusion):
    r = fusion("run", "nope", "--x", "1")
    assert r.code == 1
    assert "unknown pipeline 'nope'" in r.err and "caption_then_classify" in r.err


@pytest.mark.parametrize(("status", "code"), [(401, "unauthorized"), (403, "forbidden"),
                                              (500, "internal_error"), (504, "step_timeout")])
def test_server_errors_exit_1(fusion, gateway, status, code):
    gateway.route("GET", "/v1/models", httpx.Response(status, json=error_body(code, "nope",
                                                                              rid="r-x")))
    r = fusion("models")
    assert r.code == 1
    assert "error: nope" in r.err and f"status: {status} ({code})" in r.err
    assert "request id: r-x" in r.err


def test_connection_refused_exits_1(monkeypatch):
    err = io.StringIO()
    argv = ["--url", "http://127.0.0.1:9", "--retries", "0", "--timeout", "2", "models"]
    code = main(argv, stderr=err)
    assert code == 1 and "cannot reach the gateway" in err.getvalue()


# ---- url / key ---------------------------------------------------------------------------

def test_url_and_key_flags_override_env(fusion, gateway, monkeypatch):
    monkeypatch.setenv("FUSION_URL", "http://from-env:1")
    monkeypatch.setenv("FUSION_API_KEY", "env-key")
    fusion("models")
    assert gateway.requests[-1].url.host == "from-env"
    assert gateway.requests[-1].headers["authorization"] == "Bearer env-key"
    fusion("--url", "http://flag:2", "models", "--api-key", "flag-key")
    assert gateway.requests[-1].url.host == "flag"
    assert gateway.requests[-1].headers["authorization"] == "Bearer flag-key"


# ---- helpers -----------------------------------------------------------------------------

def test_split_input_args():
    assert split_input_args(["--a", "1", "--b=x=y", "--flag", "--c", "-5"], ["d=4"]) == \
        [("a", "1"), ("b", "x=y"), ("flag", None), ("c", "-5"), ("d", "4")]


def test_guess_type():
    assert guess_type("image", "x") == "image"
    assert guess_type("labels", "a,b") == "list[text]"
    assert guess_type("text", "3") == "text"
    assert guess_type("steps", "3") == "int"
    assert guess_type("guidance", "0.5") == "float"
    assert guess_type("flag", "true") == "bool"
    assert guess_type("flag", None) == "bool"
    assert guess_type("anything", "words") == "text"


def test_build_inputs_embedding_and_json():
    types = {"vec": "embedding", "meta": "json", "n": "list[int]"}
    assert build_inputs([("vec", "0.5, 1"), ("meta", '{"k": 1}'), ("n", "1,2")], types,
                        "p") == {"vec": [0.5, 1.0], "meta": {"k": 1}, "n": [1, 2]}




# ---- learned fusion (the loop against the real gateway: tests/integration/
# test_learned_fusion_sdk.py) ----------------------------------------------------------------

def test_feedback_usage_errors_and_json(fusion, gateway, tmp_path):
    assert fusion("feedback", "only-an-id").code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "r1", "label": "circle"}\nnot json\n')
    r = fusion("feedback", "import", str(bad))
    assert r.code == 2 and "bad.jsonl:2: not JSON" in r.err
    gateway.route("POST", "/v1/feedback", {"request_id": "r1", "pipeline": "p", "step": "f",
                                           "label": "circle", "weight": 1.0,
                                           "replaced": False, "profile": None,
                                           "served_label": "square"})
    r = fusion("feedback", "r1", "circle")
    assert r.out == "labelled p/f answer r1: circle (served: square)\n"
    assert json.loads(fusion("--json", "feedback", "r1", "circle").out)["label"] == "circle"
