"""Bundles: several models co-located in one replica process (the edge profile).

A model's ``bundle: NAME`` in the serve config puts it in the deployment ``NAME`` together with
every other model naming the same bundle; a model without one keeps its own deployment. A
bundle replica loads each member's ``ModelBackend`` once, each with its own batch queue,
fingerprint and tasks, so router, cache keys and pipelines still see one name per model —
only the number of processes (each ~0.5 GiB of interpreter, torch and transformers) drops.

This module is the Ray-free part: grouping, the checks a config must pass, and the bundle
deployment's size (the sum of its members'). ``fusion.serve.bundle`` is the Serve side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusion.config import ModelConfig

RESERVED_NAMES = ("router",)


@dataclass(frozen=True)
class BundleSize:
    """The resources and queue bounds of one bundle replica: its members' added up, since
    the replica does the work of all of them."""

    num_replicas: int
    num_cpus: float
    num_gpus: float
    max_ongoing_requests: int
    max_queued_requests: int
    resources: dict[str, float]


def bundle_groups(models: list[ModelConfig]) -> dict[str, list[ModelConfig]]:
    """Bundle name -> its members, in config order."""
    groups: dict[str, list[ModelConfig]] = {}
    for m in models:
        if m.bundle:
            groups.setdefault(m.bundle, []).append(m)
    return groups


def bundle_problems(models: list[ModelConfig]) -> list[str]:
    """Why these models cannot be bundled as configured (empty when they can).

    A bundle is one Serve deployment, so its name must not be a model's or the router's, and
    its members must agree on how many replicas it runs (autoscaling is per deployment: a
    member cannot scale alone).
    """
    names = {m.name for m in models}
    problems = []
    for bundle, members in bundle_groups(models).items():
        if bundle in names or bundle in RESERVED_NAMES:
            problems.append(f"bundle {bundle!r} has the name of a model or of the router; "
                            "name it differently")
        scaled = [m.name for m in members if m.autoscaling is not None]
        if scaled:
            problems.append(f"bundle {bundle!r}: members {scaled} set autoscaling; a bundle "
                            "runs a fixed number of replicas (give its members num_replicas)")
        counts = sorted({m.num_replicas for m in members})
        if len(counts) > 1:
            problems.append(f"bundle {bundle!r}: members ask for different num_replicas "
                            f"{counts}; they share one replica, so they must agree")
    return problems


def bundle_size(members: list[ModelConfig]) -> BundleSize:
    resources: dict[str, float] = {}
    for m in members:
        for key, value in m.resources.items():
            resources[key] = max(resources.get(key, 0.0), value)
    queued = [m.max_queued_requests or 0 for m in members]
    return BundleSize(
        num_replicas=members[0].num_replicas,
        num_cpus=round(sum(m.num_cpus for m in members), 6),
        num_gpus=round(sum(m.num_gpus for m in members), 6),
        max_ongoing_requests=sum(m.max_ongoing_requests or 1 for m in members),
        max_queued_requests=-1 if any(q == -1 for q in queued) else sum(queued),
        resources=resources,
    )
