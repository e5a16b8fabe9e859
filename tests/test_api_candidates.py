"""An ambiguous answer lists at most MAX_CANDIDATES persons, the most relevant first, and counts the rest.

A phone spammed into a form with 930 different e-mails is contested by 930 one-touch persons (the bug
report: a 115 KB answer listing all of them). The two real people who also use it, with several touches
each, come first; the spam follows, newest first, cut at MAX_CANDIDATES; ``candidates_total`` counts all.
The ranking runs in Redis: the API reads only the persons it lists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from identity import Identifier
from schemas.api import MAX_CANDIDATES, BatchLookupResponse, LookupResult
from streams.embedded import start_redis
from streams.lookup_api import ApiConfig, create_lookup_app
from streams.redis_store import MAX_CLAIMS, RedisIdentityStore
from tests.conftest import touch

SPAMMED = ("phone", "8 (916) 555-00-11")
SPAM = 930


@pytest.fixture(scope="module")
def spammed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RedisIdentityStore]]:
    """A private redis-server (its traffic counters are this test's alone) holding the spammed phone."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        client = redis.Redis.from_url(server.url)
        store = RedisIdentityStore(client, prefix="spam")
        spam = [touch(f"spam-{i}", i * 0.01, SPAMMED, ("email", f"client{i}@yandex.ru"), type="form_submit")
                for i in range(SPAM)]  # fmt: skip
        for start in range(0, SPAM, 100):
            store.apply_batch(spam[start : start + 100])
        # two people who really use the phone, with more touches than any spam profile (anna the most)
        store.apply_batch(
            [touch(f"anna-{i}", 100 + i, SPAMMED, ("email", "anna@romashka.ru"), type="call") for i in range(4)]
            + [touch(f"boris-{i}", 200 + i, SPAMMED, ("email", "boris@romashka.ru"), type="call") for i in range(3)]
        )
        yield server.url, store
        client.close()


def ranking(store: RedisIdentityStore) -> list[str]:
    """Every candidate of the spammed phone in the documented order: every person but the phone's own (each
    spam e-mail, anna and boris were seen with it), ranked from their stored profiles."""
    ident = store.normalizer.normalize(*SPAMMED)
    assert isinstance(ident, Identifier)
    found = store.read_identifier(ident)
    assert found is not None
    assert found.ambiguous
    assert MAX_CLAIMS <= len(found.candidates) <= MAX_CLAIMS + 1  # the index names the newest persons only
    keys = []
    for profile in store.profiles():
        if ident.value in profile["identifiers"].get("phone", []):
            assert profile["identifiers"] == {"phone": [ident.value]}  # the phone is a person of its own
            continue
        last = profile["last_touch"]["occurred_at"] if profile["last_touch"] else ""
        keys.append((-sum(profile["touch_counts"].values()), _descending(last), profile["profile_id"]))
    return [pid for *_, pid in sorted(keys)]


def bytes_to_read_every_candidate(store: RedisIdentityStore, candidates: list[str]) -> int:
    """What Redis sends to read the spammed phone and then every candidate whole (what the API did)."""
    before = store.client.info("stats")["total_net_output_bytes"]
    found = store.read_identifier(store.normalizer.normalize(*SPAMMED))  # type: ignore[arg-type]
    assert found is not None
    for pid in candidates:
        store.profile(pid)
    return int(store.client.info("stats")["total_net_output_bytes"] - before)


def _descending(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


def lookup(url: str, store: RedisIdentityStore, **kwargs: Any) -> tuple[int, dict[str, Any], int]:
    """(HTTP status, body, bytes Redis sent) of one request."""
    config = ApiConfig(url, store.policy, store.normalizer, store.prefix)
    method, path, body = kwargs.pop("method", "GET"), kwargs.pop("path", "/v1/lookup"), kwargs.pop("json", None)

    async def main() -> tuple[int, dict[str, Any], int]:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            await client.get("/readyz")  # connected: the handshake is not counted
            before = store.client.info("stats")["total_net_output_bytes"]
            async with client.request(method, path, params=kwargs, json=body) as response:
                answer = await response.json()
            sent = store.client.info("stats")["total_net_output_bytes"] - before
            return response.status, answer, sent

    return asyncio.run(main())


def test_a_spammed_phone_lists_the_first_candidates_and_counts_them_all(
    spammed: tuple[str, RedisIdentityStore],
) -> None:
    url, store = spammed
    expected = ranking(store)
    assert len(expected) == SPAM + 2
    anna, boris = store.lookup_raw("email", "anna@romashka.ru"), store.lookup_raw("email", "boris@romashka.ru")
    newest_spam = [store.lookup_raw("email", f"client{i}@yandex.ru") for i in range(SPAM - 1, SPAM - 19, -1)]
    assert expected[:MAX_CANDIDATES] == [anna, boris, *newest_spam]  # the oracle itself orders as documented

    status, body, sent = lookup(url, store, kind=SPAMMED[0], value=SPAMMED[1])
    assert status == 200
    result = LookupResult.model_validate(body)
    assert (result.status, result.profile_id, result.candidates_total) == ("ambiguous", None, SPAM + 2)
    assert result.candidates is not None
    assert [c.profile_id for c in result.candidates] == expected[:MAX_CANDIDATES]
    assert result.candidates[0].emails == ["anna@romashka.ru"]
    assert len(orjson_size(body)) < 12_000  # was 115 KB
    # Redis sent the contesting ids (~25 bytes each) and MAX_CANDIDATES persons, a fraction of all of them
    every = bytes_to_read_every_candidate(store, expected)
    assert sent < every / 4, (sent, every)


def test_a_batch_caps_each_ambiguous_item(spammed: tuple[str, RedisIdentityStore]) -> None:
    url, store = spammed
    expected = ranking(store)[:MAX_CANDIDATES]
    asked = {"kind": SPAMMED[0], "value": SPAMMED[1]}
    other = {"kind": "email", "value": "anna@romashka.ru"}
    body = {"identifiers": [asked, other, {"kind": "phone", "value": "+79165550011"}]}
    status, answer, _ = lookup(url, store, method="POST", path="/v1/lookup/batch", json=body, view="full")
    assert status == 200
    results = BatchLookupResponse.model_validate(answer).results
    assert [r.status for r in results] == ["ambiguous", "found", "ambiguous"]
    for result in (results[0], results[2]):
        assert result.candidates_total == SPAM + 2
        assert [c.profile_id for c in result.candidates or []] == expected
    assert results[1].candidates_total is None  # only an ambiguous answer carries the count


def orjson_size(body: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(body)


def test_a_small_switchboard_lists_everyone(tmp_path: Path) -> None:
    """Below the cap nothing is cut: the two colleagues of an office phone, the one with more touches first."""
    with start_redis(tmp_path / "redis") as server:
        store = RedisIdentityStore(redis.Redis.from_url(server.url), prefix="office")
        office = ("phone", "8 (495) 123-45-67")
        store.apply_batch(
            [
                touch("a1", 1, ("crm_contact_id", "anna"), office, type="crm_stage", source="amocrm"),
                touch("b1", 2, ("crm_contact_id", "boris"), office, type="crm_stage", source="amocrm"),
                touch("b2", 3, ("crm_contact_id", "boris"), type="call", source="calltouch"),
            ]
        )
        anna, boris = store.lookup_raw("crm_contact_id", "anna"), store.lookup_raw("crm_contact_id", "boris")
        status, body, _ = lookup(server.url, store, kind="phone", value="+74951234567")
        store.client.close()
    result = LookupResult.model_validate(body)
    assert (status, result.status, result.candidates_total) == (200, "ambiguous", 2)
    assert [c.profile_id for c in result.candidates or []] == [boris, anna]
