"""The SDK's ``chat``/``stream_chat``, pipeline ``token`` events, and ``fusion chat`` (one
prompt, stdin, and a conversation on a terminal), against an in-process gateway with the
real tiny LLM."""

from __future__ import annotations

import io
import json
import os

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion_client import AsyncFusionClient, BadRequest, FusionClient, TokenEvent  # noqa: E402
from fusion_client.cli import main  # noqa: E402

from fusion.http.app import create_api  # noqa: E402
from tests.fakes import png  # noqa: E402
from tests.llm_inprocess import llm_gateway  # noqa: E402


@pytest.fixture
def transport(models):
    gw = llm_gateway(models)
    return httpx.ASGITransport(app=create_api(lambda: gw))


@pytest.fixture
def client(transport):
    with FusionClient("http://gw", transport=transport, retries=0) as c:
        yield c


def test_chat_and_stream_chat_agree(client):
    result = client.chat("what is in this image?", temperature=0, max_tokens=10)
    assert result.text and result.finish_reason == "length" and result.model == "llm"
    assert result.usage.completion_tokens == 10 and result.choices == [result.text]
    pieces = list(client.stream_chat("what is in this image?", temperature=0, max_tokens=10))
    assert len(pieces) > 2 and "".join(pieces) == result.text
    messages = [{"role": "user", "content": "what is in this image?"}]
    assert client.chat(messages, temperature=0, max_tokens=10).text == result.text


def test_chat_errors_are_typed_and_name_the_field(client):
    with pytest.raises(BadRequest) as info:
        client.chat([{"role": "robot", "content": "hi"}])
    assert info.value.field == "messages[0].role" and info.value.status == 400  # OpenAI's
    with pytest.raises(BadRequest) as info:
        list(client.stream_chat("hi", max_tokens=0))
    assert info.value.field == "max_tokens"


async def test_async_twins(transport):
    async with AsyncFusionClient("http://gw", transport=transport, retries=0) as client:
        whole = await client.chat("hello", temperature=0, max_tokens=6)
        pieces = [p async for p in client.stream_chat("hello", temperature=0, max_tokens=6)]
    assert "".join(pieces) == whole.text


def test_pipeline_stream_yields_token_events(client):
    events = list(client.stream("ask_image", image=png(), question="what is it?",
                                max_tokens=8))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert tokens and {e.step for e in tokens} == {"answer"}
    assert "".join(e.text for e in tokens) == events[-1].result.outputs["answer"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _cli(transport, argv: list[str], stdin: io.StringIO, monkeypatch) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdin", stdin)
    code = main(["--url", "http://gw", *argv], transport=transport, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_chat_one_prompt_stdin_and_json(client, transport, monkeypatch):
    expected = client.chat("hello there", temperature=0, max_tokens=8).text
    code, out, _ = _cli(transport, ["chat", "hello there", "--temperature", "0",
                                    "--max-tokens", "8"], io.StringIO(""), monkeypatch)
    assert code == 0 and out == expected + "\n"
    code, out, _ = _cli(transport, ["chat", "--temperature", "0", "--max-tokens", "8"],
                        io.StringIO("hello there"), monkeypatch)
    assert code == 0 and out == expected + "\n"
    code, out, _ = _cli(transport, ["chat", "hello there", "--temperature", "0",
                                    "--max-tokens", "8", "--json"], io.StringIO(""),
                        monkeypatch)
    assert code == 0 and json.loads(out)["usage"]["completion_tokens"] == 8
    code, _, err = _cli(transport, ["chat", "hi", "--max-tokens", "0"], io.StringIO(""),
                        monkeypatch)
    assert code == 2 and "field: max_tokens" in err


def test_cli_chat_conversation_on_a_terminal(transport, models, monkeypatch):
    code, out, err = _cli(transport, ["chat", "--temperature", "0", "--max-tokens", "5"],
                          _Tty("hello\n\nand then?\n/exit\n"), monkeypatch)
    assert code == 0 and err.count("you> ") == 4
    answers = out.splitlines()
    assert len(answers) == 2 and all(answers)
    assert models.calls["llm/chat"] == 2  # the blank line asked nothing


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}


def test_chat_with_a_json_schema_and_tools(client):
    import jsonschema
    from fusion_client import json_schema

    result = client.chat("who is it?", temperature=0, max_tokens=100,
                         response_format=json_schema(PERSON, "person"))
    assert result.finish_reason == "stop"
    jsonschema.validate(result.parsed, PERSON)
    assert result.parsed == json.loads(result.text)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": PERSON}}]
    called = client.chat("who is it?", temperature=0, max_tokens=100, tools=tools,
                         tool_choice={"type": "function", "function": {"name": "lookup"}})
    [call] = called.tool_calls
    assert call["function"]["name"] == "lookup" and called.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call["function"]["arguments"]), PERSON)


def test_cli_chat_json_schema_file(transport, monkeypatch, tmp_path):
    import jsonschema

    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    for extra in ([], ["--no-stream"]):
        code, out, _ = _cli(transport, ["chat", "who is it?", "--temperature", "0",
                                        "--max-tokens", "100", "--json-schema", str(schema),
                                        *extra], io.StringIO(""), monkeypatch)
        assert code == 0
        jsonschema.validate(json.loads(out), PERSON)
    code, out, _ = _cli(transport, ["chat", "who is it?", "--temperature", "0",
                                    "--max-tokens", "100", "--json-schema", str(schema),
                                    "--json"], io.StringIO(""), monkeypatch)
    jsonschema.validate(json.loads(out)["parsed"], PERSON)
    (tmp_path / "bad.json").write_text("{nope")
    code, _, err = _cli(transport, ["chat", "hi", "--json-schema", str(tmp_path / "bad.json")],
                        io.StringIO(""), monkeypatch)
    assert code == 2 and "--json-schema" in err
    (tmp_path / "odd.json").write_text(json.dumps({"type": "strin"}))
    code, _, err = _cli(transport, ["chat", "hi", "--json-schema", str(tmp_path / "odd.json")],
                        io.StringIO(""), monkeypatch)
    assert code == 2 and "response_format" in err
