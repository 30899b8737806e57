"""What rendering a list answer costs: 64 MiniLM-sized embeddings (384 floats each) through the
router's encoder and JSON writer, the standard library's way and the way list answers use.

    python ops/bench/json_cost.py

Prints milliseconds per answer for each, measured alternately in one run.
"""

from __future__ import annotations

import random
import statistics
import time

from _common import ROOT  # noqa: F401  (puts the repository on sys.path)
from starlette.responses import JSONResponse

from fusion.http.payloads import FastJSONResponse, encode_value


def walk(value):
    """The encoder as it was: recursing into every element, floats included."""
    if isinstance(value, dict):
        return {k: walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [walk(v) for v in value]
    return value


def main() -> None:
    rng = random.Random(0)
    body = [{"embedding": [rng.random() for _ in range(384)]} for _ in range(64)]
    ways = {"stdlib json, walked encoder": lambda: JSONResponse({"outputs": walk(body)}),
            "orjson, float lists passed through": lambda: FastJSONResponse(
                {"outputs": encode_value(body)})}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(20):
        for name, render in ways.items():
            started = time.perf_counter()
            render()
            times[name].append((time.perf_counter() - started) * 1000)
    for name, ms in times.items():
        print(f"{name:<40} median {statistics.median(ms):7.2f} ms per answer")


if __name__ == "__main__":
    main()
