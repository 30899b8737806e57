"""A model deployment scales 1 → 2 replicas under load and back to 1 when it stops.

The ``scaler`` model of the package's app (see ``conftest.SCALER``) is a tiny diffusion model
with Serve autoscaling from our config (target 1 ongoing request per replica, short delays).
Four clients keep it busy with ~1 s uncached generations; the test waits on Serve's own
status for the second replica, stops the load, and waits for Serve to remove it. Every request
made meanwhile must succeed: scaling is invisible to clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

pytestmark = pytest.mark.serve

MODEL = "scaler"


def running_replicas() -> tuple[int, str]:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    dep = serve.status().applications["fusion"].deployments[MODEL]
    return dep.replica_states.get(ReplicaState.RUNNING, 0), dep.status


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 120) -> None:
    """Poll Serve's status until ``condition`` holds; the bound is generous (2-core CI)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout_s} s; last status {running_replicas()}")


class Load:
    """``clients`` threads each sending uncached generations back to back until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.stop = url, threading.Event()
        self.codes: list[int] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(clients)]

    def _client(self, i: int) -> None:
        seed = i * 100_000
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set():
                seed += 1
                try:
                    r = http.post(f"/v1/models/{MODEL}/generate",
                                  headers={"Cache-Control": "no-store"},
                                  json={"inputs": {"prompt": "load", "seed": seed,
                                                   "steps": 20, "width": 96, "height": 96}})
                    self.codes.append(r.status_code)
                    if r.status_code != 200:
                        self.errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)


def test_model_scales_up_under_load_and_back_down(gateway_url):
    wait_for("scaler is healthy with 1 replica",
             lambda: running_replicas() == (1, "HEALTHY"))
    with Load(gateway_url, clients=4) as load:
        wait_for("a second replica under load", lambda: running_replicas()[0] == 2)
        served_before = len(load.codes)
        # the new replica takes traffic: more answers arrive after it is up
        wait_for("requests served with 2 replicas", lambda: len(load.codes) >= served_before + 4)
    assert not load.errors, load.errors[:3]
    assert load.codes and set(load.codes) == {200}
    wait_for("back to 1 replica once idle", lambda: running_replicas() == (1, "HEALTHY"))
