"""Image classifier family: your own PyTorch CNN, or a torchvision / timm architecture.

The source is a folder (``path:/models/mycnn``) holding one checkpoint. Two backends:

- ``state_dict`` (default): ``checkpoint.pt`` (``options.file``), written by
  ``torch.save({"state_dict": model.state_dict(), "classes": [...], "arch": "mycnn:SmallCNN",
  "arch_kwargs": {...}, "preprocess": {...}}, path)`` — or a bare state dict. It is read with
  ``torch.load(weights_only=True)``: tensors and plain values only, never pickled code. The
  architecture (``options.arch`` or the checkpoint's ``arch``) is ``"package.module:Class"``
  (your ``nn.Module``, importable on the replica), ``"torchvision:resnet18"`` or
  ``"timm:resnet18"`` (built with ``num_classes`` = the number of classes).
- ``torchscript``: ``model.pt`` (``options.file``), saved with ``torch.jit.save``; class names
  may travel inside it as the extra file ``classes.txt``.

Class names come from the checkpoint's ``classes``, else ``labels.txt`` in the folder (one per
line), else ``options.labels``, else ``class_0 …``. Preprocessing (``options.preprocess``, else
``preprocess.json`` in the folder, else the checkpoint's ``preprocess``) takes ``size`` (int or
``[h, w]``: resize to it) or ``resize`` + ``crop`` (shorter side, then centre crop), ``mean``,
``std`` (per channel, on 0–1 pixels; ImageNet's by default) and ``interpolation``.
``classify`` returns softmax scores for every class, best first (``top_k`` keeps the first k).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.common import optimise, ranked
from deployments.media import decode_image
from fusion.errors import BadInput, SpecError
from fusion.registry import Family, import_object
from fusion.tasks import TaskSpec, param

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESS = {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                      "interpolation": "bilinear"}
PREPROCESS_KEYS = {"size", "resize", "crop", "mean", "std", "interpolation"}


def build_arch(arch: str, num_classes: int, kwargs: dict[str, Any]) -> Any:
    """An untrained ``nn.Module`` for ``arch`` (see the module docstring)."""
    kind, _, name = arch.partition(":")
    if kind == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                            **kwargs)
    if kind == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return import_object(arch)(**kwargs)


def preprocess_config(*candidates: dict[str, Any] | None) -> dict[str, Any]:
    """The first given preprocessing config over the defaults; unknown keys are refused."""
    chosen = next((c for c in candidates if c), {})
    unknown = set(chosen) - PREPROCESS_KEYS
    if unknown:
        raise SpecError(f"preprocess: unknown keys {sorted(unknown)}; known: "
                        f"{sorted(PREPROCESS_KEYS)}")
    out = {**DEFAULT_PREPROCESS, **chosen}
    if "resize" in chosen and "size" not in chosen:
        out.pop("size")
    return out


def to_tensor(image: Any, pre: dict[str, Any]) -> Any:
    """A PIL RGB image → a normalised CHW float tensor, as ``pre`` says."""
    import numpy as np
    import torch
    from PIL import Image

    resample = getattr(Image.Resampling, str(pre["interpolation"]).upper())
    if "size" in pre:
        size = pre["size"]
        h, w = (size, size) if isinstance(size, int) else size
        image = image.resize((w, h), resample)
    else:
        short = int(pre["resize"])
        scale = short / min(image.size)
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), resample)
        crop = int(pre.get("crop") or short)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


class ImageClassifier(ModelBackend):
    marker_files = ("checkpoint.pt", "model.pt")

    def load_weights(self) -> None:
        import torch

        folder = Path(self.resolved.location)
        opts = self.config.options
        backend = self.config.backend
        file = folder / opts.get("file", "model.pt" if backend == "torchscript" else
                                 "checkpoint.pt")
        if not file.is_file():
            raise SpecError(f"{self.config.name}: no checkpoint {file}")
        ckpt: dict[str, Any] = {}
        if backend == "torchscript":
            extra = {"classes.txt": ""}
            with warnings.catch_warnings():  # deprecated for torch.export, still supported
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
            names = extra["classes.txt"]
            if names:
                text = names.decode() if isinstance(names, bytes) else names
                ckpt["classes"] = text.splitlines()
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
            ckpt = raw if "state_dict" in raw else {"state_dict": raw}
        self.classes = [str(c) for c in self._classes(folder, ckpt)]
        if backend != "torchscript":
            arch = opts.get("arch") or ckpt.get("arch")
            if not arch:
                raise SpecError(f"{self.config.name}: a state_dict checkpoint needs "
                                "options.arch (or 'arch' in the checkpoint)")
            kwargs = {**(ckpt.get("arch_kwargs") or {}), **opts.get("arch_kwargs", {})}
            model = build_arch(str(arch), len(self.classes), kwargs)
            model.load_state_dict(ckpt["state_dict"])
        file_pre = folder / "preprocess.json"
        self.pre = preprocess_config(opts.get("preprocess"),
                                     json.loads(file_pre.read_text()) if file_pre.is_file()
                                     else None, ckpt.get("preprocess"))
        model.to(self.device, self.dtype).eval()
        self.model = optimise(model, self.config, self.device)
        self._torch = torch

    def _classes(self, folder: Path, ckpt: dict[str, Any]) -> list[Any]:
        labels = folder / "labels.txt"
        classes = (ckpt.get("classes") or
                   (labels.read_text().split("\n") if labels.is_file() else None) or
                   self.config.options.get("labels"))
        if classes:
            return [c for c in classes if str(c).strip()]
        weight = list(ckpt.get("state_dict", {}).values())
        n = int(self.config.options.get("num_classes") or (len(weight[-1]) if weight else 0))
        if n < 1:
            raise SpecError(f"{self.config.name}: no class names (checkpoint 'classes', "
                            "labels.txt or options.labels)")
        return [f"class_{i}" for i in range(n)]

    def prepare(self, task: str, inputs: dict[str, Any]) -> Any:
        item = super().prepare(task, inputs)
        if item["top_k"] < 0:
            raise BadInput("top_k must be >= 0 (0: every class)", field="top_k")
        return {"pixels": to_tensor(decode_image(item["image"]), self.pre),
                "top_k": item["top_k"]}

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        torch = self._torch
        batch = torch.stack([it["pixels"] for it in items]).to(self.device, self.dtype)
        with torch.inference_mode():
            logits = self.model(batch)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise SpecError(f"{self.config.name}: the model returns shape "
                            f"{tuple(logits.shape)}, not (batch, {len(self.classes)} classes)")
        probs = logits.float().softmax(-1).cpu().tolist()
        out = []
        for item, p in zip(items, probs, strict=True):
            labels = ranked(self.classes, p)
            out.append({"labels": labels[:item["top_k"]] if item["top_k"] else labels})
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "classes": len(self.classes)}


FAMILY = Family(
    name="image_classify",
    tasks={"classify": TaskSpec(
        {"image": param("image"), "top_k": param("int", 0)}, {"labels": "labels"},
        doc="Softmax over the classifier's classes, best first; top_k 0 keeps all.")},
    backends={"state_dict": ("classify",), "torchscript": ("classify",)},
    model=ImageClassifier,
    tiny={"shapes-cnn": "deployments.tiny.shapes_cnn:build_tiny_shapes_cnn"},
)
