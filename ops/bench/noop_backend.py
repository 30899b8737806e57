"""The embedded runtime's floor for ``serving.py``: a ``family: custom`` backend that answers
at once with an embedding-shaped constant (Ray's floor is a no-op Serve deployment)."""

from __future__ import annotations

from typing import Any, ClassVar

from deployments.base import ModelBackend, Progress
from fusion.tasks import TaskSpec, param

TASKS = {"embed": {"inputs": {"text": "text"}, "outputs": {"embedding": "embedding"}}}


class NoopEmbedding(ModelBackend):
    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "embed": TaskSpec({"text": param("text")}, {"embedding": "embedding"})}

    def load_weights(self) -> None:
        return None

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        return [{"embedding": [0.0] * 384} for _ in items]
