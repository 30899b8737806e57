"""A batch queue for one model in the embedded runtime: what ``@serve.batch`` is in Serve.

A small state machine: *idle* until a request arrives, which runs at once (alone, or with
whatever else is waiting, up to ``max_size``); *running* one batch while the next fills.
One batch runs at a time: requests that come while a batch computes form the next one, so
batches grow with load by themselves (as Infinity and text-embeddings-inference batch) and a
lone request never waits out a window. ``wait_s`` > 0 adds such a window to an idle start,
for models whose batch costs little more than one item and whose traffic comes in bursts.
A caller that went away before its batch started is left out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")
T = TypeVar("T")


class BatchQueue(Generic[R, T]):
    def __init__(self, run: Callable[[list[R]], Awaitable[list[T]]], max_size: int,
                 wait_s: float, on_batch: Callable[[int], None] | None = None) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.run = run
        self.max_size = max_size
        self.wait_s = wait_s
        self.on_batch = on_batch  # the size of each batch run (metrics, tests)
        self._queue: asyncio.Queue[tuple[R, asyncio.Future[T]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, request: R) -> T:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._serve(self._queue))
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _serve(self, queue: asyncio.Queue[tuple[R, asyncio.Future[T]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch: list[tuple[R, asyncio.Future[T]]]) -> None:
        live = [(req, fut) for req, fut in batch if not fut.done()]  # callers still waiting
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            results = await self.run([req for req, _ in live])
        except Exception as exc:  # the batch failed: every caller in it hears why
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
