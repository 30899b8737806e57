"""One process hosting several models (a bundle; config side in ``fusion.bundles``).

Each member is the very ``Replica`` its family deploys alone (same validation before
batching, same worker thread, metrics and spans labelled with the member's name), loaded in
this process, with a batch queue of its own (``member_class``: Serve's ``@serve.batch`` keeps
one queue per decorated function, so ``fusion.serve.bundle`` gives each member a freshly
decorated subclass). The Serve runtime deploys a bundle as one deployment; the embedded
runtime loads every model of a config as one bundle in its own process.

Start-up: members whose load builds no torch module (ONNX Runtime, CTranslate2: see
``ModelBackend.builds_torch_modules``) load in a thread beside the others, which load one
after another in the calling thread; transformers' loader is not thread-safe
(``deployments.base.TORCH_BUILD``), the ONNX Runtime and CTranslate2 loaders are. Only
their native set-up (sessions, the CTranslate2 model) overlaps the torch lane, whose imports
hold the GIL, so the gain is small: none measurable on the shared 2-core machine
(docs/measured.md, "Edge profile"). ``FUSION_BUNDLE_LOAD_THREAD=0`` loads every member in the
calling thread (``ops/bench/edge.py --profiles edge,edge-serial`` compares both).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from deployments.base import import_shared_libraries, prepare_process
from fusion.config import ModelConfig
from fusion.errors import NotFound
from fusion.registry import model_class
from fusion.replica.model import Replica

log = logging.getLogger("fusion.replica.bundle")


def _builds_torch(config: ModelConfig, served: type[Replica]) -> bool:
    """Whether the member's load builds torch modules (then it stays off the side thread)."""
    backend = served.backend_cls or model_class(config)
    return bool(backend.builds_torch_modules(config)) or config.source.kind in ("tiny", "shape")


class ModelBundle:
    """The members of one bundle, loaded in this process, reached by model name."""

    def __init__(self, configs: list[dict[str, Any]], model_dir: str | None = None,
                 observability: dict[str, Any] | None = None,
                 classes: dict[str, type[Replica]] | None = None, *,
                 member_class: Callable[[ModelConfig], type[Replica]],
                 own_queue: Callable[[type[Replica], str], type[Replica]] = lambda c, _: c,
                 ) -> None:
        """``member_class``: the runtime's class for a model; ``own_queue`` gives a member a
        batch queue of its own; ``classes`` overrides a family's class (unit tests)."""
        started = time.perf_counter()
        plan: list[tuple[ModelConfig, type[Replica]]] = []
        for raw in configs:
            cfg = ModelConfig.model_validate(raw)
            plan.append((cfg, (classes or {}).get(cfg.family) or member_class(cfg)))
        prepare_process(cfg for cfg, _ in plan)
        loaded: dict[str, Replica] = {}
        took: dict[str, float] = {}
        self.loaded_in: dict[str, str] = {}  # member → the thread that loaded it

        def load(lane: list[tuple[ModelConfig, type[Replica]]]) -> None:
            for cfg, base in lane:
                t = time.perf_counter()
                loaded[cfg.name] = own_queue(base, cfg.name)(
                    cfg.model_dump(mode="json"), model_dir, observability)
                took[cfg.name] = time.perf_counter() - t
                self.loaded_in[cfg.name] = threading.current_thread().name

        threaded = os.environ.get("FUSION_BUNDLE_LOAD_THREAD", "1") != "0"  # 0: A/B in the bench
        torch_lane = [(c, b) for c, b in plan if not threaded or _builds_torch(c, b)]
        side = [(c, b) for c, b in plan if threaded and not _builds_torch(c, b)]
        failed: list[BaseException] = []

        def load_side() -> None:
            try:
                load(side)
            except BaseException as exc:  # re-raised in the constructor's thread
                failed.append(exc)

        thread = threading.Thread(target=load_side, name="bundle-load", daemon=True)
        if side:
            import_shared_libraries()
            thread.start()
        try:
            load(torch_lane)
        finally:
            if side:
                thread.join()
        if failed:
            raise failed[0]
        self.members: dict[str, Replica] = {cfg.name: loaded[cfg.name] for cfg, _ in plan}
        log.info("bundle loaded in %.1f s: %s (in a thread beside the others: %s)",
                 time.perf_counter() - started,
                 ", ".join(f"{name} {s:.1f} s" for name, s in took.items()),
                 [cfg.name for cfg, _ in side])

    def member(self, model: str | None) -> Replica:
        if model not in self.members:
            raise NotFound(f"model {model!r} is not in this bundle; it holds "
                           f"{list(self.members)}", field="model")
        return self.members[model]

    def info(self, model: str | None = None) -> dict[str, Any]:
        return self.member(model).info()

    async def call(self, task: str, inputs: dict[str, Any], trace: dict[str, str] | None = None,
                   *, model: str | None = None) -> dict[str, Any]:
        return await self.member(model).call(task, inputs, trace)

    async def call_many(self, task: str, items: list[dict[str, Any]],
                        trace: dict[str, str] | None = None, *,
                        model: str | None = None) -> list[dict[str, Any]]:
        return await self.member(model).call_many(task, items, trace)

    async def call_stream(self, task: str, inputs: dict[str, Any],
                          trace: dict[str, str] | None = None, *,
                          model: str | None = None) -> AsyncIterator[dict]:
        async for event in self.member(model).call_stream(task, inputs, trace):
            yield event

    def check_health(self) -> None:
        for served in self.members.values():
            served.check_health()
