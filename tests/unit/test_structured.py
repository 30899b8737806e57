"""``fusion.structured``: OpenAI's response_format / tools checked in pure Python, and the
model's ``<tool_call>`` blocks parsed into OpenAI ``tool_calls``."""

from __future__ import annotations

import json

import pytest

from fusion.errors import BadInput
from fusion.structured import check_response_format, check_tools, parse_tool_calls, safe_prefix

TOOLS = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "b"}}]


def test_response_formats():
    assert check_response_format(None) is None
    assert check_response_format({"type": "text"}) is None
    assert check_response_format({"type": "json_object"}).schema == {"type": "object"}
    fmt = check_response_format({"type": "json_schema", "json_schema": {
        "name": "p", "schema": {"type": "integer"}, "strict": True}})
    assert (fmt.schema, fmt.strict, fmt.name) == ({"type": "integer"}, True, "p")


@pytest.mark.parametrize("value, field", [
    ("json", "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "a b"}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"schema": []}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"strict": "yes"}},
     "response_format.json_schema.strict"),
])
def test_bad_response_formats_name_the_field(value, field):
    with pytest.raises(BadInput) as info:
        check_response_format(value)
    assert info.value.field == field


def test_tool_choices():
    assert check_tools(TOOLS).choice == "auto" and check_tools(TOOLS).parallel
    named = check_tools(TOOLS, {"type": "function", "function": {"name": "b"}}, False)
    assert named.choice == "b" and named.forced and not named.parallel
    assert [f["name"] for f in named.called()] == ["b"]
    assert check_tools(TOOLS, "required").forced and not check_tools(TOOLS, "none").forced
    assert named.template_tools()[1]["function"]["parameters"] == {"type": "object",
                                                                    "properties": {}}


@pytest.mark.parametrize("tools, choice, parallel, field", [
    ([], None, None, "tools"),
    ([{"type": "retrieval"}], None, None, "tools[0]"),
    ([TOOLS[0], TOOLS[0]], None, None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "x", "parameters": 3}}], None, None,
     "tools[0].function.parameters"),
    (TOOLS, "sometimes", None, "tool_choice"),
    (TOOLS, None, "yes", "parallel_tool_calls"),
    (None, "auto", None, "tool_choice"),
])
def test_bad_tools_name_the_field(tools, choice, parallel, field):
    with pytest.raises(BadInput) as info:
        check_tools(tools, choice, parallel)
    assert info.value.field == field


def test_parse_tool_calls():
    tools = check_tools(TOOLS)
    text = ('Let me look.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    content, calls = parse_tool_calls(text, tools)
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    assert len({c["id"] for c in calls}) == 2 and all(c["type"] == "function" for c in calls)
    # one call only without parallel calls; unknown functions and bad JSON stay text
    assert len(parse_tool_calls(text, check_tools(TOOLS, None, False))[1]) == 1
    for odd in ('<tool_call>{"name": "zz", "arguments": {}}</tool_call>',
                "<tool_call>{nope</tool_call>", "no calls at all"):
        assert parse_tool_calls(odd, tools) == (odd, [])


def test_safe_prefix_holds_back_what_may_start_a_call():
    assert safe_prefix("hello") == 5
    assert safe_prefix("hello <tool") == 6
    assert safe_prefix("hello <tool_call>{") == 6
    assert safe_prefix("a < b") == 5
