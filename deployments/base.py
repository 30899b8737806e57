"""The shape every model family shares, and the one Serve adapter around it.

A family is a ``ModelBackend`` subclass: pure Python + torch, loadable and testable without
Ray. ``ServedModel`` is the thin Ray Serve side: it validates a request's inputs *before*
batching (so one client's bad image fails that request only, never its batch-mates), batches
with ``@serve.batch``, and runs model code in a worker thread so the replica's event loop
keeps answering health checks while a model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from ray import serve

from deployments.sources import ResolvedSource, resolve
from fusion.config import ModelConfig
from fusion.errors import BadInput
from fusion.tasks import TaskSpec
from fusion.values import check_inputs

log = logging.getLogger("fusion.deployments")

Progress = Callable[[int, int], None]


def pick_device(config: ModelConfig) -> tuple[str, Any]:
    """Device and torch dtype from config: fp16/bf16 only where a GPU runs them."""
    import torch

    device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if config.dtype == "auto":
        dtype = torch.float16 if device == "cuda" else torch.float32
    else:
        dtype = names[config.dtype]
        if device == "cpu" and dtype == torch.float16:
            log.warning("%s: fp16 on CPU is slow and inexact; using fp32", config.name)
            dtype = torch.float32
    return device, dtype


def _quiet_progress_bars() -> None:
    """Loading bars from transformers/diffusers/hub flood replica logs; a server wants none."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for module in ("transformers", "diffusers"):
        with contextlib.suppress(ImportError, AttributeError):
            importlib.import_module(f"{module}.utils.logging").disable_progress_bar()


class ModelBackend(ABC):
    """One loaded model of a family. Subclasses set ``family`` and implement the hooks."""

    family: ClassVar[str]
    marker_files: ClassVar[tuple[str, ...]] = ("config.json",)

    def __init__(self, config: ModelConfig, resolved: ResolvedSource) -> None:
        self.config = config
        self.resolved = resolved
        self.device, self.dtype = pick_device(config)
        self.tasks = config.tasks.tasks

    @classmethod
    def load(cls, config: ModelConfig, model_dir: str | Path | None = None) -> ModelBackend:
        """Resolve the source (building a tiny model if asked) and load it."""
        import torch

        torch.set_num_threads(config.threads)
        _quiet_progress_bars()
        resolved = resolve(config.source, Path(model_dir) if model_dir else None,
                           cls.marker_files)
        backend = cls(config, resolved)
        backend.load_weights()
        return backend

    @property
    def fingerprint(self) -> str:
        return self.resolved.fingerprint

    @abstractmethod
    def load_weights(self) -> None:
        """Load the model from ``self.resolved.location`` (hub id or folder)."""

    def prepare(self, task: str, inputs: dict[str, Any]) -> Any:
        """Validate and decode one request's inputs; raise ``BadInput`` naming the field.

        The default checks types against the task catalog; families decode media here.
        """
        return check_inputs(self.task_spec(task), inputs, where=task)

    @abstractmethod
    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        """Run one batch of prepared items of the same task; one output dict per item."""

    def task_spec(self, task: str) -> TaskSpec:
        if task not in self.tasks:
            raise BadInput(f"model {self.config.name!r} has no task {task!r}; "
                           f"it serves {list(self.tasks)}", field="task")
        return self.config.tasks.spec(task)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "family": self.family,
            "backend": self.config.backend,
            "tasks": list(self.tasks),
            "source": str(self.config.source),
            "fingerprint": self.fingerprint,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


async def run_grouped(requests: list[tuple[str, Any]],
                      run: Callable[[str, list[Any]], Awaitable[list[dict]]]) -> list[dict]:
    """Run a mixed batch one task at a time; results come back in the requests' order."""
    by_task: dict[str, list[int]] = {}
    for i, (task, _) in enumerate(requests):
        by_task.setdefault(task, []).append(i)
    out: list[dict] = [{} for _ in requests]
    for task, idx in by_task.items():
        results = await run(task, [requests[i][1] for i in idx])
        for i, res in zip(idx, results, strict=True):
            out[i] = res
    return out


class ServedModel:
    """Base of every ``*Deployment`` class; subclasses set ``backend_cls``."""

    backend_cls: ClassVar[type[ModelBackend]]

    def __init__(self, config: dict[str, Any], model_dir: str | None = None) -> None:
        cfg = ModelConfig.model_validate(config)
        self.model = self.backend_cls.load(cfg, model_dir)
        self._lock = threading.Lock()  # one forward pass at a time per replica
        self._run_batch.set_max_batch_size(cfg.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        log.info("loaded %s", self.model.info())

    def info(self) -> dict[str, Any]:
        return self.model.info()

    async def call(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = self.model.prepare(task, inputs)
        if self.model.task_spec(task).batched:
            return await self._run_batch((task, item))
        return (await asyncio.to_thread(self._run_locked, task, [item], None))[0]

    async def call_many(self, task: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A list request: every item prepared, then run in chunks of ``max_batch_size``.

        The list already is a batch, so it skips ``@serve.batch``; preparing (decoding images,
        audio) happens in the worker thread too, so a long list never stalls the event loop.
        A bad item fails the call with its index named (``inputs[3].image``).
        """
        if not self.model.task_spec(task).batched:
            raise BadInput(f"task {task!r} takes one item per request", field="task")
        return await asyncio.to_thread(self._run_many, task, items)

    def _run_many(self, task: str, items: list[dict[str, Any]]) -> list[dict]:
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
        for start in range(0, len(prepared), size):
            out += self._run_locked(task, prepared[start:start + size], None)
        return out

    async def call_stream(self, task: str, inputs: dict[str, Any]) -> AsyncIterator[dict]:
        """Yield ``{"progress": {"step", "total"}}`` events, then ``{"result": outputs}``."""
        item = self.model.prepare(task, inputs)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict] = asyncio.Queue()

        def progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait,
                                      {"progress": {"step": step, "total": total}})

        job = asyncio.ensure_future(asyncio.to_thread(self._run_locked, task, [item], progress))
        while not (job.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield {"result": job.result()[0]}

    def _run_locked(self, task: str, items: list[Any], progress: Progress | None) -> list[dict]:
        with self._lock:
            return self.model.run(task, items, progress)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _run_batch(self, requests: list[tuple[str, Any]]) -> list[dict]:
        return await run_grouped(requests, lambda task, items: asyncio.to_thread(
            self._run_locked, task, items, None))

    def check_health(self) -> None:  # Serve calls this periodically
        return None
