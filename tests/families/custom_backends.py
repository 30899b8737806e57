"""``family: custom`` backends, as a user writes them: ``ModelBackend`` subclasses named by
import path in the serve config (``backend: "tests.families.custom_backends:KeywordLabels"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from deployments.base import ModelBackend, Progress
from fusion.errors import BadInput
from fusion.tasks import TaskSpec, param


class KeywordLabels(ModelBackend):
    """Scores each label by how often its keywords (``keywords.json`` in the source folder)
    occur in the text; scores sum to 1 (uniform when nothing matches)."""

    marker_files = ("keywords.json",)
    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "classify": TaskSpec({"text": param("text"), "labels": param("list[text]")},
                             {"labels": "labels"}),
    }

    def load_weights(self) -> None:
        self.keywords = json.loads((Path(self.resolved.location) / "keywords.json").read_text())

    def prepare(self, task: str, inputs: dict[str, Any]) -> Any:
        item = super().prepare(task, inputs)
        if not item["labels"]:
            raise BadInput("labels must not be empty", field="labels")
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        out = []
        for item in items:
            words = item["text"].lower().split()
            hits = [1 + sum(words.count(k) for k in self.keywords.get(label, []))
                    for label in item["labels"]]
            ranked = sorted(zip(item["labels"], hits, strict=True), key=lambda x: -x[1])
            out.append({"labels": [{"label": lab, "score": h / sum(hits)} for lab, h in ranked]})
        return out


class NotABackend:
    """Has the right methods but is no ``ModelBackend``: start-up must refuse it."""

    def run(self, task: str, items: list[Any]) -> list[dict]:
        return []
