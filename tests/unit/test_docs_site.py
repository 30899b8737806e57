"""The documentation site builds with ``mkdocs build --strict`` (a broken link or anchor, a
page missing from the nav or a nav entry with no page fails it), offline, with its generated
reference pages saying what the code says; and the README stays a short front door to it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusion.errors import ERROR_CODES, FusionError
from fusion.http.app import create_api

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXTERNAL = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//",
                      re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


def test_every_nav_page_is_built(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    for required in ("getting-started.md", "api.md", "measured.md", "reference/errors.md",
                     "reference/openapi.md", "concepts/pipelines.md", "how-to/kubernetes.md"):
        assert required in pages, required
    for page in pages:
        built = site / ("index.html" if page == "index.md" else
                        page.removesuffix(".md") + "/index.html")
        assert built.is_file(), f"{page} was not built"


def test_site_loads_nothing_from_the_network(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False  # Material would load Google Fonts
    offenders = [f"{page.relative_to(site)}: {m.group(0)}"
                 for page in site.rglob("*.html")
                 for m in EXTERNAL.finditer(page.read_text(encoding="utf-8"))]
    assert not offenders, offenders[:5]
    assert (site / "search" / "search_index.json").is_file()  # search works offline


def test_error_page_is_generated_from_the_table(site):
    page = (site / "reference" / "errors" / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>\s*<td>(\d{3})</td>\s*"
                      r"<td><code>(\w+)</code></td>\s*<td><code>(\w+)</code></td>", page)
    assert rows == [(e.code, str(e.status), e.openai_type, e.sdk_exception)
                    for e in ERROR_CODES]


def test_openapi_page_is_the_apps_document(site):
    def no_gateway():
        raise FusionError("no gateway")

    doc = json.loads((site / "reference" / "openapi.json").read_text(encoding="utf-8"))
    assert doc == create_api(no_gateway).openapi()
    page = (site / "reference" / "openapi" / "index.html").read_text(encoding="utf-8")
    for path, ops in doc["paths"].items():
        for method in ops:
            assert f"{method.upper()} {path}" in page, (method, path)


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(((?:docs|clients)/[^)#\s]+)(?:#[^)]*)?\)", text)
    assert len({link for link in links if link.startswith("docs/")}) >= 10, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"
