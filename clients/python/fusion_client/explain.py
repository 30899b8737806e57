"""Reading a fused result's explanation (a ``fuse`` step with ``explain: true``).

An explanation is a JSON output: ``{"method", "sources", "weights", "labels": [{"label",
"score", "contributions": {source: part}, "ranks": {source: rank}}], "agreement": {"top1",
"top1_agreement", "kendall_tau", "pairs"}}``; each label's contributions add up to its fused
score. Under a learned fusion profile (``method: profile``, ``profile: {id, weights,
temperatures}``) a source's contribution is its term of the label's logit instead.
``explanation_table`` renders one as the small table ``fusion run --explain`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEYS = {"method", "sources", "labels", "agreement"}


def is_explanation(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) >= KEYS


def explanations(outputs: Mapping[str, Any]) -> dict[str, dict]:
    """The outputs of a result that are fusion explanations, by output name."""
    return {k: dict(v) for k, v in outputs.items() if is_explanation(v)}


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def explanation_table(expl: Mapping[str, Any], top: int = 10) -> list[str]:
    """Lines: per label the fused score and each source's contribution (its rank in that
    source in brackets), then the sources' agreement."""
    sources = list(expl["sources"])
    weights = ", ".join(f"{s} {w:.2f}" for s, w in zip(sources, expl.get("weights") or [],
                                                          strict=False))
    header = ["LABEL", "FUSED", *sources]
    rows = []
    for row in expl["labels"][:top]:
        cells = [str(row["label"]), _num(row["score"])]
        for s in sources:
            rank = row["ranks"].get(s)
            cells.append(f"{_num(row['contributions'].get(s))} "
                         f"({'#' + str(rank) if rank else 'unranked'})")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"method {expl['method']}" + (f"; weights {weights}" if weights else "")]
    profile = expl.get("profile")
    if isinstance(profile, Mapping):  # a learned fusion profile: per source, logit terms
        lines[0] += f"; profile {profile.get('id')} (per source: its logit term w·log q)"
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]]
    if len(expl["labels"]) > top:
        lines.append(f"... {len(expl['labels']) - top} more labels")
    agree = expl["agreement"]
    top1 = ", ".join(f"{s}={lab}" for s, lab in agree.get("top1", {}).items())
    lines.append(f"top-1: {top1}; top-1 agreement {_num(agree.get('top1_agreement'), '.0%')}; "
                 f"Kendall tau {_num(agree.get('kendall_tau'), '.2f')}")
    return lines
