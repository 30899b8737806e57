"""The executor against fake models: ordering, parallelism, conditions, timeouts, fusion."""

from __future__ import annotations

import asyncio

import pytest

from fusion.core.admission import Admission, ModelQueue
from fusion.core.executor import Executor
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput, NotFound, Overloaded, StepFailed, StepTimeout
from fusion.pipeline.fuse import fuse_labels
from fusion.pipeline.spec import load_spec
from fusion.registry import model_tasks
from tests.fakes import FakeModels, png

MODELS = {"captioner": model_tasks("caption"), "text": model_tasks("text"),
          "clip": model_tasks("clip"), "diffusion": model_tasks("diffusion")}


def make(fake: FakeModels) -> Executor:
    async def fingerprint(model: str) -> str:
        return (await fake.info(model))["fingerprint"]

    return Executor(fake, MODELS, fingerprint)


def spec(raw: dict):
    return load_spec(raw, "test.yaml", MODELS)


PARALLEL = {
    "name": "p",
    "inputs": {"image": "image", "labels": "list[text]"},
    "steps": {
        "a": {"model": "clip", "task": "zero_shot",
              "with": {"image": "$inputs.image", "labels": "$inputs.labels"}},
        "b": {"model": "captioner", "task": "caption", "with": {"image": "$inputs.image"}},
    },
    "outputs": {"a": "$steps.a.labels", "b": "$steps.b.text"},
}


class Rendezvous(FakeModels):
    """Each call waits until every task in ``together`` has started: run one after the
    other, the steps would never finish (the test's bound fails them)."""

    def __init__(self, together: set[str]) -> None:
        super().__init__()
        self.arrived = {t: asyncio.Event() for t in together}

    async def call(self, model, task, inputs):
        self.arrived[task].set()
        for event in self.arrived.values():
            await event.wait()
        return await super().call(model, task, inputs)


async def test_independent_steps_run_concurrently():
    fake = Rendezvous({"zero_shot", "caption"})
    result = await asyncio.wait_for(
        make(fake).run(spec(PARALLEL), {"image": png(), "labels": ["x", "y"]}), 30)
    assert result.outputs["b"].startswith("an image of")
    assert {r["label"] for r in result.outputs["a"]} == {"x", "y"}


async def test_sequence_feeds_outputs_forward():
    raw = {"name": "s", "inputs": {"image": "image", "labels": "list[text]"},
           "steps": {"cap": {"model": "captioner", "task": "caption",
                             "with": {"image": "$inputs.image"}},
                     "cls": {"model": "text", "task": "zero_shot",
                             "with": {"text": "$steps.cap.text", "labels": "$inputs.labels"}}},
           "outputs": {"caption": "$steps.cap.text", "top": "$steps.cls.labels[0].label"}}
    fake = FakeModels(delays={"caption": 0.05})
    result = await make(fake).run(spec(raw), {"image": png(), "labels": ["a", "b"]})
    expected = FakeModels.compute("zero_shot", {"text": result.outputs["caption"],
                                                "labels": ["a", "b"]})
    assert result.outputs["top"] == expected["labels"][0]["label"]
    assert list(result.steps) == ["cap", "cls"]
    assert all(not s.skipped for s in result.steps.values())


COND = {
    "name": "c",
    "inputs": {"prompt": "text", "check": {"type": "bool", "default": False}},
    "steps": {
        "gen": {"model": "diffusion", "task": "generate", "with": {"prompt": "$inputs.prompt"}},
        "cap": {"model": "captioner", "task": "caption", "when": "$inputs.check",
                "with": {"image": "$steps.gen.image"}},
        "cls": {"model": "text", "task": "zero_shot",
                "with": {"text": "$steps.cap.text", "labels": ["red", "blue"]}},
    },
    "outputs": {"image": "$steps.gen.image", "caption": "$steps.cap.text",
                "labels": "$steps.cls.labels"},
}


async def test_false_condition_skips_step_and_its_dependents():
    fake = FakeModels()
    result = await make(fake).run(spec(COND), {"prompt": "a cat"})
    assert result.steps["cap"].skipped and result.steps["cls"].skipped
    assert result.outputs["caption"] is None and result.outputs["labels"] is None
    assert result.outputs["image"].startswith(b"\x89PNG")
    assert fake.calls == {"diffusion/generate": 1}


