"""A model replica SIGKILLed under load: the SDK sees no failure, raw HTTP never a 500.

``sentiment`` runs two fixed replicas in the package's app (``conftest.REPLICATED_MODEL``).
Eight clients keep it busy with distinct, uncacheable requests: four through the SDK
(``FusionClient``, which retries 503 and connection errors, honouring ``Retry-After``) and four
over raw HTTP. The test finds one replica's worker process through Ray's GCS, kills it with
SIGKILL, and keeps the load going until Serve reports the deployment healthy with two running
replicas again and the replacement (another process) has answered requests (its Serve log).
Requests caught on the dying replica must come back as ``503 overloaded`` with ``Retry-After``
(retryable), never as a 500 or a 502 that the SDK would surface.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fusion_client import FusionClient

from tests.integration import serve_watch as watch
from tests.integration.conftest import REPLICATED_MODEL as MODEL
from tests.integration.serve_watch import LoadThreads, replica_state

pytestmark = pytest.mark.serve

CLASS_NAME = f"ServeReplica:fusion:{MODEL}"


def deployment_state() -> tuple[int, str]:
    return replica_state(MODEL)


def replica_pids() -> dict[str, int]:
    """Live replica actors of the model: actor name → worker PID. Read from Ray's GCS: the
    state API (``ray.util.state.list_actors``) needs the dashboard, which tests run without."""
    from ray._private import state

    actors = state.actors(actor_state_name="ALIVE").values()
    return {a["Name"]: a["Pid"] for a in actors if a["ActorClassName"] == CLASS_NAME}


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 180) -> None:
    watch.wait_for(what, condition, timeout_s,
                   lambda: f"last state {deployment_state()}, replicas {replica_pids()}")


def served_by(replica: str) -> int:
    """Requests one replica answered, from its Serve log file (one access line per call;
    the file is named after the replica's tag, which ends its actor name)."""
    from ray.serve._private.logging_utils import get_serve_logs_dir

    logs = list(Path(get_serve_logs_dir()).glob(f"replica_fusion_{MODEL}_{replica}*.log"))
    return sum(path.read_text(errors="replace").count(" -- CALL call OK ") for path in logs)


class Load(LoadThreads):
    """SDK and raw-HTTP clients classifying distinct texts back to back until stopped."""

    def __init__(self, url: str, sdk_clients: int, raw_clients: int) -> None:
        super().__init__()
        self.url = url
        self.lock = threading.Lock()
        self.sdk_ok = 0
        self.sdk_failures: list[str] = []
        self.sdk_retries: list[float] = []  # the delay before each SDK retry
        self.raw_codes: Counter[int] = Counter()
        self.raw_problems: list[str] = []  # any raw answer that is neither 200 nor a proper 503
        self.add_clients(self._sdk, sdk_clients)
        self.add_clients(self._raw, raw_clients)

    @property
    def answered(self) -> int:
        return self.sdk_ok + sum(self.raw_codes.values())

    def _retry_sleep(self, delay: float) -> None:
        with self.lock:
            self.sdk_retries.append(delay)
        time.sleep(delay)

    def _sdk(self, i: int) -> None:
        n = 0
        with FusionClient(self.url, timeout=120) as client:
            client._sleep = self._retry_sleep  # count retries; the policy is the SDK's default
            while not self.stop.is_set():
                n += 1
                try:
                    result = client.call(MODEL, "classify", text=f"sdk client {i} says {n}",
                                         cache_control="no-store")
                    assert {x["label"] for x in result.outputs["labels"]} == \
                        {"negative", "positive"}
                    with self.lock:
                        self.sdk_ok += 1
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    with self.lock:
                        self.sdk_failures.append(repr(exc)[:300])

    def _raw(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set():
                n += 1
                try:
                    r = http.post(f"/v1/models/{MODEL}/classify",
                                  headers={"Cache-Control": "no-store"},
                                  json={"inputs": {"text": f"raw client {i} says {n}"}})
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.raw_problems.append(repr(exc)[:300])
                    continue
                with self.lock:
                    self.raw_codes[r.status_code] += 1
                    if r.status_code == 503 and "retry-after" in r.headers:
                        continue
                    if r.status_code != 200:
                        self.raw_problems.append(f"{r.status_code} {r.text[:300]}")


def test_sigkill_one_of_two_replicas_under_load(gateway_url):
    wait_for("two healthy replicas", lambda: deployment_state() == (2, "HEALTHY")
             and len(replica_pids()) == 2)
    before = replica_pids()
    victim, victim_pid = sorted(before.items())[0]
    with Load(gateway_url, sdk_clients=4, raw_clients=4) as load:
        wait_for("load under way", lambda: load.sdk_ok >= 8 and load.raw_codes[200] >= 8)
        answered_at_kill = load.answered
        os.kill(victim_pid, signal.SIGKILL)

        def replaced() -> bool:
            now = replica_pids()
            return (victim not in now and len(now) == 2
                    and deployment_state() == (2, "HEALTHY"))

        wait_for("Serve replaces the killed replica", replaced)
        after = replica_pids()
        (new, new_pid), = ((n, p) for n, p in after.items() if n not in before)
        tag = new.rsplit("#", 1)[-1]
        wait_for("the replacement answers requests", lambda: served_by(tag) >= 8)
        answered_at_recovery = load.answered
        # and the deployment keeps serving afterwards
        wait_for("more answers after recovery",
                 lambda: load.answered >= answered_at_recovery + 16)
    summary = (f"SDK: {load.sdk_ok} ok, {len(load.sdk_failures)} failed, "
               f"{len(load.sdk_retries)} retries; raw HTTP: {dict(load.raw_codes)}; "
               f"{load.answered - answered_at_kill} answers after the kill; "
               f"killed pid {victim_pid}, replacement pid {new_pid} answered {served_by(tag)}")
    print(summary)
    assert new_pid not in before.values() and new_pid != victim_pid, summary
    assert not load.sdk_failures, (summary, load.sdk_failures[:5])
    assert not load.raw_problems, (summary, load.raw_problems[:5])
    assert 500 not in load.raw_codes and set(load.raw_codes) <= {200, 503}, summary
    assert load.sdk_ok > 0 and load.raw_codes[200] > 0, summary
