"""``prepare_process``: a process whose models all run on the CPU never imports triton.

Checked in a fresh interpreter each time (what a process has imported cannot be undone):
torchvision (open_clip's and transformers' image code) imports ``torch._dynamo``, which
imported triton (GPU-only, ~90 MiB) wherever the package is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.models

PROBE = """
import json, sys
from deployments.base import prepare_process
from fusion.config import ModelConfig
configs = [ModelConfig.model_validate(c) for c in json.loads(sys.argv[1])]
prepare_process(configs)
prepare_process([ModelConfig.model_validate({"name": "late", "family": "text",
                                             "source": "tiny:text-embedding"})])
import torch, torchvision
from torchvision.transforms import functional as F
image = F.resize(torch.zeros(3, 8, 8), [4, 4])   # torchvision still works
print(json.dumps({"triton": sys.modules.get("triton") is not None,
                  "resized": list(image.shape)}))
"""


def probe(configs: list[dict]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(configs)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def triton_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("triton") is not None


def test_cpu_only_process_does_not_import_triton():
    out = probe([{"name": "clip", "family": "clip", "source": "tiny:clip"}])
    assert out == {"triton": False, "resized": [3, 4, 4]}


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed here: nothing "
                    "for a GPU process to keep")
def test_a_gpu_model_keeps_triton_for_the_whole_process():
    # the first caller (a bundle, with every member) decides; a later member's call is a no-op
    out = probe([{"name": "clip", "family": "clip", "source": "tiny:clip"},
                 {"name": "gen", "family": "diffusion", "source": "tiny:diffusion",
                  "num_gpus": 0.5}])
    assert out == {"triton": True, "resized": [3, 4, 4]}