async def test_true_condition_runs_step():
    fake = FakeModels()
    result = await make(fake).run(spec(COND), {"prompt": "a cat", "check": True})
    assert result.outputs["caption"].startswith("an image of")
    assert fake.calls["captioner/caption"] == 1


async def test_comparison_condition():
    raw = {"name": "cmp", "inputs": {"text": "text", "labels": "list[text]"},
           "steps": {"zs": {"model": "text", "task": "zero_shot",
                            "with": {"text": "$inputs.text", "labels": "$inputs.labels"}},
                     "emb": {"model": "text", "task": "embed",
                             "when": "$steps.zs.labels[0].score > 1.5",
                             "with": {"text": "$inputs.text"}}},
           "outputs": {"e": "$steps.emb.embedding"}}
    result = await make(FakeModels()).run(spec(raw), {"text": "t", "labels": ["a"]})
    assert result.steps["emb"].skipped and result.outputs["e"] is None


async def test_step_timeout_names_the_step():
    raw = {**PARALLEL, "steps": {**PARALLEL["steps"], "b": {**PARALLEL["steps"]["b"],
                                                             "timeout_s": 0.05}}}
    fake = FakeModels(delays={"caption": 3600})  # only the step's timeout can end it
    with pytest.raises(StepTimeout) as info:
        await asyncio.wait_for(make(fake).run(spec(raw), {"image": png(), "labels": ["x"]}), 30)
    assert "step 'b'" in info.value.message and info.value.status == 504
    assert "0.05s" in info.value.message


async def test_model_bad_input_stays_a_client_error_naming_the_step():
    with pytest.raises(BadInput) as info:
        await make(FakeModels()).run(spec(PARALLEL), {"image": b"junk", "labels": ["x"]})
    assert info.value.status == 422 and "step 'b'" in info.value.message
    assert info.value.field == "inputs.image"  # traced back to the pipeline input


async def test_model_crash_is_a_5xx_naming_the_step():
    fake = FakeModels(fail={"caption": RuntimeError("CUDA out of memory")})
    with pytest.raises(StepFailed) as info:
        await make(fake).run(spec(PARALLEL), {"image": png(), "labels": ["x"]})
    assert info.value.status == 502 and "step 'b'" in info.value.message
    assert "CUDA out of memory" in info.value.message


async def test_pipeline_inputs_are_checked_with_field_names():
    ex = make(FakeModels())
    with pytest.raises(BadInput) as info:
        await ex.run(spec(PARALLEL), {"image": png()})
    assert info.value.field == "inputs.labels"
    with pytest.raises(BadInput) as info:
        await ex.run(spec(PARALLEL), {"image": png(), "labels": "x"})
    assert info.value.field == "inputs.labels"
    with pytest.raises(BadInput) as info:
        await ex.run(spec(PARALLEL), {"image": png(), "labels": ["x"], "extra": 1})
    assert info.value.field == "inputs.extra"


async def test_call_model_unknown_model_and_task():
    ex = make(FakeModels())
    with pytest.raises(NotFound):
        await ex.call_model("nope", "caption", {})
    with pytest.raises(NotFound):
        await ex.call_model("captioner", "generate", {})
    with pytest.raises(BadInput) as info:
        await ex.call_model("captioner", "caption", {"image": 3})
    assert info.value.field == "inputs.image"


async def test_progress_events_are_forwarded_before_the_step_event():
    raw = {"name": "g", "inputs": {"prompt": "text"},
           "steps": {"gen": {"model": "diffusion", "task": "generate",
                             "with": {"prompt": "$inputs.prompt", "steps": 3}}},
           "outputs": {"image": "$steps.gen.image"}}
    events = []
    await make(FakeModels()).run(spec(raw), {"prompt": "p"}, CachePolicy(), events.append)
    kinds = [(e["event"], e.get("progress")) for e in events]
    assert kinds == [("start", None), ("progress", 1), ("progress", 2), ("progress", 3),
                     ("step", None)]
    assert events[0] == {"event": "start", "step": "gen", "model": "diffusion",
                         "task": "generate"}


