"""A whole model family in one module, outside ``deployments/``: declaration, backend, tiny
recipe. A config reaches it with ``family: reverse, family_module: tests.families.reverse``.

The "model" reverses text and prefixes what its weights folder says, so a test can tell it
loaded the folder its tiny recipe wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from fusion.registry import Family
from fusion.tasks import TaskSpec, param


class ReverseModel(ModelBackend):
    marker_files = ("prefix.txt",)

    def load_weights(self) -> None:
        self.prefix = (Path(self.resolved.location) / "prefix.txt").read_text()

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        if task == "shout":
            return [{"text": self.prefix + it["text"].upper()} for it in items]
        return [{"text": self.prefix + it["text"][::-1], "length": len(it["text"])}
                for it in items]


def build_tiny_reverse(folder: str | Path) -> None:
    (Path(folder) / "prefix.txt").write_text("rev:")


FAMILY = Family(
    name="reverse",
    tasks={"reverse": TaskSpec({"text": param("text")}, {"text": "text", "length": "int"},
                               doc="The text backwards, after the folder's prefix."),
           "shout": TaskSpec({"text": param("text")}, {"text": "text"})},
    backends={"python": ("reverse", "shout"), "quiet": ("reverse",)},
    model=ReverseModel,
    tiny={"reverse": "tests.families.reverse:build_tiny_reverse"},
)
