"""Each model's batches run with its own ``threads``, also beside other models in one process.

torch's intra-op thread count is per OS thread under OpenMP and a new thread inherits the
process's last ``set_num_threads``: before the replica set it on its compute thread, a model
loaded first ran with the ``threads`` of the model loaded after it (the embedded runtime put a
``threads: 2`` MiniLM on one thread). Real tiny models, real replicas, no Ray.
"""

from __future__ import annotations

import pytest
import torch

from fusion.replica.model import Replica

pytestmark = pytest.mark.models


def tiny_text(name: str, threads: int) -> dict:
    return {"name": name, "family": "text", "source": "tiny:text-embedding", "threads": threads}


async def test_each_model_computes_on_its_own_thread_count(tmp_path):
    two = Replica(tiny_text("two", 2), str(tmp_path))
    one = Replica(tiny_text("one", 1), str(tmp_path))  # loaded last: the process's setting
    assert torch.get_num_threads() == 1
    assert await two._compute(torch.get_num_threads) == 2
    assert await one._compute(torch.get_num_threads) == 1
    # and a batch really runs there, on those threads
    out = await two.call_many("embed", [{"text": "a kitten on a rug"}, {"text": "a dog"}])
    assert len(out) == 2 and len(out[0]["embedding"]) > 0
    assert await two._compute(torch.get_num_threads) == 2
