"""Print the gateway's pip requirements (dependencies + extras) from pyproject.toml.

The image installs these in a layer of their own, before the source arrives, so a code change
rebuilds only the small layer with the gateway's wheel and never reinstalls torch. Packages
named in ``--skip`` (torch, torchvision: pinned to a CUDA build in an earlier layer) are left
out. Usage: python requirements.py pyproject.toml [--extra NAME ...] [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys

import tomllib


def requirements(pyproject: dict, extras: list[str], skip: set[str]) -> list[str]:
    """The project's requirement strings, without those whose name is in ``skip``."""
    project = pyproject["project"]
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += project.get("optional-dependencies", {})[extra]
    name = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    return [r for r in found if name.match(r).group(1).lower() not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        data = tomllib.load(f)
    print("\n".join(requirements(data, args.extra, {s.lower() for s in args.skip})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
