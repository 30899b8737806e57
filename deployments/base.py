"""The shape every model family shares: ``ModelBackend``, free of Ray.

A family's model is a ``ModelBackend`` subclass: pure Python + torch (imported inside its
methods), loadable and testable without Ray. The Serve side (``ServedModel``, batching,
threads, metrics) lives in ``fusion.serve.served`` so that declaring or discovering a family
never imports Ray.

The contract a backend implements (also what a ``family: custom`` model writes):

- ``load_weights()``: load from ``self.resolved.location`` (a folder or hub id) onto
  ``self.device`` with ``self.dtype``; ``self.config.options`` holds backend options.
- ``prepare(task, inputs)``: check and decode ONE request's inputs, raising ``BadInput``
  naming the field; runs before batching, so a bad request fails alone. The default checks
  the declared types.
- ``run(task, items, progress)``: one batch of prepared items of one task → one output dict
  per item, keys and types as the task declares.
- optional ``task_specs`` class attribute: the tasks the class serves; a custom model's
  config must then declare the same types (checked at start-up).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

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


# transformers builds a model under switches it sets for the whole process (the default dtype,
# patched ``torch.nn.init`` and creation ops, a meta-device context): a torch module built in
# another thread meanwhile comes out wrong ("meta tensor" errors). Every load that builds torch
# modules holds this lock, so a bundle can load its other members (ONNX Runtime, CTranslate2)
# in a thread beside them (``fusion.replica.bundle``).
TORCH_BUILD = threading.RLock()


def prepare_process(configs: Iterable[ModelConfig]) -> None:
    """What a runtime calls before loading the models that one process will hold.

    With none of them on a GPU, ``import triton`` fails there as if triton were not installed:
    torchvision (open_clip, transformers' image processors) imports ``torch._dynamo``, which
    imports triton whenever the package is present, and triton is GPU-only code. Measured:
    ~90 MiB PSS per process (libtriton.so and its Python import), in every CPU replica and
    in the embedded runtime. torch already runs without it (inductor's CPU backend is C++).
    """
    global _PROCESS_PREPARED
    if _PROCESS_PREPARED:  # the first caller saw every model (a bundle before its members)
        return
    _PROCESS_PREPARED = True
    if any(c.num_gpus > 0 for c in configs) or "triton" in sys.modules:
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  (an import of it now fails)


_PROCESS_PREPARED = False


def import_shared_libraries() -> None:
    """Import what every loading thread uses before several start (``fusion.replica.bundle``).

    Two threads importing transformers at once can see it half-initialised ("cannot import
    name 'AutoConfig' from 'transformers'"); imported once here (~1 s, paid by the first
    member anyway), the threads only look it up.
    """
    import torch  # noqa: F401  (every backend picks its device with torch)

    with contextlib.suppress(ImportError):
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401


def quiet_progress_bars() -> None:
    """Loading bars from transformers/diffusers/hub flood replica logs; a server wants none.

    Only libraries already imported are told: importing ``diffusers.utils`` to silence it
    costs seconds (it pulls ``torch._dynamo`` and scipy) in every replica that never uses it.
    transformers reads the hub's switch when imported; diffusers does not, so the diffusion
    family calls this again once it has imported diffusers.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError, AttributeError):
        importlib.import_module("huggingface_hub.utils").disable_progress_bars()
    for module in ("transformers", "diffusers"):
        if module in sys.modules:
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
        self.loaded_at = int(time.time())  # OpenAI's ``created`` on /v1/models
        self.model_dir: Path | None = None  # set by load(): where derived files are cached

    @classmethod
    def builds_torch_modules(cls, config: ModelConfig) -> bool:
        """Whether loading builds torch modules (then it holds ``TORCH_BUILD``). True unless a
        family knows better: a backend on ONNX Runtime or CTranslate2 says False."""
        return True

    @classmethod
    def load(cls, config: ModelConfig, model_dir: str | Path | None = None) -> ModelBackend:
        """Resolve the source (building a tiny model if asked) and load it."""
        import torch

        torch.set_num_threads(config.threads)
        quiet_progress_bars()
        builds = cls.builds_torch_modules(config) or config.source.kind in ("tiny", "shape")
        with TORCH_BUILD if builds else contextlib.nullcontext():
            resolved = resolve(config.source, Path(model_dir) if model_dir else None,
                               cls.marker_files)
            backend = cls(config, resolved)
            backend.model_dir = Path(model_dir) if model_dir else None  # derived files (onnx)
            backend.load_weights()
        return backend

    def on_compute_thread(self) -> None:
        """Runs first on the one thread that runs this model's batches (the replica's).

        torch's intra-op thread count is per thread under OpenMP, and a new thread takes the
        process's last ``set_num_threads``: with several models in one process (the embedded
        runtime, bundles) that is the ``threads`` of whichever model loaded last. Measured: a
        MiniLM with ``threads: 2`` computed on 1 thread beside a model loaded after it."""
        import torch

        torch.set_num_threads(self.config.threads)

    @property
    def fingerprint(self) -> str:
        """The weights' fingerprint, plus the compression applied to them: an int8 model
        answers slightly differently, so it must never share cache entries with fp32."""
        variant = self.variant()
        return f"{self.resolved.fingerprint}+{variant}" if variant else self.resolved.fingerprint

    def variant(self) -> str:
        """What changes the outputs besides the weights (``int8``, ``onnx#…``); "" for none."""
        return "int8" if self.config.quantize == "int8" and self.device == "cpu" else ""

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
            "family": self.config.family,
            "backend": self.config.backend,
            "tasks": list(self.tasks),
            "source": str(self.config.source),
            "fingerprint": self.fingerprint,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "loaded_at": self.loaded_at,
        }
