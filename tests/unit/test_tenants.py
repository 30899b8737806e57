"""Tenants over HTTP, in-process: keys issued, scoped, limited and revoked at run time on two
"router replicas" (two gateways over the same database, and the same Redis for limits), with
usage that adds up. Both stores (SQLite file, real PostgreSQL) through ``database_url``."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fusion.cache import MemoryBackend, StepCache
from fusion.core.gateway import Gateway
from fusion.core.keys import hash_key
from fusion.core.startup import announce_auth, check_exposure, load_config
from fusion.embedded.server import main as embedded_main
from fusion.embedded.server import read_serve_config
from fusion.errors import SpecError, StepFailed
from fusion.http.app import create_api
from fusion.observe import MemoryRecorder
from fusion.store.database import Database
from fusion.store.keys import KeyStore, parse_token
from fusion.store.usage import UsageKey, UsageStore
from tests.fakes import FakeModels, fake_config
from tests.unit.test_api import png

ROOT = {"Authorization": "Bearer root-key"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_for(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                             base_url="http://gw", timeout=30)


@pytest.fixture
async def replicas(database_url, monkeypatch):
    """``make(**auth)``: gateways over one database, closed (usage flushed) after the test."""
    monkeypatch.setenv("FUSION_ADMIN_KEYS", "root-key")
    made: list[Gateway] = []

    def make(fake: FakeModels | None = None, **auth) -> Gateway:
        auth.setdefault("rate_limit_redis_url", None)
        gw = Gateway(fake_config(database={"url": database_url}, auth=auth),
                     fake or FakeModels(), StepCache(MemoryBackend(), namespace="tenants"))
        made.append(gw)
        return gw

    make.url = database_url  # type: ignore[attr-defined]
    yield make
    for gw in made:
        await gw.tenants.aclose()


async def issue(c: httpx.AsyncClient, **body) -> dict:
    r = await c.post("/v1/admin/keys", json={"name": "team-a", **body}, headers=ROOT)
    assert r.status_code == 201, r.text
    return r.json()


def embed(text: str = "hi") -> dict:
    return {"inputs": {"text": text}}


# ---- the key store ------------------------------------------------------------------------

def test_key_store_keeps_only_a_salted_digest(database_url):
    db = Database(database_url)
    try:
        store = KeyStore(db)
        record, token = store.create("ci", owner="team-x", models=["text"], rpm=5)
        key_id, secret = parse_token(token)
        assert key_id == record.id and record.matches(secret) and not record.matches("x")
        row = db.fetch_one("SELECT * FROM api_keys WHERE id = :id", {"id": key_id})
        assert secret not in str(row.values()) and row["digest"] != hash_key(secret)
        again, token2 = store.create("ci", owner="team-x")
        assert again._salt != record._salt and token2 != token
        assert "digest" not in record.public() and "_salt" not in record.public()
        changed = store.update(key_id, rpm=None, models=["text", "clip*"])
        assert changed.rpm is None and changed.models == ("text", "clip*")
        assert store.revoke(key_id).revoked_at is not None and not store.get(key_id).active()
        assert [r.id for r in store.list(owner="team-x", include_revoked=False)] == [again.id]
        assert store.update("nope", rpm=1) is None
        with pytest.raises(ValueError, match="cannot be changed"):
            store.update(key_id, digest="x")
    finally:
        db.close()


def test_usage_batches_apply_once(database_url):
    db = Database(database_url)
    try:
        store = UsageStore(db)
        k = UsageKey("k1", "model", "text", "2026-01-02")
        assert store.write_batch("b1", {k: {"requests": 2, "items": 3, "compute_s": 0.5}})
        assert not store.write_batch("b1", {k: {"requests": 2, "items": 3}})  # a replay
        assert store.write_batch("b2", {k: {"requests": 1, "errors": 1}})
        [row] = store.query(["k1"])
        assert (row["requests"], row["items"], row["errors"]) == (3, 3, 1)
        assert row["compute_s"] == pytest.approx(0.5)
        assert store.query(["other"]) == [] and store.query(None, day_from="2026-01-03") == []
    finally:
        db.close()


# ---- admin API, allow-lists, revocation ---------------------------------------------------

async def test_allow_lists_403_and_filtered_lists_on_another_replica(replicas):
    a, b = replicas(), replicas()
    async with client_for(a) as ca, client_for(b) as cb:
        key = await issue(ca, models=["text"], pipelines=["embed"])
        assert key["key"].startswith("fsk_") and key["models"] == ["text"]
        listed = (await ca.get("/v1/admin/keys", headers=ROOT)).json()["data"]
        assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
        user = bearer(key["key"])
        r = await cb.get("/v1/models", headers=user)
        assert [m["id"] for m in r.json()["data"]] == ["text"]
        assert (await cb.get("/v1/models/clip", headers=user)).status_code == 404
        r = await cb.post("/v1/models/clip/zero_shot", headers=user, json={"inputs": {
            "image": "", "labels": ["a"]}})
        assert r.status_code == 403 and "'clip'" in r.json()["error"]["message"]
        assert r.json()["error"]["field"] == "model"
        assert (await cb.post("/v1/models/text/embed", headers=user,
                              json=embed())).status_code == 200
        r = await cb.post("/v1/embeddings", headers=user, json={"model": "clip", "input": "x"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert [p["name"] for p in (await cb.get("/v1/pipelines", headers=user)
                                    ).json()["pipelines"]] == ["embed"]
        r = await cb.post("/v1/pipelines/caption_then_classify", headers=user,
                          json={"inputs": {"image": "", "labels": ["a"]}})
        assert r.status_code == 403 and "caption_then_classify" in r.json()["error"]["message"]
        r = await cb.post("/v1/pipelines/caption_then_classify?stream=true", headers=user,
                          json={"inputs": {"image": "", "labels": ["a"]}})
        assert r.status_code == 403  # streaming is refused the same way, before the stream
        assert (await cb.get("/v1/admin/keys", headers=user)).status_code == 403


async def test_revoked_key_is_refused_on_every_replica_within_2s(replicas):
    a, b = replicas(key_refresh_s=0.5), replicas(key_refresh_s=0.5)
    async with client_for(a) as ca, client_for(b) as cb:
        key = await issue(ca)
        user = bearer(key["key"])
        for c in (ca, cb):  # both replicas have read (and cached) the key
            assert (await c.post("/v1/models/text/embed", headers=user,
                                 json=embed())).status_code == 200
        r = await ca.delete(f"/v1/admin/keys/{key['id']}", headers=ROOT)
        assert r.status_code == 200 and r.json()["active"] is False
        revoked = time.monotonic()
        assert (await ca.post("/v1/models/text/embed", headers=user,
                              json=embed())).status_code == 401  # the revoking replica: at once
        while (await cb.post("/v1/models/text/embed", headers=user,
                             json=embed())).status_code == 200:
            await asyncio.sleep(0.05)
        assert time.monotonic() - revoked < 2.0
        r = await cb.post("/v1/models/text/embed", headers=user, json=embed())
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert (await ca.delete("/v1/admin/keys/nope", headers=ROOT)).status_code == 404


async def test_patch_changes_limits_and_bad_fields_are_422(replicas):
    a = replicas()
    async with client_for(a) as c:
        key = await issue(c, rpm=1)
        r = await c.patch(f"/v1/admin/keys/{key['id']}", headers=ROOT,
                          json={"rpm": None, "models": ["t*"],
                                "expires_at": "2099-01-01T00:00:00Z"})
        assert r.status_code == 200 and r.json()["rpm"] is None
        assert r.json()["models"] == ["t*"] and r.json()["expires_at"].startswith("2099-01-01")
        r = await c.patch(f"/v1/admin/keys/{key['id']}", headers=ROOT, json={"rpm": 0})
        assert r.status_code == 422 and r.json()["error"]["field"] == "rpm"
        r = await c.post("/v1/admin/keys", headers=ROOT, json={"name": "x", "bogus": 1})
        assert r.status_code == 422 and r.json()["error"]["field"] == "bogus"
        r = await c.post("/v1/admin/keys", headers=ROOT, json={"rpm": 3})
        assert r.status_code == 422 and r.json()["error"]["field"] == "name"
        gone = await issue(c, expires_at="2001-01-01T00:00:00Z")
        r = await c.get("/v1/models", headers=bearer(gone["key"]))
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


async def test_admin_routes_refuse_everyone_when_no_admin_key(monkeypatch):
    monkeypatch.delenv("FUSION_ADMIN_KEYS", raising=False)
    monkeypatch.delenv("FUSION_API_KEYS", raising=False)
    gw = Gateway(fake_config(), FakeModels())  # auth off: user routes open, admin ones shut
    async with client_for(gw) as c:
        assert (await c.get("/v1/models")).status_code == 200
        for method, path in (("DELETE", "/v1/cache"), ("GET", "/v1/admin/keys")):
            r = await c.request(method, path)
            assert r.status_code == 403, path
            assert "FUSION_ADMIN_KEYS" in r.json()["error"]["message"]


# ---- limits -------------------------------------------------------------------------------

@pytest.fixture
def limited(replicas, shared_redis_url):
    """Two replicas sharing the database and the Redis that holds the limits."""
    ns = uuid.uuid4().hex[:8]  # keys are fresh per test anyway; a clean namespace reads well

    def make(fake: FakeModels | None = None, **auth):
        gw = replicas(fake, rate_limit_redis_url=shared_redis_url, **auth)
        gw.tenants.limits.ns = f"fusion:limits:{ns}"
        return gw

    return make


async def test_sixth_request_in_a_minute_is_429_on_whichever_replica(limited):
    a, b = limited(), limited()
    async with client_for(a) as ca, client_for(b) as cb:
        key = await issue(ca, rpm=5)
        user = bearer(key["key"])
        for i in range(5):
            r = await (ca if i % 2 else cb).post("/v1/models/text/embed", headers=user,
                                                 json=embed(f"t{i}"))
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-remaining-requests"] == str(4 - i)  # on answers too
        for c in (ca, cb):
            r = await c.post("/v1/models/text/embed", headers=user, json=embed("six"))
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.headers["x-ratelimit-limit-requests"] == "5"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
        r = await cb.post("/v1/embeddings", headers=user, json={"model": "text", "input": "x"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        await a.tenants.usage.flush()
        r = await cb.get("/v1/usage", headers=user)
        [row] = r.json()["data"]
        assert (row["model"], row["requests"], row["rejected"]) == ("text", 5, 3)


async def test_lists_count_items_and_pipelines_count_model_steps(limited):
    a = limited()
    async with client_for(a) as c:
        key = await issue(c, rpm=4)
        user = bearer(key["key"])
        items = {"inputs": [{"text": str(i)} for i in range(5)]}
        r = await c.post("/v1/models/text/embed", headers=user, json=items)
        assert r.status_code == 429 and r.json()["error"]["field"] == "inputs"  # 5 > 4, ever
        items["inputs"] = items["inputs"][:3]
        assert (await c.post("/v1/models/text/embed", headers=user,
                             json=items)).status_code == 200
        r = await c.post("/v1/embeddings", headers=user, json={"model": "text",
                                                                "input": ["a", "b"]})
        assert r.status_code == 429  # 3 + 2 > 4
        key2 = await issue(c, rpm=3)
        # caption_then_classify has two model steps: the second run would be a fourth call
        spec = a.pipelines["caption_then_classify"]
        assert sum(1 for s in spec.steps.values() if s.model) == 2
        body = {"inputs": {"image": base64.b64encode(png()).decode(), "labels": ["a", "b"]}}
        r = await c.post("/v1/pipelines/caption_then_classify", headers=bearer(key2["key"]),
                         json=body)
        assert r.status_code == 200, r.text
        r = await c.post("/v1/pipelines/caption_then_classify", headers=bearer(key2["key"]),
                         json=body)
        assert r.status_code == 429


class Gated(FakeModels):
    """Embeddings wait for ``gate``: requests stay in flight as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def call(self, model, task, inputs):
        self.entered.set()
        await self.gate.wait()
        return await super().call(model, task, inputs)


