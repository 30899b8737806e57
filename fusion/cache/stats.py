"""Cache counters, overall and per ``(model, task)`` label, with an optional event hook.

The hook ``on_event(name, labels, value)`` is how the Serve layer mirrors counters into
Prometheus without this package importing ray: ``name`` is a counter below (or ``healthy``,
a 0/1 gauge with empty labels), ``labels`` is ``{"model": ..., "task": ...}`` and ``value``
the increment. A failing hook is logged once and otherwise ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("fusion.cache")

COUNTERS = (
    "hits",               # value read from the store
    "misses",             # computed by this call (cache empty, bypassed, or unavailable)
    "coalesced",          # shared another in-flight computation (this replica or another)
    "stores",             # values written
    "errors",             # cache operations that failed or were skipped (backend down, slow,
                          # refusing) and values that could not be encoded
    "corrupt",            # stored bytes that did not decode (treated as misses)
    "skipped_too_large",  # values not stored because they exceed max_value_bytes
    "bytes_read",
    "bytes_written",
)

EventHook = Callable[[str, dict, float], None]
Labels = tuple[str, str]


class CacheStats:
    def __init__(self, on_event: EventHook | None = None) -> None:
        self.on_event = on_event
        self.total: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.by_label: dict[Labels, dict[str, int]] = {}
        self._hook_failed = False

    def add(self, name: str, labels: Labels, value: int = 1) -> None:
        self.total[name] += value
        per = self.by_label.get(labels)
        if per is None:
            per = self.by_label[labels] = dict.fromkeys(COUNTERS, 0)
        per[name] += value
        self.emit(name, {"model": labels[0], "task": labels[1]}, value)

    def emit(self, name: str, labels: dict, value: float) -> None:
        hook = self.on_event
        if hook is None:
            return
        try:
            hook(name, labels, value)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                log.warning("cache on_event hook failed; further failures are not logged",
                            exc_info=True)

    def flat(self) -> dict[str, int]:
        """Per-label counters as one mapping ``"model/task|counter" -> n`` (non-zero only):
        the shape replicas add into a shared hash (``StepCache.flush_stats``)."""
        return {f"{m}/{t}|{name}": n for (m, t), per in self.by_label.items()
                for name, n in per.items() if n}

    def snapshot(self) -> dict:
        return {
            "total": dict(self.total),
            "by_label": {f"{m}/{t}": dict(c) for (m, t), c in sorted(self.by_label.items())},
        }


def unflatten(flat: dict[str, int]) -> dict:
    """The inverse of ``CacheStats.flat``, summed: ``{"total": ..., "by_label": ...}``."""
    total = dict.fromkeys(COUNTERS, 0)
    by_label: dict[str, dict[str, int]] = {}
    for field, n in flat.items():
        label, _, name = field.rpartition("|")
        if name in total and label:
            total[name] += n
            by_label.setdefault(label, dict.fromkeys(COUNTERS, 0))[name] += n
    return {"total": total, "by_label": dict(sorted(by_label.items()))}
