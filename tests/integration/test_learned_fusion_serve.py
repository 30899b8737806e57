"""Learned fusion on the Ray Serve app of the integration package: two router replicas over
one database (the default SQLite file, written by both router processes). Answers of
``shapes_fused`` are labelled through whichever replica Serve picks, a fit and an activation
go to one, and every later answer — from either replica — names the profile, until the
rollback."""

from __future__ import annotations

import time

from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_learned_fusion import images

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_feedback_fit_and_promotion_across_router_replicas(http):
    for truth, image in images(30, seed=404):
        r = http.post("/v1/pipelines/shapes_fused", json={"inputs": {"image": image}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"]["explanation"]["profile"] is None
        fb = http.post("/v1/feedback", json={"request_id": r.json()["request_id"],
                                             "label": truth})
        assert fb.status_code == 201, fb.text
    fit = http.post("/v1/pipelines/shapes_fused/fusion/fit", json={}, headers=ADMIN)
    assert fit.status_code == 201, fit.text
    profile = fit.json()["profile"]
    act = http.post(f"/v1/pipelines/shapes_fused/fusion/profiles/{profile}/activate",
                    headers=ADMIN)
    assert act.status_code == 200, act.text

    def served_by(image: str) -> str | None:
        r = http.post("/v1/pipelines/shapes_fused", json={"inputs": {"image": image}},
                      headers={"Cache-Control": "no-store"})
        assert r.status_code == 200, r.text
        named = r.json()["outputs"]["explanation"]["profile"]
        return named["id"] if named else None

    probe = images(1, seed=405)[0][1]
    deadline = time.monotonic() + 30  # feedback.poll_s is 2 s
    while True:
        seen = {served_by(probe) for _ in range(8)}  # Serve spreads them over both routers
        if seen == {profile}:
            break
        assert time.monotonic() < deadline, f"still served by {seen}"
        time.sleep(0.5)
    listed = http.get("/v1/pipelines/shapes_fused/fusion/profiles").json()
    assert listed["active"] == {"fused": profile}
    back = http.post("/v1/pipelines/shapes_fused/fusion/profiles/handwritten/activate",
                     headers=ADMIN)
    assert back.status_code == 200
    deadline = time.monotonic() + 30
    while {served_by(probe) for _ in range(8)} != {None}:
        assert time.monotonic() < deadline, "the rollback did not reach every replica"
        time.sleep(0.5)
