"""A fake model client for unit-testing the router's logic in isolation (no Ray, no torch).

Each fake task derives its output from its inputs, so tests can check what flowed where,
and counts its calls, so tests can check what ran (and what the cache spared).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections import Counter
from typing import Any

from deployments.base import ModelBackend
from deployments.sources import ResolvedSource
from fusion.config import AppConfig
from fusion.errors import BadInput

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082")


def png(color: tuple[int, int, int] = (255, 0, 0), size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


FAKE_MODELS = (
    {"name": "captioner", "family": "caption", "source": "tiny:caption"},
    {"name": "text", "family": "text", "source": "tiny:text-embedding"},
    {"name": "clip", "family": "clip", "source": "tiny:clip"},
    {"name": "whisper", "family": "audio", "source": "tiny:whisper"},
    {"name": "diffusion", "family": "diffusion", "source": "tiny:diffusion"},
)


def fake_config(**extra: Any) -> AppConfig:
    return AppConfig.model_validate({"models": [dict(m) for m in FAKE_MODELS], **extra})


def _scores(labels: list[str], seed: str) -> list[dict]:
    raw = [int(hashlib.sha256(f"{seed}|{lab}".encode()).hexdigest()[:6], 16) + 1 for lab in labels]
    total = sum(raw)
    out = [{"label": lab, "score": r / total} for lab, r in zip(labels, raw, strict=True)]
    return sorted(out, key=lambda x: -x["score"])


class FakeModels:
    """Implements ``ModelBackendClient``; ``delays`` maps task → seconds to sleep."""

    def __init__(self, delays: dict[str, float] | None = None,
                 fail: dict[str, Exception] | None = None) -> None:
        self.delays = delays or {}
        self.fail = fail or {}
        self.calls: Counter[str] = Counter()
        self.batches: list[tuple[str, int]] = []
        self.fingerprints: dict[str, str] = {}

    async def info(self, model: str) -> dict[str, Any]:
        return {"name": model, "family": "fake", "backend": "fake", "tasks": [],
                "source": "fake:", "device": "cpu", "dtype": "float32",
                "fingerprint": self.fingerprints.get(model, f"fake-{model}-v1")}

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        self.calls[f"{model}/{task}"] += 1
        await asyncio.sleep(self.delays.get(task, 0))
        if task in self.fail:
            raise self.fail[task]
        return self.compute(task, inputs)

    async def call_many(self, model: str, task: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Like a replica's ``call_many``: one call, each item computed; ``batches`` records
        the size of every list that reached the model."""
        self.batches.append((f"{model}/{task}", len(items)))
        await asyncio.sleep(self.delays.get(task, 0))
        if task in self.fail:
            raise self.fail[task]
        out = []
        for i, item in enumerate(items):
            try:
                out.append(self.compute(task, item))
            except BadInput as err:
                raise BadInput(f"inputs[{i}]: {err.message}",
                               field=f"inputs[{i}].{err.field}") from None
        return out

    async def stream(self, model: str, task: str, inputs: dict[str, Any]):
        steps = inputs.get("steps", 3)
        for i in range(1, steps + 1):
            await asyncio.sleep(self.delays.get(task, 0) / max(steps, 1))
            yield {"progress": {"step": i, "total": steps}}
        self.calls[f"{model}/{task}"] += 1
        if task in self.fail:
            raise self.fail[task]
        yield {"result": self.compute(task, inputs)}

    @staticmethod
    def compute(task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if task == "caption":
            if not inputs["image"].startswith(b"\x89PNG"):
                raise BadInput("image is not a decodable image", field="image")
            return {"text": f"an image of {len(inputs['image'])} bytes"}
        if task == "zero_shot":
            seed = inputs.get("text") or hashlib.sha256(inputs.get("image", b"")).hexdigest()
            return {"labels": _scores(inputs["labels"], seed)}
        if task in ("embed", "embed_text", "embed_image"):
            data = inputs.get("text", "").encode() or inputs.get("image", b"")
            digest = hashlib.sha256(data).digest()
            return {"embedding": [b / 255 for b in digest[:8]]}
        if task == "transcribe":
            return {"text": f"{len(inputs['audio'])} bytes of speech", "language": "en"}
        if task == "generate":
            shade = int(hashlib.sha256(f"{inputs['prompt']}|{inputs['seed']}".encode())
                        .hexdigest()[:2], 16)
            return {"image": png((shade, 0, 0), inputs.get("width", 8))}
        if task == "classify":
            return {"labels": _scores(["negative", "positive"], inputs["text"])}
        raise AssertionError(f"fake has no task {task}")


class WeightlessBackend(ModelBackend):
    """A ``ModelBackend`` that loads nothing (no source, no weights): subclasses script
    ``run`` to test the replica side (``ServedModel``) without a model."""

    @classmethod
    def load(cls, config, model_dir=None):
        backend = cls(config, ResolvedSource(config.source, "/nowhere", None, "fp", True))
        backend.load_weights()
        return backend

    def load_weights(self) -> None:
        pass
