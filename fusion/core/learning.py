"""The runtime side of learned fusion: record fused answers, take feedback, fit, promote.

One ``FusionLearning`` per router replica (the Gateway's). It reaches the durable store
(``fusion.store``: PostgreSQL where configured, else SQLite) lazily, on the first pipeline
with a fuse step or the first feedback, and always off the event loop (``Database.run``).

Promotion across replicas: the active and shadow profiles are rows in ``fusion_profiles``;
each replica re-reads them when its copy is older than ``feedback.poll_s`` (before a run of a
pipeline with a fuse step), so a promotion or rollback is live on every replica within that
interval, whatever the runtime, with no broker beside the database. The replica that
activates reads at once. Cache keys of such pipelines carry the active profile ids, so an
answer of the previous profile is never served after a promotion.

Fitting runs in a worker thread (``asyncio.to_thread``), off the event loop that serves
requests, in both runtimes; its stage is visible in the profile list while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fusion import __version__
from fusion.config import AppConfig
from fusion.errors import BadInput, NotFound
from fusion.pipeline import learn
from fusion.pipeline.spec import PipelineSpec
from fusion.pipeline.template import TEMPLATE_TASK
from fusion.store.database import Database
from fusion.store.feedback import Answer, FeedbackStore
from fusion.store.profiles import ProfileStore

log = logging.getLogger("fusion.core.learning")
T = TypeVar("T")
HANDWRITTEN = "handwritten"  # the profile id that stands for the pipeline's own weights
PURGE_EVERY_S = 600.0


def fuse_steps(spec: PipelineSpec) -> list[str]:
    """Names of a pipeline's fuse steps (built-in steps other than templates)."""
    return [n for n, s in spec.steps.items() if s.model is None and s.task != TEMPLATE_TASK]


