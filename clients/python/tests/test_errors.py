"""Error mapping: HTTP status / error body / stream error code → typed exception."""

from __future__ import annotations

import pickle

import httpx
import pytest
from conftest import error_body

from fusion_client import (
    BadRequest,
    ConnectionFailed,
    Forbidden,
    FusionError,
    NotFound,
    Overloaded,
    ServerError,
    Timeout,
    Unauthorized,
)
from fusion_client._core import check_response, error_from_body


@pytest.mark.parametrize(("status", "code", "cls"), [
    (400, "bad_input", BadRequest),
    (413, "payload_too_large", BadRequest),
    (422, "bad_input", BadRequest),
    (401, "unauthorized", Unauthorized),
    (403, "forbidden", Forbidden),
    (404, "not_found", NotFound),
    (429, "overloaded", Overloaded),
    (503, "overloaded", Overloaded),
    (504, "step_timeout", Timeout),
    (500, "internal_error", ServerError),
    (502, None, ServerError),
])
def test_status_maps_to_typed_error_with_all_fields(gateway, client, status, code, cls):
    body = error_body(code or "x", f"went wrong {status}", field="inputs.image", rid="rid-9")
    gateway.route("GET", "/v1/models", httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        client.models()
    err = info.value
    assert isinstance(err, FusionError)
    assert err.status == status
    assert err.message == f"went wrong {status}"
    assert err.code == (code or "x")
    assert err.field == "inputs.image"
    assert err.request_id == "rid-9"
    assert "rid-9" in str(err) and "inputs.image" in str(err)


def test_request_id_falls_back_to_header():
    body = {"error": {"code": "not_found", "message": "unknown pipeline 'x'"}}
    with pytest.raises(NotFound) as info:
        check_response(404, httpx.Headers({"X-Request-Id": "hdr-1"}),
                       httpx.Response(404, json=body).content)
    assert info.value.request_id == "hdr-1"
    assert info.value.field is None


def test_openai_style_error_body():
    body = {"error": {"message": "bad model", "type": "invalid_request_error",
                      "code": "model_not_found", "param": "model"}}
    err = error_from_body(body, status=404, request_id="r")
    assert isinstance(err, NotFound)
    assert (err.message, err.code, err.field) == ("bad model", "model_not_found", "model")


def test_stream_errors_imply_the_status_of_their_surface():
    """A stream's error event has no status line: the code implies it, and an OpenAI
    route's ``bad_input`` is OpenAI's 400 where the gateway's own routes answer 422."""
    native = error_from_body({"error": {"code": "bad_input", "message": "m", "field": "x"}},
                             status=None, request_id="r")
    openai = error_from_body({"error": {"code": "bad_input", "message": "m", "param": "x",
                                        "type": "invalid_request_error"}},
                             status=None, request_id="r")
    assert isinstance(native, BadRequest) and isinstance(openai, BadRequest)
    assert (native.status, openai.status) == (422, 400)
    assert openai.field == "x"


def test_fastapi_detail_bodies():
    err = error_from_body({"detail": [{"loc": ["body", "inputs", "seed"],
                                       "msg": "not an int"}]}, status=422, request_id=None)
    assert isinstance(err, BadRequest)
    assert (err.message, err.field) == ("not an int", "inputs.seed")
    err = error_from_body({"detail": "Not Found"}, status=404, request_id=None)
    assert isinstance(err, NotFound) and err.message == "Not Found"


def test_non_json_error_body_keeps_text(gateway, client):
    gateway.route("GET", "/v1/models", httpx.Response(502, text="<html>Bad gateway</html>",
                                                      headers={"X-Request-Id": "h"}))
    with pytest.raises(ServerError) as info:
        client.models()
    assert "Bad gateway" in info.value.message
    assert info.value.status == 502 and info.value.request_id == "h"


def test_other_4xx_is_bad_request_and_not_retried(gateway, client, sleeps):
    gateway.route("GET", "/v1/models", httpx.Response(405, json={"detail": "Method Not Allowed"}))
    with pytest.raises(BadRequest):
        client.models()
    assert gateway.count("GET", "/v1/models") == 1 and sleeps == []


def test_success_with_non_json_body_is_server_error(gateway, client):
    gateway.route("GET", "/v1/models", httpx.Response(200, text="not json"))
    with pytest.raises(ServerError, match="not JSON"):
        client.models()


def test_listing_without_list_is_server_error(gateway, client):
    gateway.route("GET", "/v1/models", {"oops": 1})
    with pytest.raises(ServerError, match="models"):
        client.models()


@pytest.mark.parametrize(("code", "cls", "status"), [
    ("bad_input", BadRequest, 422), ("payload_too_large", BadRequest, 413),
    ("not_found", NotFound, 404), ("overloaded", Overloaded, 503),
    ("step_timeout", Timeout, 504), ("internal_error", ServerError, 500),
    ("something_new", ServerError, None),
])
def test_stream_error_codes_map_without_status(code, cls, status):
    err = error_from_body(error_body(code, "m", rid="r"), status=None, request_id="hdr")
    assert type(err) is cls
    assert err.status == status and err.code == code and err.request_id == "r"


def test_errors_pickle_with_their_fields():
    err = BadRequest("bad", status=422, code="bad_input", field="inputs.x", request_id="r")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BadRequest
    assert (back.message, back.status, back.code, back.field, back.request_id) == \
        ("bad", 422, "bad_input", "inputs.x", "r")


def test_default_codes():
    assert ConnectionFailed("x").code == "connection_failed"
    assert Timeout("x").code == "step_timeout"
    assert repr(NotFound("gone", status=404)).startswith("NotFound('gone', status=404")


def test_a_model_crash_is_step_failed_naming_the_step(gateway, client):
    from fusion_client import StepFailed

    body = error_body("step_failed", "step 'caption' failed: RuntimeError", field="steps.caption")
    gateway.route("GET", "/v1/models", httpx.Response(502, json=body))
    with pytest.raises(StepFailed) as info:
        client.models()
    assert isinstance(info.value, ServerError) and info.value.field == "steps.caption"
    assert info.value.status == 502 and info.value.code == "step_failed"
    err = error_from_body({"error": {"code": "step_failed", "message": "m"}}, status=None,
                          request_id=None)
    assert type(err) is StepFailed and err.status == 502  # as an SSE error event