async def test_concurrency_limit_across_replicas(limited):
    fake = Gated()
    a, b = limited(fake), limited(fake)
    async with client_for(a) as ca, client_for(b) as cb:
        key = await issue(ca, max_concurrency=1)
        user = {**bearer(key["key"]), "Cache-Control": "no-store"}
        first = asyncio.create_task(ca.post("/v1/models/text/embed", headers=user,
                                            json=embed("a")))
        await fake.entered.wait()
        r = await cb.post("/v1/models/text/embed", headers=user, json=embed("b"))
        assert r.status_code == 429 and "concurrent" in r.json()["error"]["message"]
        fake.gate.set()
        assert (await first).status_code == 200
        assert (await cb.post("/v1/models/text/embed", headers=user,
                              json=embed("c"))).status_code == 200  # the lease came back


async def test_quota_per_period_is_quota_exceeded(limited):
    a = limited()
    async with client_for(a) as c:
        key = await issue(c, quota_requests=2, quota_period="day")
        user = bearer(key["key"])
        for i in range(2):
            assert (await c.post("/v1/models/text/embed", headers=user,
                                 json=embed(str(i)))).status_code == 200
        r = await c.post("/v1/models/text/embed", headers=user, json=embed("3"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        assert 0 < int(r.headers["retry-after"]) <= 86400


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_fails_open_or_closed(replicas, mode):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recorder = MemoryRecorder()
    gw = replicas(rate_limit_redis_url=f"redis://127.0.0.1:{port}/0", on_limiter_error=mode)
    gw.tenants.recorder = recorder
    async with client_for(gw) as c:
        key = await issue(c, rpm=100)
        r = await c.post("/v1/models/text/embed", headers=bearer(key["key"]), json=embed())
        assert r.status_code == (200 if mode == "open" else 503)
    assert recorder.counts[("fusion_limiter_errors_total", ())] == 1


# ---- usage ----------------------------------------------------------------------------------

async def test_usage_adds_up_across_replicas_and_keys(replicas):
    a, b = replicas(usage_flush_s=0.05), replicas(usage_flush_s=300)
    async with client_for(a) as ca, client_for(b) as cb:
        k1, k2 = await issue(ca, name="k1"), await issue(ca, name="k2")
        sent = {k1["id"]: 0, k2["id"]: 0}

        async def one(i: int) -> None:
            key = (k1, k2)[i % 2]
            c = (ca, cb)[(i // 2) % 2]
            r = await c.post("/v1/models/text/embed", headers=bearer(key["key"]),
                             json=embed(str(i % 7)))
            assert r.status_code == 200
            sent[key["id"]] += 1

        await asyncio.gather(*(one(i) for i in range(40)))
        r = await cb.post("/v1/models/text/embed", headers=bearer(k1["key"]),
                          json={"inputs": [{"text": "x"}, {"text": "y"}]})
        assert r.status_code == 200
        await b.tenants.aclose()  # b "shuts down": what it counted is written
        r = await ca.get("/v1/usage", headers=ROOT)
        rows = {row["key_id"]: row for row in r.json()["data"]}
        assert rows[k1["id"]]["requests"] == sent[k1["id"]] + 1
        assert rows[k1["id"]]["items"] == sent[k1["id"]] + 2
        assert rows[k2["id"]]["requests"] == sent[k2["id"]]
        assert rows[k1["id"]]["key_name"] == "k1"
        assert sum(row["cache_hits"] for row in rows.values()) > 0  # 7 texts, 41 calls
        # a key sees only its own rows; CSV too
        mine = (await ca.get("/v1/usage", headers=bearer(k2["key"]))).json()["data"]
        assert {row["key_id"] for row in mine} == {k2["id"]}
        r = await ca.get("/v1/usage?format=csv", headers=ROOT)
        assert r.headers["content-type"].startswith("text/csv")
        assert r.text.splitlines()[0].startswith("key_id,key_name,model,pipeline,day,requests")
        assert len(r.text.splitlines()) == 3
        r = await ca.get("/v1/usage?from=yesterday", headers=ROOT)
        assert r.status_code == 422 and r.json()["error"]["field"] == "from"


async def test_usage_batch_kept_while_the_database_is_down(replicas, tmp_path):
    gw = replicas(usage_flush_s=300)
    async with client_for(gw) as c:
        key = await issue(c)
        assert (await c.post("/v1/models/text/embed", headers=bearer(key["key"]),
                             json=embed())).status_code == 200
    recorder = gw.tenants.usage
    real = recorder._store
    recorder._store = lambda: (_ for _ in ()).throw(ConnectionError("db down"))
    with pytest.raises(ConnectionError):
        await recorder.flush()
    assert len(recorder.pending) == 1
    recorder._store = real
    await recorder.flush()
    assert recorder.pending == []
    rows = UsageStore(gw.tenants.database()).query([key["id"]])
    assert rows[0]["requests"] == 1


# ---- secure by default ----------------------------------------------------------------------

def test_beyond_loopback_without_a_key_refuses_to_start(monkeypatch):
    monkeypatch.delenv("FUSION_API_KEYS", raising=False)
    monkeypatch.delenv("FUSION_ADMIN_KEYS", raising=False)
    cfg = fake_config()
    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        check_exposure(cfg, host)  # a laptop stays keyless
    for host in ("0.0.0.0", "::", "10.1.2.3", "gpu-box.internal"):
        with pytest.raises(SpecError, match=r"auth: \{anonymous: true\}"):
            check_exposure(cfg, host)
    check_exposure(fake_config(auth={"anonymous": True}), "0.0.0.0")  # chosen explicitly
    check_exposure(fake_config(auth={"key_hashes": [hash_key("k")]}), "0.0.0.0")
    monkeypatch.setenv("FUSION_ADMIN_KEYS", "root")
    check_exposure(cfg, "0.0.0.0")
    assert not any("admin routes" in line for line in announce_auth(cfg))
    monkeypatch.delenv("FUSION_ADMIN_KEYS")
    lines = announce_auth(cfg)  # said at start-up, in both runtimes (start_gateway)
    assert any("admin routes" in line and "disabled" in line for line in lines)
    assert any("anonymous access is on" in line for line in lines)


def test_shipped_profiles_beyond_loopback_need_a_key(monkeypatch):
    """hub.yaml binds 0.0.0.0: with no key it refuses (the embedded runtime too); the
    loopback profiles start keyless."""
    monkeypatch.delenv("FUSION_API_KEYS", raising=False)
    monkeypatch.delenv("FUSION_ADMIN_KEYS", raising=False)
    exposed = []
    for path in sorted(Path("ops/serve").glob("*.yaml")):
        args, http = read_serve_config(str(path))
        try:
            check_exposure(load_config(args), http.get("host", "127.0.0.1"))
        except SpecError:
            exposed.append(path.name)
    assert exposed == ["hub.yaml"]
    with pytest.raises(SpecError, match="FUSION_API_KEYS"):
        embedded_main(["ops/serve/hub.yaml", "--metrics-port", "0"])


# ---- SDK and CLI ----------------------------------------------------------------------------

async def test_cli_keys_and_usage_over_the_sdk(replicas, monkeypatch):
    """``fusion keys create|list|revoke`` and ``fusion usage`` against the in-process app (the
    CLI's sync client over a thread, as a terminal would drive it)."""
    import io

    from fusion_client.cli import main

    gw = replicas()
    app = create_api(lambda: gw)
    loop = asyncio.get_running_loop()

    class Bridge(httpx.BaseTransport):  # the sync CLI in a thread → the app on this loop
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            async def send() -> httpx.Response:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                             base_url="http://gw") as c:
                    r = await c.send(httpx.Request(request.method, request.url,
                                                   headers=request.headers,
                                                   content=request.read()))
                    return httpx.Response(r.status_code, headers=r.headers, content=r.content)
            return asyncio.run_coroutine_threadsafe(send(), loop).result()

    def cli(*argv: str, key: str = "root-key") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--url", "http://gw", "--api-key", key, *argv], transport=Bridge(),
                    stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await asyncio.to_thread(cli, "keys", "create", "ci", "--models", "text",
                                             "--rpm", "10", "--owner", "team-b")
    assert code == 0 and "shown this once" in err, err
    token = out.split("key: ")[1].strip()
    key_id = out.split("id:  ")[1].split()[0]
    code, out, _ = await asyncio.to_thread(cli, "keys", "list")
    assert code == 0 and key_id in out and "team-b" in out and "rpm=10" in out
    assert token not in out
    async with client_for(gw) as c:
        assert (await c.post("/v1/models/text/embed", headers=bearer(token),
                             json=embed())).status_code == 200
    code, out, _ = await asyncio.to_thread(cli, "usage", "--csv", key=token)
    assert code == 0 and out.splitlines()[1].startswith(f"{key_id},ci,text,,")
    code, out, _ = await asyncio.to_thread(cli, "keys", "revoke", key_id, "--json")
    assert code == 0 and '"active": false' in out
    code, _, err = await asyncio.to_thread(cli, "keys", "list", key=token)
    assert code != 0 and "401" in err  # revoked: refused on the replica that revoked it


async def test_usage_survives_a_killed_replica(limited):
    """With Redis, a request is counted there before its answer leaves: a replica killed
    (no shutdown, no flush), even one killed halfway through a flush, loses nothing; the
    surviving replica writes its counts, once."""
    a, b = limited(usage_flush_s=300), limited(usage_flush_s=300)
    async with client_for(a) as ca, client_for(b) as cb:
        key = await issue(ca)
        sent = 0
        for i in range(12):
            r = await (ca, cb)[i % 3 == 0].post("/v1/models/text/embed",
                                                 headers=bearer(key["key"]), json=embed(str(i)))
            assert r.status_code == 200
            sent += 1
        await b.tenants.usage.redis.seal()  # b starts a flush: its counts sealed in a batch
        for i in range(5):  # more answered after the seal, by both
            assert (await (ca, cb)[i % 2].post("/v1/models/text/embed", headers=bearer(key["key"]),
                                               json=embed("x"))).status_code == 200
            sent += 1
        # b is killed now: no flush, no shutdown; its memory holds nothing that matters
        assert b.tenants.usage.counts == {} and a.tenants.usage.counts == {}
        await a.tenants.usage.flush()
        await a.tenants.usage.flush()  # again: nothing is written twice
        [row] = UsageStore(a.tenants.database()).query([key["id"]])
        assert row["requests"] == sent == 17


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_tokens_per_minute_charge_real_tokens(backend, shared_redis_url):
    """tpm: refused while the key is over; each answer charges its prompt + completion tokens
    (an LLM answer's ``usage``, streamed or not)."""
    from fusion.core.limits import KeyLimits, LocalLimits, RedisLimits

    limits = LocalLimits() if backend == "local" else RedisLimits(shared_redis_url)
    if backend == "redis":
        limits.ns = f"fusion:limits:{uuid.uuid4().hex[:8]}"
    key = KeyLimits("k-tpm", tpm=100, quota_tokens=150, quota_period="day")
    try:
        first = await limits.admit(key, 1)
        assert first.allowed and first.remaining_tokens == 100
        await limits.charge(key, 110, 0.0)  # one answer used more than the minute's tokens
        refused = await limits.admit(key, 1)
        assert not refused.allowed and refused.reason == "tpm"
        assert 0 < refused.retry_after_s <= 60
        other = KeyLimits("k-quota", quota_tokens=150, quota_period="day")
        assert (await limits.admit(other, 1)).allowed
        await limits.charge(other, 150, 0.0)
        spent = await limits.admit(other, 1)
        assert not spent.allowed and spent.reason == "quota_tokens"
        busy = KeyLimits("k-compute", quota_compute_s=1.0, quota_period="month")
        assert (await limits.admit(busy, 1)).allowed
        await limits.charge(busy, 0, 1.5)  # compute seconds of the answers, as timed
        spent = await limits.admit(busy, 1)
        assert not spent.allowed and spent.reason == "quota_compute_s"
        assert 0 < spent.retry_after_s <= 31 * 86400  # until the month resets
    finally:
        await limits.aclose()


class Talkative(FakeModels):
    """Answers carry an LLM's ``usage`` (what the llm family's replicas report)."""

    async def call(self, model, task, inputs):
        out = await super().call(model, task, inputs)
        return {**out, "usage": {"prompt_tokens": 7, "completion_tokens": 5}}


async def test_usage_records_tokens_and_errors(replicas):
    gw = replicas(Talkative(fail={"zero_shot": StepFailed("text/zero_shot crashed")}))
    async with client_for(gw) as c:
        key = await issue(c)
        for text in ("a", "b"):
            assert (await c.post("/v1/models/text/embed", headers=bearer(key["key"]),
                                 json=embed(text))).status_code == 200
        r = await c.post("/v1/models/text/zero_shot", headers=bearer(key["key"]),
                         json={"inputs": {"text": "x", "labels": ["a", "b"]}})
        assert r.status_code >= 500
        [row] = (await c.get("/v1/usage?model=text", headers=bearer(key["key"]))).json()["data"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 14, 10)
    assert row["errors"] == 1 and row["compute_s"] >= 0


def test_serve_host_is_not_asked_without_ray(monkeypatch):
    """Building the app in a process without Ray must not start one just to ask Serve's
    host: the check warns instead (the router replica, inside Ray, asks and refuses)."""
    import ray

    from fusion.serve.ingress import serve_http_host

    monkeypatch.delenv("FUSION_API_KEYS", raising=False)
    monkeypatch.delenv("FUSION_ADMIN_KEYS", raising=False)
    assert not ray.is_initialized()
    assert serve_http_host() is None and not ray.is_initialized()
    check_exposure(fake_config(), None)  # unknown: a warning, not a refusal


async def test_streaming_counts_against_the_limit(limited):
    """A streamed pipeline run takes its cost like any run: the stream that would pass the
    limit ends in a ``rate_limited`` error event instead of a result."""
    from tests.sse import sse_events

    a = limited()
    async with client_for(a) as c:
        key = await issue(c, rpm=2)  # embed: two model steps (one skipped by its `when`)
        user = bearer(key["key"])
        r = await c.post("/v1/pipelines/embed", headers=user,
                         params={"stream": "true"}, json=embed("first"))
        kinds = [kind for kind, _ in sse_events(r.text)]
        assert r.status_code == 200 and kinds[-1] == "result", r.text
        r = await c.post("/v1/pipelines/embed", headers=user, params={"stream": "true"},
                         json=embed("second"))
        kind, data = sse_events(r.text)[-1]
        assert kind == "error" and data["error"]["code"] == "rate_limited"


async def test_issued_key_is_logged_and_traced_by_its_id_only(replicas, caplog):
    """The access log names an issued key by its id (the one /v1/usage shows); neither the
    log, nor any record logged while it was used, nor the spans carry the secret."""
    import json as jsonlib
    import logging

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fusion.observe import Observer
    from fusion.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = replicas()
    gw.observer = Observer(None, Tracing(provider), access_log="json")
    access_log: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            access_log.append(record.getMessage())

    collect = Collect()
    logging.getLogger("fusion.access").addHandler(collect)  # it does not propagate
    async with client_for(gw) as c:
        key = await issue(c)
        with caplog.at_level(logging.DEBUG):
            r = await c.post("/v1/models/text/embed", headers=bearer(key["key"]), json=embed())
            assert r.status_code == 200
            r = await c.post("/v1/models/text/embed", headers=bearer(key["key"] + "x"),
                             json=embed())
            assert r.status_code == 401
    logging.getLogger("fusion.access").removeHandler(collect)
    secret = key["key"].split("_", 2)[2]
    lines = [rec.getMessage() for rec in caplog.records] + access_log
    access = [jsonlib.loads(m) for m in access_log if "text/embed" in m]
    assert len(access) == 2 and {e["key_id"] for e in access} == {key["id"]}
    assert not any(secret in m for m in lines)
    spans = exporter.get_finished_spans()
    assert spans and not any(secret in str(dict(s.attributes or {})) for s in spans)
