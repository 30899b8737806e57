"""Router-side batching: concurrent single-item calls of one model and task, sent as one list.

Why: every single call costs a Ray hop and several cache round trips (GET, lock, GET, SET,
unlock) before the replica's ``@serve.batch`` groups it; on a small machine that machinery
costs more CPU than the model. A list costs one ``MGET``, one hop and one pipelined write
(``fusion.core.batch``). So single calls of a model whose ``router_batch_wait_ms`` is above 0
wait in a *window* for company, and the window goes through the list path.

The state machine, one per collector (model, task, cache policy, TTL)::

    idle --first item--> open --max_batch_size items, or router_batch_wait_ms--> dispatched
    (a dispatched window runs in its own task; the next item opens a new window meanwhile)

The wait applies while a window of the collector is out (the model is busy, so company is
likely and waiting costs little); a window opened while none is out closes at the end of
the loop turn that opened it (with whatever arrived in that turn), so a lone caller pays no
wait (as text-embeddings-inference's queue sends whatever is queued when the model is free).
A window whose wait is over but whose model already has a window out per replica plus one
on its way keeps gathering until one comes back: a small window sent then would only queue
at the replica, which runs each list on its own, and the model would compute small batches.

A dispatched window: one ``get_many`` (hits answered at once), one ``call_many`` for the
distinct misses, one ``put_many``, then each caller's future resolved with its own item
(stored first, as single calls do: a client that repeats a request it got finds it cached).

- Cache hits are answered by the window's one ``MGET``, not by a ``GET`` per caller before
  it joins: at 32 callers on Redis that costs the router 37 µs of CPU per cached call
  against 126 µs for a ``GET`` per call (``ops/bench/router_gather.py``, knob on against
  off, 2-core machine), and a lone caller does not wait for company (above).
- Items are checked (``check_inputs``) by the executor before they join, so a bad item fails
  only its caller. An item the *replica* refuses (``inputs[3].image``) fails its caller with
  the error a single call would have had; the rest of the window is sent again without it.
- Identical items (same cache key) in a window are computed once; an item whose key is in a
  dispatched window (default cache policy only, as single-flight) joins that window's answer.
- Each caller waits on its own future through ``asyncio.shield``: its deadline or
  cancellation ends its wait only; the window goes on for the others (and stores its results,
  which the cancelled caller's retry will find).
- Not taken over: the cross-replica lock of single calls. As for lists, two router replicas
  may compute the same new item once each; the cache spares whatever has landed.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusion.core.batch import replica_many
from fusion.errors import FusionError, unwrap
from fusion.observe import NULL_OBSERVER, Observer

if TYPE_CHECKING:
    from fusion.config import AppConfig
    from fusion.core.executor import Executor
    from fusion.core.run_types import CachePolicy

_ITEM = re.compile(r"^inputs\[(\d+)\](?:\.|$)")
_ITEM_MESSAGE = re.compile(r"^inputs\[\d+\](?::\s*|\.)")


@dataclass(frozen=True)
class Gathered:
    """How a caller's answer was had: ``cached`` (read from the store), ``coalesced`` (shared
    with an identical item of the same or a dispatched window). ``StepReport`` takes both."""

    cached: bool = False
    coalesced: bool = False


@dataclass
class _Item:
    """One distinct item of a window; ``future`` is shared by the callers that sent it."""

    key: str | None
    inputs: dict[str, Any]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


@dataclass
class _Window:
    opened: float
    items: list[_Item] = field(default_factory=list)
    by_key: dict[str, _Item] = field(default_factory=dict)
    timer: asyncio.Handle | None = None
    waited: bool = False  # its wait has passed: it goes as soon as the model can take it


_Collector = tuple[str, str, bool, bool, float | None]  # model, task, read, write, ttl


class Gatherer:
    """The router's windows over ``executor`` (its cache, fingerprints and model caller).

    ``waits`` maps each gathered model to its window in seconds; ``sizes`` to the window's
    item limit (the model's ``max_batch_size``); ``outs`` to how many of its windows may be
    out at once (its replicas, plus one on its way while they compute).
    """

    def __init__(self, executor: Executor, waits: dict[str, float], sizes: dict[str, int],
                 outs: dict[str, int] | None = None,
                 observer: Observer = NULL_OBSERVER) -> None:
        self.executor = executor
        self.waits = waits
        self.sizes = sizes
        self.outs = outs or {}
        self.observer = observer
        self._open: dict[_Collector, _Window] = {}
        self._running: dict[_Collector, int] = {}  # dispatched windows not yet answered
        self._flying: dict[str, _Item] = {}  # cache key → its item in a dispatched window
        self._tasks: set[asyncio.Task] = set()
        self._takes: dict[tuple[str, str], bool] = {}

    @classmethod
    def from_config(cls, config: AppConfig, executor: Executor,
                    observer: Observer = NULL_OBSERVER) -> Gatherer | None:
        """The gatherer for the models with ``router_batch_wait_ms`` above 0; None if none."""
        waits = {m.name: m.router_batch_wait_ms / 1000 for m in config.models
                 if m.router_batch_wait_ms > 0}
        if not waits:
            return None
        sizes = {m.name: m.max_batch_size for m in config.models if m.name in waits}
        outs = {m.name: 1 + (m.autoscaling.max_replicas if m.autoscaling else m.num_replicas)
                for m in config.models if m.name in waits}
        return cls(executor, waits, sizes, outs, observer)

    def takes(self, model: str, task: str) -> bool:
        """Whether single calls of ``model``/``task`` are gathered: the model's knob is on and
        the task takes lists and never streams (a stream is one caller's)."""
        known = self._takes.get((model, task))
        if known is None:
            spec = self.executor.task_spec(model, task)
            known = self._takes[(model, task)] = (
                model in self.waits and spec.batched and not spec.streams_progress
                and not spec.streams_tokens)
        return known

    async def submit(self, model: str, task: str, inputs: dict[str, Any], policy: CachePolicy,
                     ttl_s: float | None) -> tuple[dict[str, Any], Gathered]:
        """One caller's checked ``inputs``: its result, once its window has run."""
        cache = self.executor.cache
        use_cache = cache is not None and (policy.read or policy.write)
        key = None
        if use_cache:
            key = cache.step_key(await self.executor.fingerprint(model), task, inputs)
            flying = self._flying.get(key) if policy.read and policy.write else None
            if flying is not None:
                cache.count_coalesced((model, task))
                result, cached = await _answer(flying)
                return result, Gathered(cached, coalesced=True)
        collector = (model, task, policy.read and use_cache, policy.write and use_cache, ttl_s)
        item, shared = self._join(collector, key, inputs)
        if shared:
            cache.count_coalesced((model, task))
        # one span per caller, from joining to its answer (the window's model call carries
        # the trace of the caller that opened it)
        with self.observer.span(f"window {model}/{task}", {"fusion.model": model,
                                                          "fusion.task": task}):
            result, cached = await _answer(item)
        return result, Gathered(cached, coalesced=shared)

    def _join(self, collector: _Collector, key: str | None,
              inputs: dict[str, Any]) -> tuple[_Item, bool]:
        window = self._open.get(collector)
        if window is None:  # → open
            window = self._open[collector] = _Window(time.perf_counter())
            loop = asyncio.get_running_loop()
            if self._running.get(collector):  # a window is out: wait for company meanwhile
                window.timer = loop.call_later(self.waits[collector[0]], self._waited,
                                               collector, window)
            else:  # none is: take what arrives in this turn of the loop and add no wait
                window.timer = loop.call_soon(self._dispatch, collector, window)
        if key is not None and key in window.by_key:
            return window.by_key[key], True
        item = _Item(key, inputs)
        item.future.add_done_callback(_retrieved)
        window.items.append(item)
        if key is not None:
            window.by_key[key] = item
        if len(window.items) >= self.sizes[collector[0]]:  # full → dispatched
            self._dispatch(collector, window)
        return item, False

    def _waited(self, collector: _Collector, window: _Window) -> None:
        """A window's wait is over: it goes, unless the model has as many windows as it can
        take; then it keeps gathering until one comes back (``_run``), as a replica's batch
        queue fills while the model computes, instead of queueing a small batch there."""
        window.waited = True
        if self._running.get(collector, 0) < self.outs.get(collector[0], 2):
            self._dispatch(collector, window)

    def _dispatch(self, collector: _Collector, window: _Window) -> None:
        if self._open.get(collector) is not window:
            return  # already dispatched (full before its timer fired)
        del self._open[collector]
        if window.timer is not None:
            window.timer.cancel()
        self._running[collector] = self._running.get(collector, 0) + 1
        read, write = collector[2], collector[3]
        if read and write:
            self._flying.update(window.by_key)
        task = asyncio.get_running_loop().create_task(self._run(collector, window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, collector: _Collector, window: _Window) -> None:
        """Answer every item of a dispatched window (see the module docstring)."""
        model, task, read, write, ttl = collector
        items = window.items
        self._observe(model, task, len(items), time.perf_counter() - window.opened)
        try:
            misses = await self._lookup(model, task, items) if read else list(items)
            computed = await self._compute(model, task, misses)
            if write and computed:  # stored before answering: a caller's retry is a hit
                await self.executor.cache.put_many(
                    [(i.key, r) for i, r in computed if i.key is not None],
                    ttl if ttl is not None else self.executor.default_ttl_s,
                    labels=(model, task))
            for item, result in computed:
                item.future.set_result((result, False))
        except asyncio.CancelledError:  # the gatherer is closing: its callers are let go
            for item in items:
                item.future.cancel()
            raise
        except Exception as exc:  # the whole window's error: every caller still waiting
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            left = self._running.pop(collector) - 1
            if left:
                self._running[collector] = left
            waiting = self._open.get(collector)
            if waiting is not None and (waiting.waited or not left):
                self._dispatch(collector, waiting)  # the model can take the next one now
            for item in items:
                if item.key is not None and self._flying.get(item.key) is item:
                    del self._flying[item.key]

    async def _lookup(self, model: str, task: str, items: list[_Item]) -> list[_Item]:
        """One ``MGET``: hits answered now; the misses returned."""
        hits = await self.executor.cache.get_many([i.key for i in items], labels=(model, task))
        misses = []
        for item, hit in zip(items, hits, strict=True):
            if hit is None:
                misses.append(item)
            else:
                item.future.set_result((hit, True))
        return misses

    async def _compute(self, model: str, task: str,
                       misses: list[_Item]) -> list[tuple[_Item, dict]]:
        """One list call for the misses; an item the replica refuses fails alone and the
        others are sent again. Returns what was computed, answered after the cache write."""
        while misses:
            try:
                results = await replica_many(self.executor.caller, model, task,
                                             [i.inputs for i in misses])
            except FusionError as err:
                split = _item_error(err, len(misses))
                if split is None:
                    raise
                index, own = split
                misses[index].future.set_exception(own)
                misses = misses[:index] + misses[index + 1:]
                continue
            return list(zip(misses, results, strict=True))
        return []

    def _observe(self, model: str, task: str, size: int, waited_s: float) -> None:
        recorder = self.observer.recorder
        if recorder is not None:
            tags = {"model": model, "task": task}
            recorder.observe("fusion_router_batch_size", size, tags)
            recorder.observe("fusion_router_batch_wait_seconds", waited_s, tags)

    async def aclose(self) -> None:
        """Let the dispatched windows finish (their callers are waiting on them)."""
        for collector, window in list(self._open.items()):
            self._dispatch(collector, window)
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _answer(item: _Item) -> tuple[dict[str, Any], bool]:
    """An item's ``(result, cached)`` for one of its callers. Shielded: the caller's deadline
    or cancellation ends its own wait, not the window. An error is the caller's own copy."""
    try:
        return await asyncio.shield(item.future)
    except FusionError as err:
        raise _own(err) from None


def _item_error(err: FusionError, n: int) -> tuple[int, FusionError] | None:
    """The index of the item the replica refused and the error a single call of it would have
    raised (``image``, not ``inputs[3].image``), or None when the error is the whole call's."""
    match = _ITEM.match(err.field or "")
    if match is None or int(match.group(1)) >= n:
        return None
    own = _own(err)
    own.field = (err.field or "")[match.end():] or None
    own.message = _ITEM_MESSAGE.sub("", err.message, count=1)
    own.args = (own.message,)
    return int(match.group(1)), own


def _own(exc: BaseException) -> BaseException:
    """A copy of a shared error for each caller: the executor qualifies a caller's error in
    place (its field), which must not leak into another caller's (a pipeline step's)."""
    err = unwrap(exc)
    if not isinstance(err, FusionError):
        return err
    own = copy.copy(err)
    own.__dict__.update(vars(err))
    return own


def _retrieved(future: asyncio.Future) -> None:
    """Mark an item's error retrieved: its callers may all have gone (a deadline, a client
    that hung up), and asyncio must not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