class FusionLearning:
    def __init__(self, config: AppConfig, pipelines: dict[str, PipelineSpec],
                 recorder: Any = None) -> None:
        self.settings = config.feedback
        self.url = config.database.url
        self.pipelines = pipelines
        self.recorder = recorder
        self._stores: tuple[Database, FeedbackStore, ProfileStore] | None = None
        self._open_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._loaded_at = -1e18
        self._purged_at = 0.0
        # (pipeline, step) -> state -> (profile id, params)
        self._live: dict[tuple[str, str], dict[str, tuple[str, dict]]] = {}
        self.fitting: dict[tuple[str, str], dict[str, Any]] = {}

    def learns(self, pipeline: str) -> bool:
        spec = self.pipelines.get(pipeline)
        return spec is not None and bool(fuse_steps(spec))

    # -- the store, opened (and migrated) once, in a thread ---------------------------------
    async def _open(self) -> tuple[Database, FeedbackStore, ProfileStore]:
        if self._stores is None:
            async with self._open_lock:
                if self._stores is None:
                    def open_all() -> tuple[Database, FeedbackStore, ProfileStore]:
                        db = Database(self.url or "")
                        return db, FeedbackStore(db), ProfileStore(db)
                    self._stores = await asyncio.to_thread(open_all)
                    log.info("learned fusion store: %s", self._stores[0].safe_url)
        return self._stores

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    # -- the live profiles of this replica --------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        """Re-read the active and shadow profiles if this replica's copy is older than
        ``poll_s`` (or ``force``)."""
        if not force and time.monotonic() - self._loaded_at < self.settings.poll_s:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._loaded_at < self.settings.poll_s:
                return
            _, _, profiles = await self._open()
            rows = await self._run(profiles.live)
            live: dict[tuple[str, str], dict[str, tuple[str, dict]]] = {}
            for r in rows:
                live.setdefault((r["pipeline"], r["step"]), {})[r["state"]] = (r["id"],
                                                                              r["params"])
            self._live, self._loaded_at = live, time.monotonic()

    def active(self, pipeline: str, step: str) -> tuple[str, dict] | None:
        """The step's active profile ``(id, params)``, or None (the hand-written weights)."""
        return self._live.get((pipeline, step), {}).get("active")

    def profile_key(self, pipeline: str) -> list[str]:
        """What the pipeline's cache key must carry: its steps' active profile ids."""
        return sorted(f"{step}={states['active'][0]}" for (p, step), states in
                      self._live.items() if p == pipeline and "active" in states)

    # -- recording answers ------------------------------------------------------------------
    async def record(self, request_id: str | None, pipeline: str,
                     fused: dict[str, dict[str, Any]]) -> None:
        """Store each fuse step's sources of one answer (and the shadow profile's top label
        beside it). A store that fails costs the answer nothing: it is logged."""
        if not (self.settings.record and request_id and fused):
            return
        now = time.time()
        answers = []
        for step, rec in fused.items():
            shadow_id = shadow_label = None
            shadow = self._live.get((pipeline, step), {}).get("shadow")
            if shadow is not None and set(rec["sources"]) <= set(shadow[1]["sources"]):
                ranked, _ = learn.fuse_with_profile(shadow[0], shadow[1], rec["rankings"],
                                                    rec["sources"])
                shadow_id, shadow_label = shadow[0], ranked[0]["label"]
            answers.append(Answer(
                request_id, step, pipeline, now, learn.offered_labels(rec["rankings"]),
                list(rec["sources"]), list(rec["rankings"]), rec.get("weights"),
                rec.get("method") or "weighted_mean", rec.get("profile"), rec.get("top"),
                shadow_id, shadow_label))
        try:
            _, store, _ = await self._open()
            await self._run(store.record, answers)
            if now - self._purged_at > PURGE_EVERY_S:
                self._purged_at = now
                await self._run(store.purge, now - self.settings.retention_s)
        except Exception:  # noqa: BLE001 - the answer is served regardless
            log.exception("could not record fused answer %s of %s for feedback", request_id,
                          pipeline)

    # -- feedback ---------------------------------------------------------------------------
    async def feedback(self, request_id: str, label: str, step: str | None = None,
                       weight: float = 1.0, pipeline: str | None = None) -> dict[str, Any]:
        """Label a recorded answer; replaces an earlier label of the same answer."""
        if not isinstance(request_id, str) or not request_id:
            raise BadInput("request_id must be a non-empty string", field="request_id")
        if not isinstance(label, str) or not label:
            raise BadInput("label must be a non-empty string", field="label")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise BadInput("weight must be a positive number", field="weight")
        _, store, _ = await self._open()
        answers = await self._run(store.answers, request_id,
                                  time.time() - self.settings.retention_s)
        if not answers:
            raise NotFound(f"no fused answer recorded for request {request_id!r} (unknown, or "
                           f"older than feedback.retention_s)", field="request_id")
        if pipeline is not None and answers[0].pipeline != pipeline:
            raise BadInput(f"request {request_id!r} was answered by pipeline "
                           f"{answers[0].pipeline!r}, not {pipeline!r}", field="pipeline")
        if step is None:
            if len(answers) > 1:
                raise BadInput(f"request {request_id!r} has several fuse steps "
                               f"{[a.step for a in answers]}; say which in 'step'",
                               field="step")
            answer = answers[0]
        else:
            answer = next((a for a in answers if a.step == step), None)
            if answer is None:
                raise BadInput(f"request {request_id!r} has no fuse step {step!r}; it has "
                               f"{[a.step for a in answers]}", field="step")
        if label not in answer.labels:
            raise BadInput(f"label {label!r} was not offered in request {request_id!r}; its "
                           f"labels: {answer.labels}", field="label")
        replaced = await self._run(store.put_feedback, answer, label, float(weight),
                                   time.time())
        profile = answer.profile_id or HANDWRITTEN
        if self.recorder is not None:
            self.recorder.inc("fusion_feedback_total",
                              {"pipeline": answer.pipeline, "profile": profile})
            labelled, correct = await self._run(store.profile_accuracy, answer.pipeline,
                                                answer.profile_id)
            if labelled:
                self.recorder.set("fusion_profile_live_accuracy", correct / labelled,
                                  {"pipeline": answer.pipeline, "profile": profile})
        return {"request_id": request_id, "pipeline": answer.pipeline, "step": answer.step,
                "label": label, "weight": float(weight), "replaced": replaced,
                "profile": answer.profile_id, "served_label": answer.top_label}

    # -- fitting and profiles ---------------------------------------------------------------
    def _step_of(self, pipeline: str, step: str | None) -> str:
        spec = self.pipelines.get(pipeline)
        if spec is None:
            raise NotFound(f"unknown pipeline {pipeline!r}; available: "
                           f"{sorted(self.pipelines)}", "pipeline")
        steps = fuse_steps(spec)
        if not steps:
            raise BadInput(f"pipeline {pipeline!r} has no fuse step to learn", field="pipeline")
        if step is None:
            if len(steps) > 1:
                raise BadInput(f"pipeline {pipeline!r} has several fuse steps {steps}; say "
                               "which in 'step'", field="step")
            return steps[0]
        if step not in steps:
            raise BadInput(f"pipeline {pipeline!r} has no fuse step {step!r}; it has {steps}",
                           field="step")
        return step

    async def fit(self, pipeline: str, step: str | None = None, since: float | None = None,
                  until: float | None = None, min_labels: int | None = None,
                  test_fraction: float = 0.3) -> dict[str, Any]:
        """Fit a profile from the step's labelled answers in a worker thread; store it
        (inactive) and answer its id and evaluation."""
        step = self._step_of(pipeline, step)
        if not isinstance(test_fraction, int | float) or not 0.05 <= test_fraction <= 0.9:
            raise BadInput("test_fraction must be between 0.05 and 0.9", field="test_fraction")
        needed = self.settings.min_labels if min_labels is None else min_labels
        if isinstance(needed, bool) or not isinstance(needed, int) or needed < 4:
            raise BadInput("min_labels must be an integer >= 4", field="min_labels")
        key = (pipeline, step)
        if key in self.fitting:
            raise BadInput(f"a fit of {pipeline}/{step} is already running on this replica",
                           field="pipeline")
        _, store, profiles = await self._open()
        progress = self.fitting[key] = {"pipeline": pipeline, "step": step,
                                        "started_at": time.time(), "stage": "reading"}

        def work() -> dict[str, Any]:
            rows = store.labelled(pipeline, step, since, until)
            examples = [learn.Example(a.request_id, a.sources, a.rankings, a.labels, label,
                                      a.weights, a.method, weight) for a, label, weight in rows]
            progress.update(stage="fitting", examples=len(examples))
            params, evaluation = learn.fit(examples, test_fraction=float(test_fraction),
                                           min_labels=needed)
            progress["stage"] = "storing"
            profile_id = "fp-" + uuid.uuid4().hex[:12]
            window = {"since": rows[0][0].created_at, "until": rows[-1][0].created_at,
                      "examples": len(rows)}
            profiles.create(profile_id, pipeline, step, params, evaluation, window,
                            f"fusion {__version__}; {params['kind']}", time.time())
            return {"profile": profile_id, "pipeline": pipeline, "step": step,
                    "params": params, "evaluation": evaluation, "data_window": window}

        try:
            return await asyncio.to_thread(work)
        finally:
            self.fitting.pop(key, None)

    async def profiles(self, pipeline: str) -> dict[str, Any]:
        """The pipeline's profiles (newest first) with their evaluation, state, live accuracy
        and, for a shadow, its agreement and accuracy; fits running on this replica."""
        self._step_of(pipeline, fuse_steps(self.pipelines[pipeline])[0]
                      if pipeline in self.pipelines and fuse_steps(self.pipelines[pipeline])
                      else None)
        _, store, profiles = await self._open()
        rows = await self._run(profiles.list, pipeline)
        stats = await self._run(store.live_stats, pipeline)
        out = [{"id": r["id"], "step": r["step"], "state": r["state"],
                "created_at": r["created_at"], "changed_at": r["changed_at"],
                "code_version": r["code_version"], "data_window": r["data_window"],
                "params": r["params"], "evaluation": r["evaluation"],
                "live": stats.get(r["id"], {}).get("live"),
                "shadow": stats.get(r["id"], {}).get("shadow")} for r in rows]
        return {"pipeline": pipeline, "profiles": out,
                "active": {r["step"]: r["id"] for r in rows if r["state"] == "active"},
                "shadow": {r["step"]: r["id"] for r in rows if r["state"] == "shadow"},
                "handwritten": {"live": stats.get("", {}).get("live")},
                "fitting": [v for (p, _), v in self.fitting.items() if p == pipeline]}

    async def activate(self, pipeline: str, profile_id: str, shadow: bool = False,
                       step: str | None = None) -> dict[str, Any]:
        """Make a profile live (or the shadow); ``handwritten`` goes back to the pipeline's
        own weights (or, with ``shadow``, stops the shadow). Live here at once, on every
        other replica within ``poll_s``."""
        if not isinstance(shadow, bool):
            raise BadInput("shadow must be true or false", field="shadow")
        _, _, profiles = await self._open()
        state = "shadow" if shadow else "active"
        if profile_id == HANDWRITTEN:
            step = self._step_of(pipeline, step)
            await self._run(profiles.set_state, pipeline, step, None, state, time.time())
        else:
            row = await self._run(profiles.get, profile_id)
            if row is None or row["pipeline"] != pipeline:
                raise NotFound(f"pipeline {pipeline!r} has no fusion profile {profile_id!r}",
                               field="profile")
            step = row["step"]
            await self._run(profiles.set_state, pipeline, step, profile_id, state,
                            time.time())
        await self.refresh(force=True)
        return {"pipeline": pipeline, "step": step, "profile": profile_id, "state": state}

    def close(self) -> None:
        if self._stores is not None:
            self._stores[0].close()
