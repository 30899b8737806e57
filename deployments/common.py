"""Helpers the model families share: compression, label prompts and rankings, hub kwargs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from deployments.base import ModelBackend
from fusion.config import ModelConfig
from fusion.errors import BadInput

log = logging.getLogger("fusion.deployments")


def optimise(module: Any, config: ModelConfig, device: str, name: str = "",
             include: Callable[[str], bool] | None = None) -> Any:
    """Apply ``config.quantize`` (int8 dynamic, CPU only) and ``config.compile`` to a module.

    ``include`` picks the ``Linear`` layers (by qualified name) to quantise; default all.
    """
    import torch

    if config.quantize == "int8":
        if device != "cpu":
            log.warning("%s: int8 dynamic quantisation runs on CPU only; skipped on %s",
                        config.name, device)
        else:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            # per-channel weights: on MiniLM the embeddings keep cos ~0.97 to fp32 where
            # per-tensor falls to ~0.93 (enough to flip close zero-shot calls)
            with warnings.catch_warnings():  # deprecated in favour of torchao, still works
                warnings.simplefilter("ignore")
                spec: Any = {torch.nn.Linear: per_channel_dynamic_qconfig} if include is None \
                    else {n: per_channel_dynamic_qconfig for n, mod in module.named_modules()
                          if isinstance(mod, torch.nn.Linear) and include(n)}
                module = quantize_dynamic(module, spec, dtype=torch.qint8)
    if config.compile:
        log.info("%s: torch.compile %s", config.name, name or type(module).__name__)
        module = torch.compile(module, dynamic=True)
    return module


def fill_template(template: str, labels: list[str]) -> list[str]:
    """One prompt per label; ``BadInput`` for a template without ``{}`` or bad labels."""
    if "{}" not in template:
        raise BadInput("template must contain '{}' where the label goes", field="template")
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not label.strip():
            raise BadInput(f"labels[{i}] is empty", field=f"labels[{i}]")
        if label in seen:
            raise BadInput(f"labels[{i}] {label!r} appears twice", field=f"labels[{i}]")
        seen.add(label)
    return [template.replace("{}", label) for label in labels]


def ranked(labels: list[str], scores: Any) -> list[dict]:
    """``[{"label", "score"}]`` sorted best first (stable for ties)."""
    pairs = [{"label": str(label), "score": float(s)} for label, s in zip(labels, scores,
                                                                           strict=True)]
    return sorted(pairs, key=lambda p: -p["score"])


def check_text(text: str, field: str = "text") -> str:
    if not text.strip():
        raise BadInput(f"{field} is empty", field=field)
    return text


def hub_kwargs(backend: ModelBackend) -> dict[str, Any]:
    return {} if backend.resolved.local or not backend.resolved.revision else {
        "revision": backend.resolved.revision}
