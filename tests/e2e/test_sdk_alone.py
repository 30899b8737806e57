"""The SDK installs alone: pip's resolution for ``clients/python`` in a fresh venv has no
torch, no ray and no numpy — only httpx, pydantic and what they need."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_resolves_without_torch_or_ray(tmp_path):
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    report = tmp_path / "report.json"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--dry-run",
                    "--ignore-installed", "--report", str(report), str(ROOT / "clients/python")],
                   check=True, timeout=600)
    names = {item["metadata"]["name"].lower().replace("_", "-")
             for item in json.loads(report.read_text())["install"]}
    assert {"fusion-client", "httpx", "pydantic"} <= names
    assert not names & {"torch", "ray", "numpy", "pillow", "transformers"}, names
