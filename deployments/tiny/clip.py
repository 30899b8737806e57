"""A tiny random open_clip model, saved in the open_clip hub layout.

Built from code into a folder and loaded back by the family's ``load_weights``, like real
weights; named by the ``tiny`` recipes of ``deployments.clip.FAMILY``.
"""

from __future__ import annotations

import json
from pathlib import Path

from deployments.clip import CONFIG_NAME, WEIGHT_NAMES

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


def build_tiny_clip(folder: str | Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_MODEL_CFG))).eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHT_NAMES[0]))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                  "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / CONFIG_NAME).write_text(json.dumps(
        {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": preprocess}, indent=2))
