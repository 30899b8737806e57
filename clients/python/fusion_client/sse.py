"""A small incremental parser for Server-Sent Events (the WHATWG ``text/event-stream`` format).

Feed it text chunks as they arrive (any split, including inside a line or between ``\\r`` and
``\\n``); it returns the events completed so far. No dependency beyond the stdlib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental SSE decoder: ``feed(chunk) -> [events]``, then ``close() -> [events]``."""

    def __init__(self) -> None:
        self._pieces: list[str] = []  # the current, unterminated line
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._last_id: str | None = None

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if "\n" not in chunk and "\r" not in chunk:  # long data lines arrive in many chunks
            self._pieces.append(chunk)
            return []
        text = "".join(self._pieces) + chunk
        hold = ""
        if text.endswith("\r"):  # may be the first half of "\r\n": decide on the next chunk
            text, hold = text[:-1], "\r"
        lines = _LINE_BREAK.split(text)
        rest = lines.pop() + hold
        self._pieces = [rest] if rest else []
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream. The spec drops an event that lacks its terminating blank line; we
        are lenient and dispatch it when it has data (some servers omit the last one)."""
        events = self.feed("\n") if self._pieces else []
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self._last_id = self._id
        if not self._data:  # per the spec: no data, no event
            self._event = ""
            self._id = None
            self._retry = None
            return None
        event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data),
                                id=self._last_id, retry=self._retry)
        self._event = ""
        self._data = []
        self._id = None
        self._retry = None
        return event
