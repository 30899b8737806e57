"""Models in this process: the embedded runtime's ``ModelCaller`` over local replicas.

Each model is the same ``Replica`` the Serve runtime deploys, gathering single calls in its
own ``BatchQueue``; all of them load as one ``ModelBundle`` (so ONNX Runtime and
CTranslate2 members load in a thread beside the torch ones, as in the edge bundle). What
Serve's handles do between router and replica is done here in a few lines: a queue limit per
model (``max_ongoing_requests + max_queued_requests``, refused with 503 and Retry-After
before any work, as Serve's back-pressure is) and errors mapped as the ingress maps them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fusion.config import AppConfig, ModelConfig
from fusion.core.admission import Admission
from fusion.embedded.batcher import BatchQueue
from fusion.errors import FusionError, NotFound, StepFailed, unwrap
from fusion.observe import NULL_OBSERVER, Recorder
from fusion.replica.bundle import ModelBundle
from fusion.replica.model import Replica, Timing

_recorder: Recorder | None = None  # set by the server before models load


class LocalModel(Replica):
    """A replica with an asyncio batch queue instead of ``@serve.batch``."""

    def __init__(self, config: dict[str, Any], model_dir: str | None = None,
                 observability: dict[str, Any] | None = None) -> None:
        super().__init__(config, model_dir, observability, _recorder)
        self.batches: list[int] = []
        cfg = self.model.config
        # no window: a batch forms while the previous one computes (batch_wait_timeout_s is
        # Serve's window; here it would only delay a lone request)
        self._queue: BatchQueue[tuple[str, Any], tuple[dict, Timing]] = BatchQueue(
            self._run_requests, cfg.max_batch_size, 0.0, self._batched)

    async def _run_batch(self, request: tuple[str, Any]) -> tuple[dict, Timing]:
        return await self._queue.submit(request)

    def _batched(self, size: int) -> None:
        self.batches.append(size)  # sizes of the batches run (tests; the metric is per task)
        del self.batches[:-256]


def _local_class(_: ModelConfig) -> type[Replica]:
    return LocalModel


class LocalModels:
    """``ModelCaller`` for the ``Gateway``: call, call_many, stream and info by model name."""

    def __init__(self, config: AppConfig, recorder: Recorder | None = None) -> None:
        global _recorder
        _recorder = recorder
        observability = config.observability.model_dump(mode="json")
        self.bundle = ModelBundle([m.model_dump(mode="json") for m in config.models],
                                  config.model_dir, observability, member_class=_local_class)
        self.limits = {m.name: self._limit(m) for m in config.models}
        self.in_flight = {m.name: 0 for m in config.models}
        self.admission = Admission(1 << 30)  # the gateway's own, once it exists
        self.observer = NULL_OBSERVER  # the gateway's (calls stay in this process's trace)

    @staticmethod
    def _limit(m: ModelConfig) -> int | None:
        """Requests one model holds at once before refusing: Serve's ongoing + queued."""
        queued = m.max_queued_requests
        if queued is None or queued < 0:
            return None
        return (m.max_ongoing_requests or 1) * m.num_replicas + queued

    def _replica(self, model: str) -> Replica:
        if model not in self.limits:
            raise NotFound(f"unknown model {model!r}", field="model")
        return self.bundle.member(model)

    @contextlib.contextmanager
    def _slot(self, model: str, task: str) -> Iterator[None]:
        limit = self.limits.get(model)
        if limit is not None and self.in_flight[model] >= limit:
            raise self.admission.model_full(model, self.in_flight[model])
        self.in_flight[model] += 1
        try:
            yield
        except FusionError:
            raise
        except Exception as exc:
            err = unwrap(exc)
            if isinstance(err, FusionError):
                raise err from exc
            raise StepFailed(f"{model}/{task} failed: {type(err).__name__}: {err}") from exc
        finally:
            self.in_flight[model] -= 1
            self.admission.model_done(model)

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        replica = self._replica(model)
        with self._slot(model, task):
            return await replica.call(task, inputs)

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        replica = self._replica(model)
        with self._slot(model, task):
            return await replica.call_many(task, items)

    async def stream(self, model: str, task: str, inputs: dict[str, Any]
                     ) -> AsyncIterator[dict]:
        replica = self._replica(model)
        with self._slot(model, task):
            async for event in replica.call_stream(task, inputs):
                yield event

    async def info(self, model: str) -> dict[str, Any]:
        return self._replica(model).info()

    def stats(self, model: str) -> dict[str, int]:
        return self._replica(model).stats()
