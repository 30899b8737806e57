"""The import contracts of ``pyproject.toml`` (``[tool.importlinter]``) hold for the tree.

They keep the request path in the folder names (http → core → pipeline/cache → shared types),
Ray inside ``fusion.serve``, torch out of ``fusion``, ``deployments`` out of everything but
``fusion.serve``, and no cycles, function-level imports included. Run here so the test command
enforces them; ``lint-imports`` prints which import broke which contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_lint_imports_keeps_every_contract():
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    lint = Path(sys.executable).with_name("lint-imports")
    # the linter finds packages on sys.path: this checkout's, not whichever one is installed
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # every contract of the config was checked (none dropped by a typo in its type)
    assert f"Contracts: {contracts} kept, 0 broken." in done.stdout
    assert contracts >= 7
