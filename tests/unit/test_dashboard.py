"""The Grafana dashboard's PromQL: every expression parses (Prometheus's own ``promtool``, on
a rules file made of them) and names only series the gateway exports (``fusion.observe``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from fusion.observe import exported_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops/grafana/fusion.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to ($__rate_interval is a range)."""
    return expr.replace("$__rate_interval", "5m").replace("$pipeline", ".*") \
        .replace("$model", ".*")


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords,
    label names in ``by (...)`` groupings or inside ``{...}`` matchers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1) not in KEYWORDS:
            names.add(m.group(1))
    return names


def test_the_dashboard_has_the_panels_an_operator_needs():
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for wanted in ("pipeline request rate", "p50 / p95 / p99", "step breakdown",
                   "cache hit ratio", "queue wait vs compute", "batch size", "rejections",
                   "replicas"):
        assert wanted in titles, wanted


def test_every_expression_parses_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (./ops/test.sh installs Debian's prometheus)"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": as_promql(e)}
        for i, e in enumerate(expressions())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions())} rules found" in result.stdout + result.stderr


def test_a_broken_expression_is_caught(tmp_path):
    """The parse check can fail: promtool rejects what the dashboard must never contain."""
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (model (rate(ray_fusion_batch_size_count[5m]))"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)],
                          capture_output=True).returncode != 0


def test_every_expression_names_only_exported_metrics():
    exported = exported_series()
    used: set[str] = set()
    for expr in expressions():
        names = metric_names(as_promql(expr))
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} in {expr}"
        used |= names
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["query"]["query"])
            assert inner and inner.group(1) in exported, var
    # the panels cover the request edge, the steps, the replicas and the cache
    for name in ("ray_fusion_request_seconds_bucket", "ray_fusion_step_seconds_sum",
                 "ray_fusion_queue_wait_seconds_sum", "ray_fusion_compute_seconds_sum",
                 "ray_fusion_batch_size_bucket", "ray_fusion_cache_hits_total",
                 "ray_fusion_rejections_total", "ray_fusion_timeouts_total"):
        assert name in used, name


def test_metric_name_extraction_sees_through_groupings_and_matchers():
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(foo_bucket{model=~"a|b"}[5m])))'
            ' / clamp_min(bar_total + 1e-9, 1)')
    assert metric_names(expr) == {"foo_bucket", "bar_total"}
