"""Tenants on the real app: two router replicas behind Serve's proxy, keys and usage on
PostgreSQL, limits in Redis. Whichever replica a request meets, a key's allow-list, rate limit
and revocation hold, and the usage table's counts equal what the clients counted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from tests.integration.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


def issue(gateway_url: str, **body) -> dict:
    r = httpx.post(f"{gateway_url}/v1/admin/keys", json={"name": "it", **body}, headers=ADMIN,
                   timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def embed(gateway_url: str, key: dict, text: str = "hello") -> httpx.Response:
    return httpx.post(f"{gateway_url}/v1/models/text/embed", json={"inputs": {"text": text}},
                      headers=bearer(key), timeout=60)


def test_admin_routes_need_the_admin_key(gateway_url):
    assert httpx.get(f"{gateway_url}/v1/admin/keys", timeout=30).status_code == 401
    assert httpx.get(f"{gateway_url}/v1/admin/keys", headers=ADMIN, timeout=30).status_code == 200


def test_a_key_limited_to_text(gateway_url):
    key = issue(gateway_url, models=["text"])
    r = httpx.get(f"{gateway_url}/v1/models", headers=bearer(key), timeout=30)
    assert [m["id"] for m in r.json()["data"]] == ["text"]
    r = httpx.post(f"{gateway_url}/v1/models/clip/zero_shot", headers=bearer(key), timeout=30,
                   json={"inputs": {"image": "", "labels": ["a"]}})
    assert r.status_code == 403 and "'clip'" in r.json()["error"]["message"]
    assert embed(gateway_url, key).status_code == 200


def test_sixth_request_in_a_minute_is_429_whichever_replica(gateway_url):
    key = issue(gateway_url, rpm=5)
    codes = [embed(gateway_url, key, f"rpm {i}").status_code for i in range(5)]
    assert codes == [200] * 5
    for _ in range(4):  # several tries: Serve's proxy spreads them over both replicas
        r = embed(gateway_url, key, "six")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "5"


def test_revoked_key_fails_within_2s_on_every_replica(gateway_url):
    key = issue(gateway_url)
    for i in range(8):  # both replicas read (and keep) the key
        assert embed(gateway_url, key, f"rev {i % 2}").status_code == 200
    r = httpx.delete(f"{gateway_url}/v1/admin/keys/{key['id']}", headers=ADMIN, timeout=30)
    assert r.status_code == 200
    time.sleep(2.0)  # the bound under test, not a margin: every replica must refuse by now
    codes = Counter(embed(gateway_url, key, "after").status_code for _ in range(16))
    assert codes == {401: 16}


async def test_usage_equals_what_the_clients_counted(gateway_url):
    keys = [issue(gateway_url, name=f"load-{i}") for i in range(4)]
    counted: Counter[str] = Counter()
    stop = time.monotonic() + 8

    async def client(i: int, c: httpx.AsyncClient) -> None:
        key = keys[i % 4]
        n = 0
        while time.monotonic() < stop:
            r = await c.post("/v1/models/text/embed", headers=bearer(key),
                             json={"inputs": {"text": f"load {n % 5}"}})
            if r.status_code == 200:
                counted[key["id"]] += 1
            n += 1

    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as c:
        await asyncio.gather(*(client(i, c) for i in range(16)))
        ids = {k["id"] for k in keys}

        async def table() -> dict[str, int]:
            r = await c.get("/v1/usage", headers=ADMIN)
            return {row["key_id"]: row["requests"] for row in r.json()["data"]
                    if row["key_id"] in ids}

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # each replica flushes every 2 s
            if all(n >= counted[k] for k, n in (await table()).items()) and \
                    len(await table()) == 4:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # two more flush periods: anything counted twice would show
        assert await table() == dict(counted)
    assert sum(counted.values()) > 50
