"""What the tests of the gateway's OpenAI-compatible routes share: a sentence to speak and
transcribe, and the check of an OpenAI-shaped error as the official client reports it."""

from __future__ import annotations

import openai

SENTENCE = "The quick brown fox jumps over the lazy dog."


def openai_error_body(exc: openai.APIStatusError, status: int) -> dict:
    """The OpenAI-style error of ``exc``, checked for shape; returns its inner object."""
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err), err
    assert "field" not in err, f"gateway error body: {err}"
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    # the client parsed it: what openai users read
    assert exc.body == err and exc.code == err["code"] and exc.type == err["type"]
    # one id, the same in the header (Serve's proxy sets it) and the body
    assert exc.response.headers.get_list("x-request-id") == [err["request_id"]]
    return err


def openai_client(gateway_url: str) -> openai.OpenAI:
    """The official client on the gateway's ``/v1`` routes (no retries: a failure shows as it
    happened)."""
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0,
                         timeout=120)