class Watched(FakeModels):
    """Records, as each model call begins, the events sent so far."""

    def __init__(self, events: list[dict]) -> None:
        super().__init__()
        self.events = events
        self.seen: dict[str, list[tuple[str, str]]] = {}

    async def call(self, model, task, inputs):
        self.seen[task] = [(e["event"], e["step"]) for e in self.events]
        return await super().call(model, task, inputs)


async def test_start_comes_when_a_step_begins_and_never_for_a_skipped_step():
    raw = {**COND, "steps": {**COND["steps"], "fused": {
        "fuse": {}, "with": {"labels": ["$steps.cls.labels"]}}},
        "outputs": {**COND["outputs"], "fused": "$steps.fused.labels"}}
    for check, ran in ((True, ["gen", "cap", "cls", "fused"]), (False, ["gen"])):
        events: list[dict] = []
        fake = Watched(events)
        await make(fake).run(spec(raw), {"prompt": "p", "check": check}, CachePolicy(),
                             events.append)
        starts = [e["step"] for e in events if e["event"] == "start"]
        assert starts == ran
        order = [(e["event"], e["step"]) for e in events if e["event"] in ("start", "step")]
        for name in ran:  # its start, then (after the model was called) its step event
            assert order.index(("start", name)) < order.index(("step", name))
        for name in set(raw["steps"]) - set(ran):
            assert ("step", name) in order and ("start", name) not in order
        if check:  # a step starts only once what it needs is done
            assert order.index(("step", "gen")) < order.index(("start", "cap"))
            assert fake.seen["caption"][-1] == ("start", "cap")  # sent before the call
            assert next(e for e in events if e["event"] == "start" and e["step"] == "fused"
                        ) == {"event": "start", "step": "fused", "model": None,
                              "task": "fuse"}


FUSED = {
    "name": "f", "inputs": {"image": "image", "labels": "list[text]"},
    "steps": {
        "clip": {"model": "clip", "task": "zero_shot",
                 "with": {"image": "$inputs.image", "labels": "$inputs.labels"}},
        "cap": {"model": "captioner", "task": "caption", "with": {"image": "$inputs.image"}},
        "cls": {"model": "text", "task": "zero_shot",
                "with": {"text": "$steps.cap.text", "labels": "$inputs.labels"}},
        "fused": {"fuse": {"method": "weighted_mean", "weights": [0.25, 0.75]},
                  "with": {"labels": ["$steps.clip.labels", "$steps.cls.labels"]}},
    },
    "outputs": {"labels": "$steps.fused.labels", "a": "$steps.clip.labels",
                "b": "$steps.cls.labels"},
}


async def test_fuse_step_combines_parallel_rankings():
    fake = FakeModels(delays={"zero_shot": 0.5, "caption": 0.5})
    result = await make(fake).run(spec(FUSED), {"image": png(), "labels": ["cat", "dog", "car"]})
    a = {x["label"]: x["score"] for x in result.outputs["a"]}
    b = {x["label"]: x["score"] for x in result.outputs["b"]}
    fused = {x["label"]: x["score"] for x in result.outputs["labels"]}
    for label in ("cat", "dog", "car"):
        assert fused[label] == pytest.approx(0.25 * a[label] + 0.75 * b[label])
    # its own time only: a clock that counted the 500 ms wait for its inputs would fail
    assert result.steps["fused"].ms < 400


def test_fuse_weighted_mean_normalises_each_model():
    # model 2 scores on another scale; normalised per model it agrees with model 1 on "b"
    fused = fuse_labels([[{"label": "a", "score": 0.4}, {"label": "b", "score": 0.6}],
                         [{"label": "a", "score": 10.0}, {"label": "b", "score": 30.0}]])
    assert [x["label"] for x in fused] == ["b", "a"]
    assert fused[0]["score"] == pytest.approx((0.6 + 0.75) / 2)
    assert sum(x["score"] for x in fused) == pytest.approx(1.0)


