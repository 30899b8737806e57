"""The embedded runtime's parts without HTTP: the batch queue's states, and ``LocalModels``
over a real ``Replica`` hosting a ``family: custom`` backend (no torch, no Ray).

Batches are made deterministic with gates (events), never with sleeps: the first batch is
held inside the model while the next callers arrive.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import pytest

from deployments.base import ModelBackend, Progress
from fusion.config import AppConfig
from fusion.embedded.batcher import BatchQueue
from fusion.embedded.models import LocalModels
from fusion.errors import BadInput, NotFound, Overloaded, StepFailed
from fusion.tasks import TaskSpec, param


class Gate:
    """A ``run`` for the queue that records batch sizes and holds the first batch."""

    def __init__(self) -> None:
        self.sizes: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, items: list[int]) -> list[int]:
        self.sizes.append(list(items))
        self.entered.set()
        await self.release.wait()
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [i * 10 for i in items]


async def test_a_lone_request_runs_at_once_without_a_window():
    gate = Gate()
    gate.release.set()
    queue = BatchQueue(gate.run, max_size=8, wait_s=0.0)
    assert await queue.submit(4) == 40
    assert gate.sizes == [[4]]


async def test_callers_that_come_while_a_batch_computes_form_the_next_batch():
    gate = Gate()
    queue = BatchQueue(gate.run, max_size=4, wait_s=0.0)
    first = asyncio.ensure_future(queue.submit(1))
    await gate.entered.wait()  # batch [1] is computing
    rest = [asyncio.ensure_future(queue.submit(i)) for i in range(2, 12)]
    await asyncio.sleep(0)
    gate.release.set()
    assert await first == 10
    assert [await r for r in rest] == [i * 10 for i in range(2, 12)]  # each its own, in order
    assert gate.sizes == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]  # capped at max_size


async def test_a_failed_batch_fails_its_callers_only():
    gate = Gate()
    queue = BatchQueue(gate.run, max_size=8, wait_s=0.0)
    first = asyncio.ensure_future(queue.submit(1))
    await gate.entered.wait()
    bad = [asyncio.ensure_future(queue.submit(i)) for i in (2, -3)]
    await asyncio.sleep(0)
    gate.release.set()
    assert await first == 10
    for fut in bad:
        with pytest.raises(ValueError, match="negative"):
            await fut
    assert await queue.submit(5) == 50  # the queue goes on


async def test_a_caller_that_left_is_not_computed():
    gate = Gate()
    queue = BatchQueue(gate.run, max_size=8, wait_s=0.0)
    first = asyncio.ensure_future(queue.submit(1))
    await gate.entered.wait()
    gone, kept = asyncio.ensure_future(queue.submit(2)), asyncio.ensure_future(queue.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    gate.release.set()
    assert (await first, await kept) == (10, 30)
    assert gate.sizes == [[1], [3]]


class GatedEcho(ModelBackend):
    """Upper-cases text; ``hold`` keeps a batch in the model until released; "boom" fails."""

    hold = threading.Event()
    entered = threading.Event()
    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "echo": TaskSpec({"text": param("text")}, {"text": "text"})}

    def load_weights(self) -> None:
        return None

    def prepare(self, task: str, inputs: dict[str, Any]) -> Any:
        item = super().prepare(task, inputs)
        if not item["text"].strip():
            raise BadInput("text is empty", field="text")
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        GatedEcho.entered.set()
        GatedEcho.hold.wait(30)
        if any(it["text"] == "boom" for it in items):
            raise RuntimeError("the model broke")
        return [{"text": it["text"].upper()} for it in items]


@pytest.fixture
def models(tmp_path) -> LocalModels:
    GatedEcho.hold.set()
    GatedEcho.entered.clear()
    config = AppConfig.model_validate({"models": [{
        "name": "echo", "family": "custom", "backend": f"{__name__}:GatedEcho",
        "source": f"path:{tmp_path}", "max_batch_size": 8, "max_ongoing_requests": 8,
        "max_queued_requests": 2,
        "tasks": {"echo": {"inputs": {"text": "text"}, "outputs": {"text": "text"}}}}]})
    return LocalModels(config)


async def test_local_models_answer_each_caller_from_shared_batches(models):
    GatedEcho.hold.clear()
    first = asyncio.ensure_future(models.call("echo", "echo", {"text": "a"}))
    await asyncio.to_thread(GatedEcho.entered.wait, 30)
    rest = [asyncio.ensure_future(models.call("echo", "echo", {"text": t})) for t in "bcd"]
    await asyncio.sleep(0.01)  # let them reach the queue (the outcome does not depend on it)
    GatedEcho.hold.set()
    assert [(await f)["text"] for f in (first, *rest)] == ["A", "B", "C", "D"]
    assert sum(models.bundle.member("echo").batches) == 4
    assert await models.call_many("echo", "echo", [{"text": "x"}, {"text": "y"}]) == [
        {"text": "X"}, {"text": "Y"}]
    assert (await models.info("echo"))["name"] == "echo"


async def test_local_models_errors_name_what_went_wrong(models):
    with pytest.raises(NotFound) as err:
        await models.call("nope", "echo", {"text": "a"})
    assert err.value.field == "model"
    with pytest.raises(BadInput) as err:  # the client's mistake stays the client's
        await models.call("echo", "echo", {"text": "  "})
    assert err.value.field == "text"
    with pytest.raises(StepFailed, match="echo/echo failed: RuntimeError: the model broke"):
        await models.call("echo", "echo", {"text": "boom"})
    assert models.in_flight["echo"] == 0  # every slot given back


async def test_a_full_model_is_refused_before_any_work(models):
    limit = models.limits["echo"]
    assert limit == 8 + 2  # Serve's ongoing + queued
    GatedEcho.hold.clear()
    held = [asyncio.ensure_future(models.call("echo", "echo", {"text": f"t{i}"}))
            for i in range(limit)]
    await asyncio.to_thread(GatedEcho.entered.wait, 30)
    with pytest.raises(Overloaded) as err:
        await models.call("echo", "echo", {"text": "one too many"})
    assert err.value.retry_after_s > 0
    GatedEcho.hold.set()
    assert len(await asyncio.gather(*held)) == limit
    assert models.in_flight["echo"] == 0
