"""Every Redis error on every API path is mapped by streams/redis_errors.py: one that can pass answers 503
``store_unavailable`` (never a 500), and the API answers normally once Redis does.

A busy server (a long Lua script) and a paused one run on a private redis-server started here, so no other
test waits behind them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from identity import CrmInfo
from schemas.api import BatchLookupResponse, ErrorResponse, LookupResult
from streams.embedded import start_redis
from streams.lookup_api import ApiConfig, create_lookup_app
from streams.redis_store import RedisIdentityStore
from tests.conftest import touch
from tests.test_store_contract import story

OFFICE = ("phone", "8 (495) 123-45-67")
IVAN = {"kind": "phone", "value": "8 (916) 123-45-67"}
NOBODY = {"kind": "phone", "value": "8 (926) 000-11-22"}
SWITCHBOARD = {"kind": "phone", "value": "+7 495 123-45-67"}
PAIR = {**IVAN, "other_kind": "email", "other_value": "ivanpetrov@gmail.com"}

#: Runs ARGV[1] seconds by the server's clock, answering nothing meanwhile (past lua-time-limit: BUSY to all).
BUSY_LUA = """
local function now() local t = redis.call('TIME'); return tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local started, n = now(), 0
while now() - started < tonumber(ARGV[1]) do n = n + 1 end
return n
"""

Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


def fill(store: RedisIdentityStore) -> None:
    store.apply_batch(story())
    store.apply_batch(
        [
            touch("sb1", 400, ("crm_contact_id", "anna"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-anna", "new")),
            touch("sb2", 405, ("crm_contact_id", "boris"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-boris", "meeting")),
        ]
    )  # fmt: skip


@pytest.fixture
def private(tmp_path: Path) -> Iterator[tuple[str, RedisIdentityStore]]:
    """A redis-server of this test's own (to be made busy or paused), with Ivan and a shared switchboard."""
    with start_redis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        store = RedisIdentityStore(client, prefix="errors")
        fill(store)
        yield server.url, store
        client.close()


def serve(url: str, store: RedisIdentityStore, scenario: Scenario, *, timeout: float = 1.0) -> None:
    config = ApiConfig(url, store.policy, store.normalizer, store.prefix, redis_timeout=timeout)

    async def main() -> None:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            await scenario(client)

    asyncio.run(main())


def ivan_id(store: RedisIdentityStore) -> str:
    pid = store.lookup_raw("phone", "+79161234567")
    assert pid is not None
    return pid


