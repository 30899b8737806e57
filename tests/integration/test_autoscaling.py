"""A model deployment scales 1 → 2 replicas under load and back to 1 when it stops.

The ``scaler`` model of the package's app (see ``conftest.SCALER``) is a tiny diffusion model
with Serve autoscaling from our config (target 1 ongoing request per replica, short delays).
Four clients keep it busy with ~1 s uncached generations; the test waits on Serve's own
status for the second replica, stops the load, and waits for Serve to remove it. Every request
made meanwhile must succeed: scaling is invisible to clients.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.integration import serve_watch as watch
from tests.integration.serve_watch import LoadThreads, replica_state

pytestmark = pytest.mark.serve

MODEL = "scaler"


def running_replicas() -> tuple[int, str]:
    return replica_state(MODEL)


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 120) -> None:
    watch.wait_for(what, condition, timeout_s, lambda: f"last status {running_replicas()}")


class Load(LoadThreads):
    """``clients`` threads each sending uncached generations back to back until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        super().__init__()
        self.url = url
        self.codes: list[int] = []
        self.errors: list[str] = []
        self.add_clients(self._client, clients)

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
