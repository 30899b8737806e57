"""LangChain's ``ChatOpenAI`` against the gateway (the real tiny LLM behind the router):
``bind_tools`` and ``with_structured_output`` are how agents use a chat model."""

from __future__ import annotations

import os

import httpx
import jsonschema
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.http.app import create_api  # noqa: E402
from tests.llm_inprocess import llm_gateway  # noqa: E402


class Person(BaseModel):
    """A person in the photo."""

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=99)


WEATHER = {"type": "object", "required": ["city", "days"], "additionalProperties": False,
           "properties": {"city": {"type": "string", "maxLength": 10},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "forecast",
                                         "parameters": WEATHER}}


def _chat(models) -> tuple[ChatOpenAI, httpx.AsyncClient]:
    gw = llm_gateway(models)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                             base_url="http://gw")
    return ChatOpenAI(model="llm", base_url="http://gw/v1", api_key="unused", temperature=0,
                      max_tokens=120, max_retries=0, http_async_client=http), http


async def test_with_structured_output_returns_the_model(models):
    chat, http = _chat(models)
    async with http:
        person = await chat.with_structured_output(Person).ainvoke("who is in the photo?")
    assert isinstance(person, Person)  # parsed and validated by LangChain


async def test_bind_tools_yields_a_tool_call_and_takes_its_result(models):
    chat, http = _chat(models)
    async with http:
        bound = chat.bind_tools([TOOL], tool_choice="get_weather")
        asked = HumanMessage("what is the weather in Oslo?")
        answer = await bound.ainvoke([asked])
        assert isinstance(answer, AIMessage)
        [call] = answer.tool_calls
        assert call["name"] == "get_weather" and call["id"]
        jsonschema.validate(call["args"], WEATHER)
        # the agent loop: the tool's result goes back, the model answers
        follow = await chat.bind_tools([TOOL]).ainvoke(
            [asked, answer, ToolMessage("sunny, 21 C", tool_call_id=call["id"])])
    assert isinstance(follow, AIMessage)
