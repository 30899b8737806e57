"""Server-Sent Events in tests, read with the SDK's own decoder (``fusion_client.sse``).

One parser for every test that reads a stream, and the one users run: a test that parsed by
hand could pass on a stream the SDK cannot read (comments, ``\\r\\n``, multi-line data), or
fail on one it reads fine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx
from fusion_client.sse import ServerSentEvent, SSEDecoder

__all__ = ["ServerSentEvent", "astream_events", "decode", "sse_events", "stream_events"]


def decode(chunks: str | Iterable[str]) -> list[ServerSentEvent]:
    """Every event of a whole stream (a string, or its text chunks as they arrived)."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in [chunks] if isinstance(chunks, str) else chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def as_json(events: list[ServerSentEvent]) -> list[tuple[str, Any]]:
    """``(event name, JSON data)`` per event: the gateway's pipeline streams are JSON."""
    return [(e.event, json.loads(e.data)) for e in events]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """``(event, data)`` of a pipeline stream read whole (``response.text``)."""
    return as_json(decode(text))


def stream_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """``(event, data)`` of a pipeline stream, read as it arrives (``httpx.stream``)."""
    return as_json(decode(response.iter_text()))


async def astream_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """``stream_events`` for ``AsyncClient.stream``."""
    return as_json(decode([chunk async for chunk in response.aiter_text()]))
