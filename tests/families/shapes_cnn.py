"""A small CIFAR-10-style CNN and a synthetic, learnable data set of coloured shapes: the
"Serve your own model" example (docs/how-to/own-model.md), trained in seconds on a CPU.

Each 32x32 image holds one shape (the class) in a random colour, size and place on a noisy
background, so the net must learn shape, not colour. ``train`` saves a checkpoint the
``image_classify`` family serves (``state_dict`` backend, ``arch: tests.families.shapes_cnn:
SmallCNN``).
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


def train(folder: Path, seconds: float = 20.0, max_steps: int = 300,
          seed: int = 0) -> SmallCNN:
    """Train for about ``seconds`` of CPU time (at most ``max_steps`` batches of 64), save
    ``checkpoint.pt`` in ``folder``. CPU time, not wall time: on a busy machine the net
    still gets the same amount of learning."""
    torch.manual_seed(seed)
    images, labels = dataset(2000, seed)
    x, y = to_batch(images), torch.from_numpy(labels)
    model = SmallCNN(len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.process_time()
    step = 0
    while step < max_steps and time.process_time() - start < seconds:
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= max_steps or time.process_time() - start > seconds:
                break
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES,
                "arch": "tests.families.shapes_cnn:SmallCNN",
                "arch_kwargs": {"num_classes": len(CLASSES)}, "preprocess": PREPROCESS},
               folder / "checkpoint.pt")
    return model


if __name__ == "__main__":  # python -m tests.families.shapes_cnn models/shapes
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "models/shapes")
    torch.set_num_threads(1)
    net = train(target)
    images, truth = dataset(400, seed=1)
    with torch.no_grad():
        accuracy = float((net(to_batch(images)).argmax(1).numpy() == truth).mean())
    for name in CLASSES:  # one sample picture per class, to try the served model on
        png_bytes = png(draw(CLASSES.index(name), np.random.default_rng(len(name))))
        (target / f"{name}.png").write_bytes(png_bytes)
    print(f"saved {target / 'checkpoint.pt'}; accuracy on 400 fresh images: {accuracy:.1%}")