def test_fuse_rank_uses_order_only():
    fused = fuse_labels([[{"label": "a", "score": 0.9}, {"label": "b", "score": 0.1}],
                         [{"label": "b", "score": 0.51}, {"label": "a", "score": 0.49}],
                         [{"label": "a", "score": 100}, {"label": "b", "score": 1}]],
                        method="rank")
    assert fused[0]["label"] == "a"  # ranked first by two of three models


def test_fuse_rejects_bad_weights_and_methods():
    r = [{"label": "a", "score": 1.0}]
    with pytest.raises(BadInput) as info:
        fuse_labels([r, r], weights=[1.0])
    assert info.value.field == "weights"
    with pytest.raises(BadInput):
        fuse_labels([r], method="vote")


def test_cache_policy_from_header():
    assert CachePolicy.from_header(None) == CachePolicy(True, True)
    assert CachePolicy.from_header("no-cache") == CachePolicy(False, True)
    assert CachePolicy.from_header("max-age=0, no-store") == CachePolicy(False, False)


async def test_bad_input_from_an_upstream_step_names_that_step():
    raw = {"name": "s", "inputs": {"image": "image"},
           "steps": {"cap": {"model": "captioner", "task": "caption",
                             "with": {"image": "$inputs.image"}},
                     "cls": {"model": "text", "task": "zero_shot",
                             "with": {"text": "$steps.cap.text", "labels": ["a"]}}},
           "outputs": {"labels": "$steps.cls.labels"}}
    fake = FakeModels(fail={"zero_shot": BadInput("text is empty", field="text")})
    with pytest.raises(BadInput) as info:
        await make(fake).run(spec(raw), {"image": png()})
    assert info.value.field == "steps.cls.text" and "step 'cls'" in info.value.message


# ---- the whole pipeline admitted before its first step (fusion.core.admission) ----------

SEQUENCE = {"name": "seq", "inputs": {"image": "image", "labels": "list[text]"},
            "steps": {"cap": {"model": "captioner", "task": "caption",
                              "with": {"image": "$inputs.image"}},
                      "cls": {"model": "text", "task": "zero_shot",
                              "with": {"text": "$steps.cap.text", "labels": "$inputs.labels"}}},
            "outputs": {"labels": "$steps.cls.labels"}}


class Gated(FakeModels):
    """Calls to ``gated`` tasks wait for ``release``; ``arrived`` is set when one waits."""

    def __init__(self, gated: str, **kw) -> None:
        super().__init__(**kw)
        self.gated = gated
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0

    async def call(self, model, task, inputs):
        if task == self.gated:
            self.arrived.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().call(model, task, inputs)


def bounded(fake: FakeModels, capacity: int = 1) -> tuple[Executor, Admission]:
    """An executor whose every model queue holds ``capacity`` calls of this router."""
    executor = make(fake)
    executor.admission = Admission(100, model_queues={m: ModelQueue(m, capacity)
                                                      for m in MODELS})
    return executor, executor.admission


async def test_a_full_later_model_refuses_the_run_before_its_first_step():
    fake = FakeModels()
    executor, adm = bounded(fake)
    other = adm.reserve({"elsewhere": "text"})  # other work holds text's only slot
    inputs = {"image": png(), "labels": ["a", "b"]}
    for _ in range(5):
        with pytest.raises(Overloaded) as info:
            await executor.run(spec(SEQUENCE), inputs)
        msg = info.value.message
        assert "model 'text'" in msg and "step 'cls'" in msg and "before any step ran" in msg
        assert info.value.status == 503 and info.value.retry_after_s > 0
    assert fake.calls == {}  # step one (caption) never ran
    assert adm.model_held == {"text": 1} and adm.rejected == 5  # refusals took nothing
    other.release_all()
    result = await executor.run(spec(SEQUENCE), inputs)
    assert result.outputs["labels"] and adm.model_held == {}
    assert fake.calls == {"captioner/caption": 1, "text/zero_shot": 1}


async def test_model_slots_come_back_after_failed_runs():
    fake = FakeModels(fail={"zero_shot": RuntimeError("out of memory")})
    executor, adm = bounded(fake)
    for i in range(4):
        with pytest.raises(StepFailed, match="step 'cls'"):
            await executor.run(spec(SEQUENCE), {"image": png(size=4 + i), "labels": ["a"]})
        assert adm.model_held == {}
    fake.fail.clear()
    await executor.run(spec(SEQUENCE), {"image": png(), "labels": ["a"]})  # capacity is back
    assert fake.calls["text/zero_shot"] == 5


