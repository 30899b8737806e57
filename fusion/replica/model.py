"""The one replica around every ``ModelBackend``: validation, threads, streams, metrics, traces.

``Replica`` validates a request's inputs *before* batching (so one client's bad image fails
that request only, never its batch-mates) and runs model code in a worker thread so the
event loop keeps answering health checks while a model computes. It finds the backend class
through the family registry (``fusion.registry.model_class``), so one class serves every
family and every ``family: custom`` model; a subclass may pin ``backend_cls``. How single
calls are gathered is the runtime's: it provides ``_run_batch`` (Serve's ``@serve.batch``,
or the embedded runtime's ``BatchQueue``) over ``_run_requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from deployments.base import ModelBackend, Progress
from fusion.config import ModelConfig, ObservabilityConfig
from fusion.errors import BadInput
from fusion.observe import Recorder
from fusion.registry import model_class
from fusion.tracing import Tracing, tracing_from

log = logging.getLogger("fusion.replica")


async def relay(job: asyncio.Future, queue: asyncio.Queue) -> AsyncIterator[Any]:
    """What a worker thread puts on ``queue`` (through ``loop.call_soon_threadsafe``), as it
    comes, until ``job`` (the thread's future) is done and the queue is empty; the caller then
    reads ``job.result()``. Waiting on both at once means a failing job ends the stream
    instead of leaving it waiting for an event that never comes."""
    while not (job.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()


async def run_grouped(requests: list[tuple[str, Any]],
                      run: Callable[[str, list[Any]], Awaitable[list[Any]]]) -> list[Any]:
    """Run a mixed batch one task at a time; results come back in the requests' order."""
    by_task: dict[str, list[int]] = {}
    for i, (task, _) in enumerate(requests):
        by_task.setdefault(task, []).append(i)
    out: list[Any] = [{} for _ in requests]
    for task, idx in by_task.items():
        results = await run(task, [requests[i][1] for i in idx])
        for i, res in zip(idx, results, strict=True):
            out[i] = res
    return out


@dataclass(frozen=True)
class Timing:
    """When the forward pass that carried a call ran (perf_counter and wall ns) and its size."""

    started: float
    ended: float
    started_ns: int
    ended_ns: int
    batch: int


@dataclass
class _Probe:
    timing: Timing | None = None


class Replica:
    """The replica of one model; ``backend_cls`` None: the registry's class for the config.

    Metrics and spans are taken here, where queueing and computing happen (the batch queue
    and the forward-pass lock), so a dashboard can tell a queueing model from a slow one.
    """

    backend_cls: ClassVar[type[ModelBackend] | None] = None

    def __init__(self, config: dict[str, Any], model_dir: str | None = None,
                 observability: dict[str, Any] | None = None,
                 recorder: Recorder | None = None) -> None:
        """``recorder``: the runtime's metrics (used when ``observability`` turns them on)."""
        cfg = ModelConfig.model_validate(config)
        self.model = (self.backend_cls or model_class(cfg)).load(cfg, model_dir)
        self._lock = threading.Lock()  # one forward pass at a time per replica
        # One OS thread runs this model's code. Why not asyncio.to_thread: the default pool
        # hands consecutive batches to different threads, and torch's OpenMP team of the
        # thread that ran the last batch can spin on the cores while the next one computes.
        # Its first act sets the model's own torch threads there (ModelBackend.on_compute_thread).
        self._worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"model-{cfg.name}",
            initializer=getattr(self.model, "on_compute_thread", None))
        # None (unit tests): no metrics, no tracing; the app builders always pass it
        obs = ObservabilityConfig.model_validate(observability) if observability else None
        self._recorder: Recorder | None = recorder if obs and obs.metrics else None
        self._tracing: Tracing | None = tracing_from(obs.otlp_endpoint,
                                                     obs.service_name) if obs else None
        self._in_flight = 0
        if self._recorder is not None:  # both from the start, not from the first call
            self._recorder.set("fusion_replica_up", 1, {"model": cfg.name})
            self._flight(0)
        log.info("loaded %s", self.model.info())

    def info(self) -> dict[str, Any]:
        return self.model.info()

    def _compute(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``fn(*args)`` on this model's own thread, in the caller's context (as to_thread)."""
        ctx = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(
            self._worker, functools.partial(ctx.run, fn, *args))

    def stats(self) -> dict[str, int]:
        """The backend's own counters (the LLM's generations, tokens, cancellations)."""
        return dict(getattr(self.model, "counts", {}))

    async def call(self, task: str, inputs: dict[str, Any],
                   trace: dict[str, str] | None = None) -> dict[str, Any]:
        """One call; ``trace`` is the caller's W3C context (spans continue its trace)."""
        with self._observed(task, trace) as probe:
            item = self.model.prepare(task, inputs)
            if self.model.task_spec(task).batched:
                try:
                    result, probe.timing = await self._run_batch((task, item))
                except asyncio.CancelledError:
                    # the caller went away (a client disconnected): an item that carries a
                    # cancel event (a generation) stops at its next step, freeing its slot
                    gone = getattr(item, "cancel", None)
                    if isinstance(gone, threading.Event):
                        gone.set()
                    raise
                return result
            outputs, probe.timing = await self._compute(self._run_timed, task, [item], None)
            self._observe_batch(task, probe.timing)
            return outputs[0]

    async def call_many(self, task: str, items: list[dict[str, Any]],
                        trace: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """A list request: every item prepared, then run in chunks of ``max_batch_size``.

        The list already is a batch, so it skips the batch queue; preparing (decoding images,
        audio) happens in the worker thread too, so a long list never stalls the event loop.
        A bad item fails the call with its index named (``inputs[3].image``).
        """
        if not self.model.task_spec(task).batched:
            raise BadInput(f"task {task!r} takes one item per request", field="task")
        with self._observed(task, trace) as probe:
            outputs, timings = await self._compute(self._run_many, task, items)
            for chunk in timings:
                self._observe_batch(task, chunk)
            if timings:  # the whole list as one span: first chunk's start to last's end
                first, last = timings[0], timings[-1]
                probe.timing = Timing(first.started, last.ended, first.started_ns,
                                      last.ended_ns, len(items))
            return outputs

    def _run_many(self, task: str, items: list[dict[str, Any]]
                  ) -> tuple[list[dict], list[Timing]]:
        prepared = []
        for i, inputs in enumerate(items):
            try:
                prepared.append(self.model.prepare(task, inputs))
            except BadInput as err:
                where = f"inputs[{i}]"
                raise type(err)(f"{where}: {err.message}",
                                field=f"{where}.{err.field}" if err.field else where) from None
        size = self.model.config.max_batch_size
        out: list[dict] = []
        timings: list[Timing] = []
        for start in range(0, len(prepared), size):
            outputs, timing = self._run_timed(task, prepared[start:start + size], None)
            out += outputs
            timings.append(timing)
        return out, timings

    @contextlib.contextmanager
    def _observed(self, task: str, trace: dict[str, str] | None) -> Iterator[_Probe]:
        """Around one call: the in-flight gauge, then its queue wait and replica span; the
        call sets ``probe.timing`` once the forward pass that carried it has run."""
        arrived, arrived_ns = time.perf_counter(), time.time_ns()
        probe = _Probe()
        error: BaseException | None = None
        self._flight(1)
        try:
            yield probe
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._flight(-1)
            self._observe_call(task, trace, arrived, arrived_ns, probe.timing, error)

    def _flight(self, delta: int) -> None:
        self._in_flight += delta
        if self._recorder is not None:
            self._recorder.set("fusion_model_in_flight", self._in_flight,
                               {"model": self.model.config.name})

    def _observe_batch(self, task: str, timing: Timing) -> None:
        if self._recorder is not None:
            tags = {"model": self.model.config.name, "task": task}
            self._recorder.observe("fusion_compute_seconds", timing.ended - timing.started,
                                   tags)
            self._recorder.observe("fusion_batch_size", timing.batch, tags)

    def _observe_call(self, task: str, trace: dict[str, str] | None, arrived: float,
                      arrived_ns: int, timing: Timing | None,
                      error: BaseException | None) -> None:
        name = self.model.config.name
        if self._recorder is not None and timing is not None:
            self._recorder.observe("fusion_queue_wait_seconds", timing.started - arrived,
                                   {"model": name, "task": task})
        if self._tracing is not None and trace:
            now = time.time_ns()
            self._tracing.replica_spans(
                trace, f"replica {name}/{task}", {"fusion.model": name, "fusion.task": task,
                                                  "fusion.batch_size": timing.batch if timing
                                                  else 0},
                arrived_ns, timing.started_ns if timing else now,
                timing.ended_ns if timing else now, error)

    async def call_stream(self, task: str, inputs: dict[str, Any],
                          trace: dict[str, str] | None = None) -> AsyncIterator[dict]:
        """Yield ``{"progress": {"step", "total"}}`` events, then ``{"result": outputs}``."""
        with self._observed(task, trace) as probe:
            async for event in self._stream(task, inputs):
                if isinstance(event, Timing):
                    probe.timing = event
                    self._observe_batch(task, event)
                else:
                    yield event

    async def _stream(self, task: str, inputs: dict[str, Any]) -> AsyncIterator[Any]:
        if self.model.task_spec(task).streams_tokens:
            async for event in self._token_stream(task, inputs):
                yield event
            return
        item = self.model.prepare(task, inputs)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict] = asyncio.Queue()

        def progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait,
                                      {"progress": {"step": step, "total": total}})

        job = asyncio.ensure_future(self._compute(self._run_timed, task, [item], progress))
        async for event in relay(job, queue):
            yield event
        outputs, timing = job.result()
        yield timing
        yield {"result": outputs[0]}

    def _run_timed(self, task: str, items: list[Any],
                   progress: Progress | None) -> tuple[list[dict], Timing]:
        with self._lock:
            started, started_ns = time.perf_counter(), time.time_ns()
            outputs = self.model.run(task, items, progress)
            return outputs, Timing(started, time.perf_counter(), started_ns, time.time_ns(),
                                   len(items))

    async def _token_stream(self, task: str, inputs: dict[str, Any]) -> AsyncIterator[Any]:
        """``{"token": delta}`` events as they are generated, then the timing and result.
        Deltas generated while the last event was being sent go out as one event, so a
        model faster than the runtime's per-event cost is not slowed to it. Leaving early
        (the caller cancelled) sets ``cancel``: generation stops at once."""
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

        job = asyncio.ensure_future(self._compute(work))
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

    async def _run_batch(self, request: tuple[str, Any]) -> tuple[dict, Timing]:
        """One call's place in a batch: the runtime gathers these (see the module doc)."""
        raise NotImplementedError

    async def _run_requests(self, requests: list[tuple[str, Any]]
                            ) -> list[tuple[dict, Timing]]:
        """One gathered batch, run a task at a time, answered in the requests' order."""
        async def run(task: str, items: list[Any]) -> list[tuple[dict, Timing]]:
            outputs, timing = await self._compute(self._run_timed, task, items, None)
            self._observe_batch(task, timing)
            return [(out, timing) for out in outputs]

        return await run_grouped(requests, run)

    def check_health(self) -> None:  # Serve calls this periodically
        return None
