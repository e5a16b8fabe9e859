"""The lookup API under a burst of concurrent lookups: every one is answered, none refused for want of a
Redis connection.

The API runs in a process of its own (as ``idstream serve`` does) on a real socket, against a real Redis;
the burst comes from this process. Lookups beyond the pool's connections queue for one (a bounded pool
that waits) instead of failing with "Too many connections" while Redis is idle.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from identity import CrmInfo
from streams.embedded import free_port
from streams.redis_store import RedisIdentityStore
from tests.conftest import touch
from tests.test_store_contract import story

ROOT = Path(__file__).resolve().parents[1]
OFFICE = ("phone", "8 (495) 123-45-67")

#: The API as ``idstream serve`` runs it: ApiConfig's defaults for the Redis pool and timeout, aiohttp's run_app.
SERVE = """
import sys
from aiohttp import web
from identity import Normalizer, ResolutionPolicy
from streams.lookup_api import ApiConfig, create_lookup_app

url, prefix, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = ApiConfig(url, ResolutionPolicy(), Normalizer(), prefix)
web.run_app(create_lookup_app(config), host="127.0.0.1", port=port, print=None, access_log=None)
"""


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[RedisIdentityStore]:
    store = RedisIdentityStore(redis_client, prefix=f"load-{uuid.uuid4().hex[:10]}")
    store.apply_batch(story())
    store.apply_batch(
        [
            touch("sb1", 400, ("crm_contact_id", "anna"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-anna", "new")),
            touch("sb2", 405, ("crm_contact_id", "boris"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-boris", "meeting")),
        ]
    )  # fmt: skip
    yield store
    store.clear()


@pytest.fixture
def api(store: RedisIdentityStore, redis_url: str) -> Iterator[str]:
    """The base URL of the API serving ``store``, in a child process."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE, redis_url, store.prefix, str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(base + "/readyz"):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else "the API exited"
            assert time.monotonic() < deadline, "the API did not start in 60 s"
            time.sleep(0.1)
        yield base
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(20)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
            return bool(response.status == 200)
    except OSError:
        return False


#: (kind, value, the status every answer must have): a person, a switchboard two people share, nobody.
ASKED = [
    ("phone", "8 (916) 123-45-67", "found"),
    ("email", "Ivan.Petrov@gmail.com", "found"),
    ("phone", "+7 495 123-45-67", "ambiguous"),
    ("phone", "8 (926) 000-11-22", "not_found"),
]


async def _burst(base: str, n: int) -> tuple[Counter[tuple[int, str]], float]:
    """``n`` lookups sent at once, each on a connection of its own: (how many got each (HTTP status, lookup
    status or error code)), seconds taken."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:

        async def one(i: int) -> tuple[int, str]:
            kind, value, expected = ASKED[i % len(ASKED)]
            async with session.get("/v1/lookup", params={"kind": kind, "value": value}) as response:
                body = await response.json()
                status = body.get("code") if body.get("status") == "error" else body["status"]
                if status not in (expected, "store_unavailable"):
                    raise AssertionError(f"{kind} {value}: {status}, expected {expected}")
                return response.status, status

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(n)))
        return Counter(answers), time.perf_counter() - started


@pytest.mark.parametrize("n", [500, 2000])
def test_a_burst_of_concurrent_lookups_is_answered_whole(api: str, n: int) -> None:
    """Far more lookups at once than the pool has connections (64): every one answers 200 or 404, no 503.
    (The pool that refused instead of waiting answered 374 of 500, and 1,511 of 2,000, with 503.)"""
    answers, seconds = asyncio.run(_burst(api, n))
    refused = sum(count for (status, _), count in answers.items() if status == 503)
    assert refused == 0, f"{refused} of {n} lookups answered 503 in {seconds:.1f} s: {answers}"
    assert sum(answers.values()) == n
    per_status = {kind: sum(c for (_, s), c in answers.items() if s == kind) for _, _, kind in ASKED}
    assert per_status == {"found": n // 2, "ambiguous": n // 4, "not_found": n // 4}
    assert {status for status, _ in answers} == {200, 404}
