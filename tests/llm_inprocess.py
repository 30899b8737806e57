"""The real tiny language model behind the router, in-process (no Ray): for unit tests of
the OpenAI chat routes and token-streaming pipelines.

``LlmModels`` is ``FakeModels`` (fakes for the other families: router logic only) plus the
``llm`` model, which is the real ``tiny:llm`` backend (tokenizer, chat template, generate)
called the way its Serve deployment calls it: ``prepare`` then ``run`` for a call, and
``generate`` with a text callback for a stream.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from deployments.llm import LlmModel
from fusion.cache import StepCache
from fusion.config import AppConfig, CacheConfig, ModelConfig
from fusion.core.gateway import Gateway
from fusion.replica.model import relay
from tests.fakes import FAKE_MODELS, FakeModels

LLM_MODEL = {"name": "llm", "family": "llm", "source": "tiny:llm"}


def load_tiny_llm(model_dir: str) -> LlmModel:
    return LlmModel.load(ModelConfig.model_validate(LLM_MODEL), model_dir)


def llm_config(**extra: Any) -> AppConfig:
    """The fakes' models plus ``llm`` and ``ocr`` (what the built-in LLM pipelines need)."""
    models = [*(dict(m) for m in FAKE_MODELS),
              {"name": "ocr", "family": "ocr", "source": "package:rapidocr_onnxruntime"},
              dict(LLM_MODEL)]
    return AppConfig.model_validate({"models": models, **extra})


def llm_gateway(models: LlmModels) -> Gateway:
    """The router's ``Gateway`` on ``llm_config()`` and ``models``, with an in-process cache."""
    return Gateway(llm_config(), models, StepCache.from_config(CacheConfig(redis_url=None)))


class LlmModels(FakeModels):
    def __init__(self, llm: LlmModel, **kw: Any) -> None:
        super().__init__(**kw)
        self.llm = llm
        self.cancelled = threading.Event()  # set when a stream's consumer left early
        self.generating = threading.Event()  # set when a unary call starts generating
        self.finished = threading.Event()  # ... and when it has ended

    async def info(self, model: str) -> dict[str, Any]:
        return self.llm.info() if model == "llm" else await super().info(model)

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if model != "llm":
            return await super().call(model, task, inputs)
        self.calls[f"{model}/{task}"] += 1
        item = self.llm.prepare(task, inputs)

        def run() -> list[dict]:
            self.generating.set()
            try:
                return self.llm.run(task, [item])
            finally:
                self.finished.set()

        try:
            return (await asyncio.to_thread(run))[0]
        except asyncio.CancelledError:  # as the replica does (fusion.replica.model)
            item.cancel.set()
            raise

    async def stream(self, model: str, task: str, inputs: dict[str, Any]):
        if model != "llm":
            async for event in super().stream(model, task, inputs):
                yield event
            return
        self.calls[f"{model}/{task}"] += 1
        item = self.llm.prepare(task, inputs)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict] = asyncio.Queue()
        cancel = threading.Event()

        def on_text(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"token": text})

        job = asyncio.ensure_future(asyncio.to_thread(self.llm.generate, [item], on_text,
                                                      cancel))
        try:
            async for event in relay(job, queue):
                yield event
            yield {"result": job.result()[0]}
        finally:
            if not job.done():
                cancel.set()
                self.cancelled.set()

    @staticmethod
    def compute(task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if task == "ocr":
            return {"text": f"SIGN {len(inputs['image'])}", "lines": []}
        return FakeModels.compute(task, inputs)