async def test_model_slots_come_back_when_a_run_is_cancelled():
    fake = Gated("caption")
    executor, adm = bounded(fake)
    for i in range(3):
        fake.arrived.clear()
        run = asyncio.create_task(executor.run(spec(SEQUENCE), {"image": png(size=4 + i),
                                                                 "labels": ["a"]}))
        await fake.arrived.wait()
        # step two has not started, yet its model's slot is held for it
        assert adm.model_held == {"captioner": 1, "text": 1}
        run.cancel()  # what a client's disconnect does
        with pytest.raises(asyncio.CancelledError):
            await run
        assert adm.model_held == {} and fake.cancelled == i + 1
    fake.release.set()
    await executor.run(spec(SEQUENCE), {"image": png(), "labels": ["a"]})
    assert adm.model_held == {}


async def test_a_when_step_needs_room_to_be_admitted_and_frees_it_once_skipped():
    raw = {"name": "w", "inputs": {"prompt": "text", "image": "image",
                                   "check": {"type": "bool", "default": False}},
           "steps": {"gen": {"model": "diffusion", "task": "generate",
                             "with": {"prompt": "$inputs.prompt"}},
                     "cap": {"model": "captioner", "task": "caption", "when": "$inputs.check",
                             "with": {"image": "$inputs.image"}}},
           "outputs": {"image": "$steps.gen.image", "caption": "$steps.cap.text"}}
    fake = Gated("generate")
    executor, adm = bounded(fake)
    inputs = {"prompt": "a fox", "image": png()}
    other = adm.reserve({"elsewhere": "captioner"})
    with pytest.raises(Overloaded, match="step 'cap'"):  # it may run: it must have room
        await asyncio.wait_for(executor.run(spec(raw), inputs), 10)
    other.release_all()
    run = asyncio.create_task(executor.run(spec(raw), inputs))
    await fake.arrived.wait()
    for _ in range(1000):  # while gen still runs, the skipped step's slot comes free
        if adm.model_held == {"diffusion": 1}:
            break
        await asyncio.sleep(0)
    assert adm.model_held == {"diffusion": 1} and not run.done()
    fake.release.set()
    assert (await run).steps["cap"].skipped and adm.model_held == {}


async def test_identical_runs_share_their_steps_slots_and_distinct_ones_do_not():
    from fusion.cache import MemoryBackend, StepCache

    fake = Gated("caption")
    executor, adm = bounded(fake)
    executor.cache = StepCache(MemoryBackend(), namespace="share")
    same = {"image": png(), "labels": ["a"]}
    runs = [asyncio.create_task(executor.run(spec(SEQUENCE), same)) for _ in range(6)]
    await fake.arrived.wait()
    # six identical runs will make one call per step: they hold one slot of each model
    assert adm.model_held == {"captioner": 1, "text": 1}
    with pytest.raises(Overloaded, match="model 'captioner'"):  # other work finds them full
        await executor.run(spec(SEQUENCE), {"image": png(size=5), "labels": ["a"]})
    with pytest.raises(Overloaded):  # so does the same run that cannot join (no-store)
        await executor.run(spec(SEQUENCE), same, CachePolicy(read=False, write=False))
    fake.release.set()
    results = await asyncio.gather(*runs)
    assert len({r.outputs["labels"][0]["score"] for r in results}) == 1
    assert fake.calls == {"captioner/caption": 1, "text/zero_shot": 1}
    assert adm.model_held == {}


async def test_a_direct_call_holds_its_models_slot_while_it_runs():
    fake = Gated("embed")
    executor, adm = bounded(fake)
    call = asyncio.create_task(executor.call_model("text", "embed", {"text": "x"}))
    await fake.arrived.wait()
    assert adm.model_held == {"text": 1}
    with pytest.raises(Overloaded, match="model 'text' is at its queue limit"):
        await executor.call_model("text", "embed", {"text": "y"})
    fake.release.set()
    await call
    assert adm.model_held == {}
