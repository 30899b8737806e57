"""The Serve deployment around every model: ``fusion.replica.Replica`` plus ``@serve.batch``.

Everything a replica does is Ray-free (``fusion.replica``) and shared with the embedded
runtime; what is Serve's is how single calls are gathered (``@serve.batch``, one queue per
decorated function) and where metrics go (Ray's metrics agent).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.base import prepare_process
from fusion.config import ModelConfig
from fusion.replica.model import Replica, Timing
from fusion.serve.metrics import ray_recorder


class ServedModel(Replica):
    def __init__(self, config: dict[str, Any], model_dir: str | None = None,
                 observability: dict[str, Any] | None = None) -> None:
        prepare_process([ModelConfig.model_validate(config)])  # a no-op in a bundle: it ran first
        super().__init__(config, model_dir, observability,
                         ray_recorder() if observability else None)
        cfg = ModelConfig.model_validate(config)
        self._run_batch.set_max_batch_size(cfg.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _run_batch(self, requests: list[tuple[str, Any]]) -> list[tuple[dict, Timing]]:
        return await self._run_requests(requests)


ModelDeployment = serve.deployment(ServedModel)
