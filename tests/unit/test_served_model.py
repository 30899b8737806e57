"""The Serve adapter's own logic, without Ray: validation before batching, grouping of mixed
batches, single results for unbatched tasks, and progress streaming from the worker thread.

The backend is a stand-in that records what it ran (the real families are tested in their
own modules); ``ServedModel`` itself is the code under test.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from fusion.config import ModelConfig
from fusion.errors import BadInput
from fusion.replica.model import run_grouped
from fusion.serve.served import ServedModel
from tests.fakes import WeightlessBackend

CONFIG = {"name": "gen", "family": "diffusion", "source": "tiny:diffusion"}


class RecordingBackend(WeightlessBackend):
    family = "diffusion"
    runs: list[tuple[str, int, str]] = []

    def run(self, task, items, progress=None):
        self.runs.append((task, len(items), threading.current_thread().name))
        for step in range(1, items[0]["steps"] + 1):
            if progress is not None:
                progress(step, items[0]["steps"])
        return [{"image": f"{it['prompt']}/{it['seed']}".encode()} for it in items]


class RecordingDeployment(ServedModel):
    backend_cls = RecordingBackend


@pytest.fixture
def served() -> RecordingDeployment:
    RecordingBackend.runs = []
    return RecordingDeployment(ModelConfig.model_validate(CONFIG).model_dump(mode="json"))


async def test_unbatched_call_returns_one_result_off_the_event_loop(served):
    out = await served.call("generate", {"prompt": "fox", "seed": 3})
    assert out == {"image": b"fox/3"}
    task, n, thread = RecordingBackend.runs[0]
    assert (task, n) == ("generate", 1) and thread != threading.current_thread().name


async def test_bad_input_fails_before_the_model_runs(served):
    with pytest.raises(BadInput) as info:
        await served.call("generate", {"prompt": 7})
    assert info.value.field == "prompt" and RecordingBackend.runs == []


async def test_stream_yields_every_progress_event_then_the_result(served):
    events = [e async for e in served.call_stream("generate", {"prompt": "p", "steps": 5})]
    assert events[:-1] == [{"progress": {"step": i, "total": 5}} for i in range(1, 6)]
    assert events[-1] == {"result": {"image": b"p/0"}}


async def test_stream_raises_the_model_error_after_its_progress():
    class Failing(RecordingBackend):
        def run(self, task, items, progress=None):
            progress(1, 2)
            raise RuntimeError("out of memory")

    class FailingDeployment(ServedModel):
        backend_cls = Failing

    served = FailingDeployment(ModelConfig.model_validate(CONFIG).model_dump(mode="json"))
    seen = []
    with pytest.raises(RuntimeError, match="out of memory"):
        async for event in served.call_stream("generate", {"prompt": "p"}):
            seen.append(event)
    assert seen == [{"progress": {"step": 1, "total": 2}}]


async def test_run_grouped_runs_each_task_once_and_keeps_order():
    calls = []

    async def run(task, items):
        calls.append((task, list(items)))
        await asyncio.sleep(0)
        return [{"out": f"{task}:{x}"} for x in items]

    requests = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]
    out = await run_grouped(requests, run)
    assert out == [{"out": "a:1"}, {"out": "b:2"}, {"out": "a:3"}, {"out": "b:4"},
                   {"out": "a:5"}]
    assert calls == [("a", [1, 3, 5]), ("b", [2, 4])]
