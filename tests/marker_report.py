"""A pytest plugin for test_markers.py: after collection (and ``-m`` deselection), write each
selected test's resource marks to the JSON file named by ``$MARKER_REPORT``.

Loaded with ``-p tests.marker_report`` in a child pytest, so the marks checked are the ones a
contributor's own ``-m`` would see, not a re-computation of the conftest hook.
"""

from __future__ import annotations

import json
import os

import pytest

RESOURCES = ("browser", "redis", "serve", "models")


def pytest_collection_finish(session: pytest.Session) -> None:
    report = {item.nodeid: sorted({m.name for m in item.iter_markers()} & set(RESOURCES))
              for item in session.items}
    with open(os.environ["MARKER_REPORT"], "w") as out:
        json.dump(report, out)
