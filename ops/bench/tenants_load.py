"""Usage under load and a fault: the usage table against the clients' own counts.

Two router replicas behind Serve's proxy over no-op models, keys and usage on a database
(PostgreSQL with ``--postgres``, else a SQLite file), limits and usage counts in Redis. Many
clients spread over several issued keys send cached and uncached calls for ``--seconds``;
halfway through, one router replica is killed (``ray.kill``: no shutdown, no flush), and Serve
starts another. At the end the usage table (``GET /v1/usage``, admin key) is compared with
what the clients counted as answered (200) per key.

    python ops/bench/tenants_load.py [--clients 64] [--keys 4] [--seconds 60] [--no-kill]

A request the killed replica had answered (and counted) whose answer never reached the
client shows as the table counting more than the client; the script prints every difference.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter

import httpx
from _common import start_serve, stop_serve
from router_overhead import PIPELINE, NoopModel

ADMIN_KEY = "bench-admin-key"


def deploy(db_url: str, redis: str) -> None:
    from ray import serve

    from fusion.config import AppConfig
    from fusion.core.keys import hash_key
    from fusion.serve.ingress import Router

    config = AppConfig.model_validate({
        "models": [{"name": "captioner", "family": "caption", "source": "tiny:caption"},
                   {"name": "text", "family": "text", "source": "tiny:text-embedding"}],
        "pipeline_dirs": [], "pipelines": [PIPELINE], "cache": {"enabled": True,
                                                                "redis_url": None},
        "database": {"url": db_url},
        "auth": {"admin_key_hashes": [hash_key(ADMIN_KEY)], "rate_limit_redis_url": redis},
        "router": {"num_cpus": 0.1, "num_replicas": 2},
        "observability": {"metrics": False, "access_log": "off"}})
    captioner = NoopModel.options(name="captioner").bind("captioner")
    text = NoopModel.options(name="text").bind("text")
    router = Router.options(num_replicas=2, ray_actor_options={"num_cpus": 0.1},
                            max_ongoing_requests=256).bind(
        config.model_dump(mode="json"), {"captioner": captioner, "text": text})
    serve.run(router, name="fusion", route_prefix="/")


def kill_one_router() -> str:
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "router" in actor["name"] and "REPLICA" in actor["name"].upper():
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
            return actor["name"]
    raise RuntimeError("no router replica found")


async def run(base_url: str, clients: int, nkeys: int, seconds: float, kill: bool) -> int:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
        keys = []
        for i in range(nkeys):
            r = await c.post("/v1/admin/keys", json={"name": f"load-{i}"}, headers=admin)
            r.raise_for_status()
            keys.append(r.json())
        answered: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        stop = time.monotonic() + seconds

        async def client(i: int) -> None:
            key = keys[i % nkeys]
            headers = {"Authorization": f"Bearer {key['key']}"}
            n = 0
            while time.monotonic() < stop:
                try:
                    r = await c.post("/v1/models/text/embed", headers=headers,
                                     json={"inputs": {"text": f"c{i} {n % 50}"}})
                    (answered if r.status_code == 200 else failed)[key["id"]] += 1
                except httpx.HTTPError:
                    failed[key["id"]] += 1
                n += 1

        async def killer() -> None:
            await asyncio.sleep(seconds / 2)
            name = await asyncio.to_thread(kill_one_router)
            print(f"killed router replica {name} at {seconds / 2:.0f}s")

        jobs = [client(i) for i in range(clients)] + ([killer()] if kill else [])
        await asyncio.gather(*jobs)
        await asyncio.sleep(6)  # every replica's flusher ran (2 s) at least twice since
        r = await c.get("/v1/usage", headers=admin)
        table = {row["key_id"]: row["requests"] for row in r.json()["data"]}
    total = sum(answered.values())
    print(f"{clients} clients, {nkeys} keys, {seconds:.0f}s: {total} answered "
          f"({total / seconds:.0f}/s), {sum(failed.values())} failed")
    diffs = 0
    for key in keys:
        got, sent = table.get(key["id"], 0), answered[key["id"]]
        print(f"  {key['name']}: clients counted {sent}, usage table {got}"
              + ("" if got == sent else f"   DIFFERENT by {got - sent:+d}"))
        diffs += abs(got - sent)
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--postgres", action="store_true",
                        help="keys and usage on a fresh PostgreSQL database")
    args = parser.parse_args()
    from tests import postgres_server
    from tests.redis_server import redis_url

    db_url = postgres_server.fresh_database() if args.postgres else \
        f"sqlite:///{tempfile.mkdtemp(prefix='fusion-bench-')}/fusion.db"
    base_url = start_serve()
    try:
        deploy(db_url, redis_url())
        diffs = asyncio.run(run(base_url, args.clients, args.keys, args.seconds,
                                not args.no_kill))
    finally:
        stop_serve()
        if args.postgres:
            postgres_server.drop_database(db_url)
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