async def every_path(client: TestClient[Any, Any], ivan: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(path, HTTP status, JSON body) of a request to every path that reads Redis."""
    asked = [
        ("lookup", client.get("/v1/lookup", params=IVAN)),
        ("lookup not found", client.get("/v1/lookup", params=NOBODY)),
        ("lookup ambiguous", client.get("/v1/lookup", params=SWITCHBOARD)),
        ("batch", client.post("/v1/lookup/batch", json={"identifiers": [IVAN, NOBODY, SWITCHBOARD]})),
        ("profile", client.get(f"/v1/profiles/{ivan}")),
        ("explain profile", client.get("/v1/explain", params={"profile_id": ivan})),
        ("explain pair", client.get("/v1/explain", params=PAIR)),
        ("readyz", client.get("/readyz")),
    ]
    answers = []
    for path, request in asked:
        async with request as response:
            answers.append((path, response.status, await response.json()))
    return answers


def assert_unavailable(answers: list[tuple[str, int, dict[str, Any]]]) -> None:
    for path, status, body in answers:
        assert status == 503, (path, status, body)
        if path == "readyz":
            assert body["status"] == "not_ready", body
        else:
            error = ErrorResponse.model_validate(body)
            assert error.code == "store_unavailable", (path, body)
            assert "redis" in error.message


def assert_normal(answers: list[tuple[str, int, dict[str, Any]]], ivan: str) -> None:
    by_path = {path: (status, body) for path, status, body in answers}
    assert {path: status for path, (status, _) in by_path.items()} == {
        "lookup": 200, "lookup not found": 404, "lookup ambiguous": 200, "batch": 200, "profile": 200,
        "explain profile": 200, "explain pair": 200, "readyz": 200,
    }  # fmt: skip
    assert LookupResult.model_validate(by_path["lookup"][1]).profile_id == ivan
    assert LookupResult.model_validate(by_path["lookup ambiguous"][1]).candidates_total == 2
    results = BatchLookupResponse.model_validate(by_path["batch"][1]).results
    assert [r.status for r in results] == ["found", "not_found", "ambiguous"]
    assert by_path["explain pair"][1]["same_person"] is True


def test_a_long_script_makes_every_path_answer_503_then_normally(private: tuple[str, RedisIdentityStore]) -> None:
    """While Redis runs a long script, every command gets BUSY (a ResponseError, not a connection error): 503,
    never 500; the lookups answer normally once it ends."""
    url, store = private
    ivan = ivan_id(store)
    busy_client = redis.Redis.from_url(url, socket_timeout=60)  # it waits for the script's answer
    busy_client.config_set("lua-time-limit", 100)  # busy-reply-threshold in Redis 7: BUSY after 0.1 s
    script = threading.Thread(target=busy_client.eval, args=(BUSY_LUA, 0, 6), name="busy-script", daemon=True)

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert_normal(await every_path(client, ivan), ivan)  # the pools hold connections: BUSY, not a timeout
        script.start()
        deadline = time.monotonic() + 3
        while (await client.get("/v1/lookup", params=IVAN)).status != 503:
            assert time.monotonic() < deadline, "the script did not make Redis busy"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        assert_unavailable(await every_path(client, ivan))
        assert time.monotonic() - started < 3  # BUSY answers at once: no request waited for its timeout
        assert script.is_alive()  # all of the above happened while the script ran
        await asyncio.get_running_loop().run_in_executor(None, script.join, 30)
        assert_normal(await every_path(client, ivan), ivan)

    try:
        serve(url, store, scenario)
    finally:
        script.join(30)
        busy_client.close()


def test_a_paused_redis_answers_503_after_the_api_timeout_then_normally(
    private: tuple[str, RedisIdentityStore],
) -> None:
    """CLIENT PAUSE longer than the API's timeout (1 s here): each Redis call times out, 503 within about the
    timeout; once the pause ends, normal answers (the timed-out connections are replaced)."""
    url, store = private
    ivan = ivan_id(store)
    pauser = redis.Redis.from_url(url)

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert_normal(await every_path(client, ivan), ivan)
        pauser.client_pause(4000, all=True)
        paused_until = time.monotonic() + 4
        started = time.monotonic()
        response = await client.get("/v1/lookup", params=IVAN)
        assert 0.8 < time.monotonic() - started < 2.5  # the API's 1 s timeout, not Redis's 4 s pause
        assert response.status == 503
        assert ErrorResponse.model_validate(await response.json()).code == "store_unavailable"
        ready = await client.get("/readyz")
        assert (ready.status, (await ready.json())["status"]) == (503, "not_ready")
        assert time.monotonic() < paused_until  # still paused: the 503s are the pause's
        await asyncio.sleep(max(0.0, paused_until - time.monotonic()) + 0.3)
        assert_normal(await every_path(client, ivan), ivan)

    try:
        serve(url, store, scenario)
    finally:
        pauser.client_unpause()
        pauser.close()


def test_redis_going_away_answers_503_and_readyz_not_ready(tmp_path: Path) -> None:
    """A stopped server (connection refused): 503 store_unavailable on every path, readyz not_ready."""
    with start_redis(tmp_path / "redis") as server:
        store = RedisIdentityStore(redis.Redis.from_url(server.url), prefix="gone")
        fill(store)
        ivan = ivan_id(store)
        url = server.url

        async def scenario(client: TestClient[Any, Any]) -> None:
            assert_normal(await every_path(client, ivan), ivan)
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            assert_unavailable(await every_path(client, ivan))

        serve(url, store, scenario)
        store.client.close()


def test_a_refusal_no_retry_fixes_is_a_500_that_names_the_store(redis_client: redis.Redis, redis_url: str) -> None:
    """A key of the wrong type (WRONGTYPE: not transient) is the operator's to fix: 500 store_error, logged."""
    store = RedisIdentityStore(redis_client, prefix=f"wrongtype-{uuid.uuid4().hex[:10]}")
    redis_client.set(f"{{{store.prefix}}}:idx", "not a hash")

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params=IVAN)
        assert response.status == 500
        error = ErrorResponse.model_validate(await response.json())
        assert error.code == "store_error"
        assert "WRONGTYPE" not in error.message  # the reply is logged, not answered
        assert (await client.get("/readyz")).status == 200  # Redis itself answers

    try:
        serve(redis_url, store, scenario, timeout=3.0)
    finally:
        redis_client.delete(f"{{{store.prefix}}}:idx")
