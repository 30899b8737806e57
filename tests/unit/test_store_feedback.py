"""The feedback and fusion-profile stores on both databases (a SQLite file and a real
PostgreSQL): migrations up from empty, labels that survive a restart (a new engine),
replacement of a duplicate label, retention, one active profile per step, live statistics."""

from __future__ import annotations

from fusion.store import Database
from fusion.store.feedback import Answer, FeedbackStore
from fusion.store.profiles import ProfileStore

LABELS = ["circle", "square"]


def answer(rid: str, t: float, top: str = "circle", profile: str | None = None,
           shadow: tuple[str, str] | None = None) -> Answer:
    rankings = [[{"label": "circle", "score": 0.7}, {"label": "square", "score": 0.3}],
                [{"label": "square", "score": 0.6}, {"label": "circle", "score": 0.4}]]
    return Answer(rid, "fused", "p", t, LABELS, ["a", "b"], rankings, [0.5, 0.5],
                  "weighted_mean", profile, top, *(shadow or (None, None)))


def test_migrates_from_empty_and_labels_survive_a_restart(database_url):
    db = Database(database_url)
    assert db.version("feedback") == 0 and db.version("fusion_profiles") == 0
    store = FeedbackStore(db)
    ProfileStore(db)
    assert db.version("feedback") == 1 and db.version("fusion_profiles") == 1
    store.record([answer("r1", 100.0), answer("r2", 101.0)])
    first = store.answers("r1", since=0)[0]
    assert first.rankings[0][0] == {"label": "circle", "score": 0.7}
    assert store.put_feedback(first, "square", 1.0, 102.0) is False
    assert store.put_feedback(first, "circle", 2.0, 103.0) is True  # replaces
    db.close()

    again = Database(database_url)  # a restarted process
    store = FeedbackStore(again)
    rows = store.labelled("p", "fused")
    assert [(a.request_id, label, weight) for a, label, weight in rows] == [
        ("r1", "circle", 2.0)]
    assert store.answers("r2", since=0)[0].weights == [0.5, 0.5]
    assert store.answers("r2", since=200.0) == []  # expired for feedback
    assert store.purge(before=100.5) == 1  # r1 and its label go; r2 stays
    assert store.labelled("p", "fused") == []
    assert [a.request_id for a in store.answers("r2", since=0)] == ["r2"]
    again.close()


def test_live_and_shadow_statistics(database_url):
    db = Database(database_url)
    store = FeedbackStore(db)
    store.record([answer("a", 1.0, "circle", "fp1", ("fp2", "circle")),
                  answer("b", 2.0, "circle", "fp1", ("fp2", "square")),
                  answer("c", 3.0, "square", None)])
    for rid, label in (("a", "circle"), ("b", "square"), ("c", "square")):
        store.put_feedback(store.answers(rid, 0)[0], label, 1.0, 4.0)
    stats = store.live_stats("p")
    assert stats["fp1"]["live"] == {"answers": 2, "labelled": 2, "accuracy": 0.5}
    assert stats[""]["live"] == {"answers": 1, "labelled": 1, "accuracy": 1.0}
    assert stats["fp2"]["shadow"] == {"answers": 2, "agreement": 0.5, "labelled": 2,
                                      "accuracy": 1.0}
    assert store.profile_accuracy("p", "fp1") == (2, 1)
    db.close()


def test_one_active_profile_per_step(database_url):
    db = Database(database_url)
    profiles = ProfileStore(db)
    params = {"sources": ["a", "b"], "temperatures": [1, 1], "weights": [1, 0]}
    for i, pid in enumerate(("fp1", "fp2")):
        profiles.create(pid, "p", "fused", params, {"learned": {"accuracy": 0.9}},
                        {"examples": 30}, "test", 10.0 + i)
    assert [p["id"] for p in profiles.list("p")] == ["fp2", "fp1"]  # newest first
    profiles.set_state("p", "fused", "fp1", "active", 20.0)
    profiles.set_state("p", "fused", "fp2", "active", 21.0)  # demotes fp1
    profiles.set_state("p", "fused", "fp1", "shadow", 22.0)
    assert {(r["id"], r["state"]) for r in profiles.live()} == {("fp2", "active"),
                                                               ("fp1", "shadow")}
    profiles.set_state("p", "fused", None, "active", 23.0)  # back to the hand-written weights
    assert [(r["id"], r["state"]) for r in profiles.live()] == [("fp1", "shadow")]
    assert profiles.get("fp2")["params"] == params
    assert profiles.get("nope") is None
    db.close()

