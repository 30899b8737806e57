"""What the fault and autoscaling tests share: reading a deployment's replicas from Serve's
controller, polling for a condition, and client threads that keep a model busy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def replica_state(model: str) -> tuple[int, str]:
    """(running replicas, status) of the model's deployment, as Serve's controller sees it."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    dep = serve.status().applications["fusion"].deployments[model]
    return dep.replica_states.get(ReplicaState.RUNNING, 0), dep.status


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float,
             last_state: Callable[[], str]) -> None:
    """Poll until ``condition`` holds, else fail with ``last_state()``; callers give generous
    bounds (2-core CI)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout_s} s; {last_state()}")


class LoadThreads:
    """Client threads running until the ``with`` block ends; subclasses add the clients."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def add_clients(self, target: Callable[[int], None], count: int) -> None:
        self.threads += [threading.Thread(target=target, args=(i,), daemon=True)
                         for i in range(count)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)
