"""List requests: many items of one task, sent to the model as one batch.

A client that has 64 texts to embed should not pay 64 HTTP requests, 64 Ray hops and 64 cache
round trips, nor wait for the model to see them one at a time. ``call_many`` checks every
item (an error names its index, ``inputs[3].text``), looks all of them up in the cache in one
round trip (``MGET``), sends only the misses to the replica in one call (which runs them in
batches of the model's ``max_batch_size``), stores the new results in one round trip, and
returns the results in input order with each item's ``cached`` flag.

Identical items in one list are computed once. A list does not join computations in flight
elsewhere (single-flight is per key; a list is many keys at once): the cache still spares
whatever has landed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion.errors import BadInput, FusionError, unwrap
from fusion.values import check_inputs

if TYPE_CHECKING:
    from fusion.core.executor import Executor
    from fusion.core.run_types import CachePolicy

_INDEXED = re.compile(r"^inputs\[(\d+)\]")


@dataclass
class BatchResult:
    outputs: list[dict[str, Any]]
    cached: list[bool]
    ms: float

    @property
    def cache(self) -> str:
        """``hit`` when every item came from the cache, ``partial``, or ``miss``."""
        hits = sum(self.cached)
        return "hit" if hits == len(self.cached) else "partial" if hits else "miss"


def item_error(err: FusionError, index: list[int]) -> FusionError:
    """``err`` from the replica, which numbered the items it was sent (the misses), renamed
    to the item's index in the client's list."""
    match = _INDEXED.match(err.field or "")
    if match is None:
        return err
    i = int(match.group(1))
    if i >= len(index):
        return err
    old, new = f"inputs[{i}]", f"inputs[{index[i]}]"
    message = new + err.message[len(old):] if err.message.startswith(old) else err.message
    return type(err)(message, field=new + err.field[len(old):])


async def replica_many(caller: Any, model: str, task: str,
                       items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One list call to the model: its results in order, or its ``FusionError`` unwrapped
    (an item's error names its index in ``items``); shared with ``fusion.core.gather``."""
    try:
        results = await caller.call_many(model, task, items)
    except Exception as exc:
        err = unwrap(exc)  # Ray wraps a replica's exception; the client wants the original
        if isinstance(err, FusionError):
            raise err from None
        raise
    if len(results) != len(items):
        raise FusionError(f"{model}/{task} answered {len(results)} results for "
                          f"{len(items)} items")
    return results


async def call_many(executor: Executor, model: str, task: str, items: list[Any],
                    policy: CachePolicy) -> BatchResult:
    """Run ``task`` of ``model`` over ``items`` (see the module docstring)."""
    spec = executor.task_spec(model, task)
    if not spec.batched:
        raise BadInput(f"{model}/{task} takes one item per request; send inputs as an object",
                       field="inputs")
    checked = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadInput(f"inputs[{i}] must be an object of named inputs",
                           field=f"inputs[{i}]")
        checked.append(check_inputs(spec, item, where=f"{model}/{task}",
                                    prefix=f"inputs[{i}]."))
    started = time.perf_counter()
    n = len(checked)
    outputs: list[dict | None] = [None] * n
    cached = [False] * n
    cache = executor.cache
    keys: list[str] | None = None
    labels = (model, task)
    if cache is not None and (policy.read or policy.write):
        fingerprint = await executor.fingerprint(model)
        keys = [cache.step_key(fingerprint, task, c) for c in checked]
        if policy.read:
            for i, hit in enumerate(await cache.get_many(keys, labels=labels)):
                if hit is not None:
                    outputs[i], cached[i] = hit, True
    todo: dict[str, list[int]] = {}  # distinct misses: key → the indices that share it
    for i in range(n):
        if outputs[i] is None:
            todo.setdefault(keys[i] if keys else str(i), []).append(i)
    if todo:
        first = [idx[0] for idx in todo.values()]
        try:
            results = await replica_many(executor.caller, model, task,
                                         [checked[i] for i in first])
        except FusionError as err:
            raise item_error(err, first) from None
        for idx, result in zip(todo.values(), results, strict=True):
            for i in idx:
                outputs[i] = result
        if keys is not None and policy.write:
            await cache.put_many([(keys[i], outputs[i]) for i in first],
                                 executor.default_ttl_s, labels=labels)
    return BatchResult([o or {} for o in outputs], cached,
                       round((time.perf_counter() - started) * 1000, 3))
