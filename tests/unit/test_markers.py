"""The resource markers select what they say: a child pytest collects a few modules (nothing
runs) and reports each test's marks (tests/marker_report.py); the expected sets come from
the test sources themselves (which fixtures a test names), not from the conftest hook."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYGROUND = ["tests/unit/test_playground.py", "tests/integration/test_playground.py"]
OTHERS = ["tests/unit/test_cache_backends.py", "tests/unit/test_llm.py",
          "tests/unit/test_openai_chat.py"]


def collect(files: list[str], tmp_path: Path, *args: str) -> dict[str, list[str]]:
    """``{node id: resource marks}`` of the tests pytest selects from ``files``."""
    report = tmp_path / f"marks{len(list(tmp_path.iterdir()))}.json"
    env = {**os.environ, "MARKER_REPORT": str(report),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.marker_report", *args, *files],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]  # 5: none
    return json.loads(report.read_text())


def naming(path: str, fixtures: set[str]) -> set[str]:
    """``path::name`` of the test functions whose parameters name one of ``fixtures``."""
    tree = ast.parse((ROOT / path).read_text())
    return {f"{path}::{node.name}" for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")
            and fixtures & {a.arg for a in node.args.args}}


def function_of(node_id: str) -> str:
    return node_id.split("[", 1)[0]


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> dict[str, list[str]]:
    return collect(PLAYGROUND + OTHERS, tmp_path_factory.mktemp("marks"))


def test_browser_marks_exactly_the_tests_that_open_chromium(marks):
    drives = set().union(*(naming(p, {"browser", "page"}) for p in PLAYGROUND))
    marked = {function_of(n) for n, m in marks.items() if "browser" in m}
    assert len(drives) >= 15 and marked == drives
    assert "tests/unit/test_playground.py::test_page_and_assets_come_from_the_package" in {
        function_of(n) for n, m in marks.items() if "browser" not in m}  # plain HTTP


def test_not_browser_deselects_them_and_keeps_the_rest(marks, tmp_path):
    kept = collect(PLAYGROUND + OTHERS, tmp_path, "-m", "not browser")
    assert set(kept) == {n for n, m in marks.items() if "browser" not in m}
    only = collect(PLAYGROUND, tmp_path, "-m", "browser")
    assert set(only) == {n for n, m in marks.items() if "browser" in m}


def test_redis_follows_the_backend_parameter_and_fixture(marks):
    backends = {n: m for n, m in marks.items() if n.startswith(OTHERS[0])}
    assert any("[memory]" in n for n in backends) and any("[redis]" in n for n in backends)
    for node_id, m in backends.items():
        needs = "[redis]" in node_id or function_of(node_id) in naming(
            OTHERS[0], {"shared_redis_url"})
        assert ("redis" in m) == needs, node_id


def test_serve_and_models(marks):
    for node_id, m in marks.items():
        integration = node_id.startswith("tests/integration/")
        # the Serve app loads its models and caches in the shared Redis
        assert ("serve" in m) == integration, node_id
        if integration:
            assert {"models", "redis"} <= set(m), node_id
        if node_id.startswith("tests/unit/test_llm.py"):
            assert "models" in m, node_id  # the module's own pytestmark
    llm_users = naming(OTHERS[2], {"llm", "models", "oai", "http"})
    assert llm_users and all("models" in marks[n] for n in marks
                             if function_of(n) in llm_users)
    assert not any("models" in m for n, m in marks.items()
                   if n.startswith((OTHERS[0], PLAYGROUND[0])))
