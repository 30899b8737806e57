"""The Serve side of the ``llm`` family: ``ServedModel`` plus a token stream.

Unary calls use ``ServedModel`` as every family does (``@serve.batch``, the forward-pass
lock, metrics). A streamed call (``handle.options(stream=True).call_stream``) yields
``{"token": delta}`` events while ``generate`` runs in a worker thread; when the caller goes
away, Ray cancels this generator and ``cancel`` stops ``generate`` at its next token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.common import relay
from deployments.llm import LlmModel
from fusion.serve.served import ServedModel, Timing


@serve.deployment
class LlmDeployment(ServedModel):
    backend_cls = LlmModel

    def stats(self) -> dict[str, int]:
        """Generations, tokens, and those cut short because their caller left (ops, tests)."""
        return dict(self.model.counts)

    async def _stream(self, task: str, inputs: dict[str, Any]) -> AsyncIterator[Any]:
        """``{"token": delta}`` events as they are generated, then the timing and result.
        Deltas generated while the last event was being sent go out as one event, so a
        model faster than Ray's per-event cost is not slowed to it. Leaving early (the caller
        cancelled) sets ``cancel``: generation stops at once."""
        item = self.model.prepare(task, inputs)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict] = asyncio.Queue()
        cancel = threading.Event()

        def on_text(text: str) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, {"token": text})
            except RuntimeError:  # the loop is gone (replica stopping)
                cancel.set()

        def work() -> tuple[list[dict], Timing]:
            with self._lock:
                started, started_ns = time.perf_counter(), time.time_ns()
                outputs = self.model.generate([item], on_text, cancel)
                return outputs, Timing(started, time.perf_counter(), started_ns,
                                       time.time_ns(), 1)

        job = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            async for event in relay(job, queue):
                text = event["token"]
                while not queue.empty():  # tokens that came meanwhile: one event
                    text += queue.get_nowait()["token"]
                yield {"token": text}
            outputs, timing = job.result()
            yield timing
            yield {"result": outputs[0]}
        finally:
            cancel.set()  # normal end: no effect; caller gone: generate stops
