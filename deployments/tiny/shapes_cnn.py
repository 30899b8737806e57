"""The shapes CNN: a small CIFAR-10-style net trained on a synthetic, learnable data set of
coloured shapes — the one informative image model of the offline default profile.

Every other image model there is a random stand-in, so a fused image answer would be noise;
this one is trained here, deterministically (seeded data and init, a fixed number of steps,
one thread), on first start (``tiny:shapes-cnn``, ~10 CPU s once), saved as the
``image_classify`` family's ``state_dict`` checkpoint and loaded back through that family's
loader like any user's CNN, then fingerprinted from the saved file as other tiny models are.

Each 32x32 image holds one shape (the class) in a random colour, size and place on a noisy
background, so the net must learn shape, not colour. ``draw``/``dataset`` also give tests and
benchmarks fresh images (another seed than the training set's).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

CLASSES = ["circle", "square", "triangle", "cross"]
PREPROCESS = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
ARCH = "deployments.tiny.shapes_cnn:SmallCNN"
TRAIN_STEPS = 250  # batches of 64 over 2000 images: ~95% on fresh images, ~10 CPU s


class SmallCNN(nn.Module):
    """conv-conv-pool x2, then a linear head: the classic CIFAR-10 tutorial net, smaller."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def draw(label: int, rng: np.random.Generator) -> Image.Image:
    """One 32x32 image of ``CLASSES[label]``."""
    noise = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    r = int(rng.integers(7, 13))
    cx, cy = (int(v) for v in rng.integers(r + 1, 32 - r - 1, 2))
    colour = tuple(int(v) for v in rng.integers(110, 256, 3))
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = CLASSES[label]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    return img


def dataset(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    return [draw(int(y), rng) for y in labels], labels


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    """Exactly the family's preprocessing for PREPROCESS (32x32 already, so no resize)."""
    x = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    x = (x - np.float32(0.5)) / np.float32(0.25)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def train(folder: Path, seconds: float | None = None, max_steps: int = TRAIN_STEPS,
          seed: int = 0) -> SmallCNN:
    """Train ``max_steps`` batches of 64 (or stop after ``seconds`` of CPU time, if given: not
    deterministic then), save ``checkpoint.pt`` in ``folder``; the trained model."""
    torch.manual_seed(seed)
    images, labels = dataset(2000, seed)
    x, y = to_batch(images), torch.from_numpy(labels)
    model = SmallCNN(len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.process_time()
    step = 0

    def out_of_time() -> bool:
        return seconds is not None and time.process_time() - start > seconds

    while step < max_steps and not out_of_time():
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= max_steps or out_of_time():
                break
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES, "arch": ARCH,
                "arch_kwargs": {"num_classes": len(CLASSES)}, "preprocess": PREPROCESS},
               folder / "checkpoint.pt")
    return model


def build_tiny_shapes_cnn(folder: str | Path) -> None:
    """The ``tiny:shapes-cnn`` recipe: train deterministically on one thread (the result does
    not depend on the machine's core count or load) and save into ``folder``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(Path(folder))
    finally:
        torch.set_num_threads(threads)
