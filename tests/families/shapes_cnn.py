"""The shapes CNN of the "Serve your own model" example (docs/how-to/own-model.md).

The model and its synthetic data set live in ``deployments.tiny.shapes_cnn`` (the default
profile's ``tiny:shapes-cnn`` trains it on first start); this module keeps the import path the
tests and the docs' example use, and trains it from the command line.
"""

from __future__ import annotations

from pathlib import Path

from deployments.tiny.shapes_cnn import (  # noqa: F401  (re-exported)
    ARCH,
    CLASSES,
    PREPROCESS,
    SmallCNN,
    dataset,
    draw,
    png,
    to_batch,
    train,
)

if __name__ == "__main__":  # python -m tests.families.shapes_cnn models/shapes
    import sys

    import numpy as np
    import torch

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
