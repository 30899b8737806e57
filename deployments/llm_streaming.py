"""How a generation of the ``llm`` family ends and streams: the stopping criterion (stop
strings per row, a cancelled stream, a cancelled row) and the text-delta streamer.

Kept apart from ``deployments.llm`` (loading, checking, batching); both classes follow
transformers' protocols (``StoppingCriteria`` call, streamer ``put``/``end``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fusion.deployments.llm")


class StopCriteria:
    """Ends a row at one of its own stop strings (decoding only its last tokens), or every
    row on cancel. Per row: a batch-mate's stop string must not cut another's answer."""

    def __init__(self, model: Any, stops: list[tuple[str, ...]], start: int,
                 cancel: threading.Event | None, streamer: DeltaStreamer | None,
                 cancels: list[threading.Event] | None = None) -> None:
        self.model, self.stops, self.start = model, stops, start
        self.cancel, self.streamer = cancel, streamer
        self.cancels = cancels or []  # per row: its caller went away
        # a character is at most 4 byte-level tokens: this many tokens hold any stop string
        self.window = 4 * max((len(s) for row in stops for s in row), default=0) + 4

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        torch = self.model._torch
        rows = input_ids.shape[0]
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        if self.streamer is not None and self.streamer.stopped:
            done[:] = True
        elif any(self.stops):
            lo = max(self.start, input_ids.shape[1] - self.window)
            for row, stops in enumerate(self.stops):
                if stops:
                    tail = self.model.decode(input_ids[row, lo:].tolist())
                    done[row] = any(s in tail for s in stops)
        for row, gone in enumerate(self.cancels):
            if gone.is_set():
                done[row] = True
        return done


class DeltaStreamer:
    """transformers' streamer protocol (``put``/``end``): decodes the new tokens so far and
    passes on text that can no longer change (held back: an unfinished UTF-8 character, or
    a tail that may grow into a stop string)."""

    def __init__(self, model: Any, stops: tuple[str, ...]) -> None:
        self.model, self.stops = model, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False
        self.prompt_seen = False
        self.on_text: Callable[[str], None] = lambda _text: None

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        ended = [t in self.model.eos_ids or t == self.model.pad_id for t in ids]
        self.tokens += [t for t, e in zip(ids, ended, strict=True) if not e]
        if any(ended) or self.stopped:
            return
        text = self.model.decode(self.tokens)
        if text.endswith("\ufffd"):
            return
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True  # the stopping criterion ends generate at this token
            return
        self._send(text[:max(len(self.sent), len(text) - self.hold)])

    def end(self) -> None:
        return None

    def finish(self, final: str) -> None:
        """After ``generate``: the rest of the final text (what the unary call returns)."""
        if final.startswith(self.sent):
            self._send(final)
        else:  # cannot happen for byte-level decoders; never send a contradiction
            log.warning("streamed text is not a prefix of the final text; rest not sent")

    def _send(self, upto: str) -> None:
        if len(upto) > len(self.sent):
            delta, self.sent = upto[len(self.sent):], upto
            self.on_text(delta)
