"""The open (token-less) API against DNS rebinding and cross-origin posts, and the loopback check.

Without tokens (``idstream up`` and ``demo``) the API listens on loopback only, but a web page the user
opens can still reach it: its own name, rebound to 127.0.0.1, becomes the ``Host`` of its requests, and a
``text/plain`` POST needs no CORS preflight. So open, it answers only requests addressed to a loopback
name, and a POST body must be ``application/json``, with tokens or without.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from identity import ConfigurationError
from schemas.api import BatchLookupResponse, ErrorResponse, LookupResult
from streams.lookup_api import ApiConfig, check_exposure, create_lookup_app
from streams.redis_store import RedisIdentityStore
from tests.test_store_contract import story

TOKEN = "exposure-token-for-tests-0123456789"  # noqa: S105 - a test token
IVAN = {"kind": "phone", "value": "8 (916) 123-45-67"}
BATCH = b'{"identifiers": [{"kind": "phone", "value": "8 (916) 123-45-67"}]}'

Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[RedisIdentityStore]:
    store = RedisIdentityStore(redis_client, prefix=f"exposure-{uuid.uuid4().hex[:10]}")
    store.apply_batch(story())
    yield store
    store.clear()


def run(store: RedisIdentityStore, redis_url: str, scenario: Scenario, tokens: tuple[bytes, ...] = ()) -> None:
    config = ApiConfig(redis_url, store.policy, store.normalizer, store.prefix, tokens)

    async def main() -> None:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            await scenario(client)

    asyncio.run(main())


async def raw(client: TestClient[Any, Any], request: bytes) -> tuple[int, bytes]:
    """Bytes on a fresh connection: (status, body) of the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


REBOUND = [
    "evil.example",
    "evil.example:8080",
    "127.0.0.1.nip.io",  # resolves to 127.0.0.1: exactly what rebinding looks like
    "127.0.0.1.nip.io:8080",
    "localhost.evil.example",
    "127.0.0.1@evil.example",
    "2130706433",  # 127.0.0.1 as a number: browsers would send it normalized, anything else is not ours
    "0.0.0.0:8080",
    "10.0.0.5",
    "[::ffff:10.0.0.5]",
    "[::1]evil",
    "localhost:http",
    "",
]
LOOPBACK_HOSTS = ["localhost", "LocalHost:8080", "127.0.0.1", "127.0.0.1:8080", "127.0.0.2:1", "127.255.255.254",
                  "[::1]", "[::1]:8080", "[::ffff:127.0.0.1]:80"]  # fmt: skip


PATHS = ["/v1/lookup?kind=phone&value=89161234567", "/v1/profiles/p_1", "/healthz", "/metrics", "/v1/openapi.json",
         "/v1/explain?kind=phone&value=89161234567"]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
def test_open_the_api_refuses_a_host_that_is_not_loopback(store: RedisIdentityStore, redis_url: str, path: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for host in REBOUND:
            response = await client.get(path, headers={"Host": host, "Origin": f"http://{host}"})
            assert response.status == 421, (host, response.status)
            error = ErrorResponse.model_validate(await response.json())
            assert error.code == "host_not_allowed"
            assert "IDSTREAM_API_TOKENS" in error.message
        batch = await client.post("/v1/lookup/batch", data=BATCH,
                                  headers={"Host": "evil.example", "Content-Type": "application/json"})  # fmt: skip
        assert batch.status == 421
        # HTTP/1.0 without any Host: not addressed to loopback either
        status, body = await raw(client, b"GET " + path.encode() + b" HTTP/1.0\r\n\r\n")
        assert status == 421, body
        for host in LOOPBACK_HOSTS:
            response = await client.get(path, headers={"Host": host})
            assert response.status in (200, 400, 404), (host, response.status)

    run(store, redis_url, scenario)


def test_open_a_loopback_host_gets_real_answers(store: RedisIdentityStore, redis_url: str) -> None:
    ivan = store.lookup_raw("phone", "+79161234567")

    async def scenario(client: TestClient[Any, Any]) -> None:
        for host in LOOPBACK_HOSTS:
            response = await client.get("/v1/lookup", params=IVAN, headers={"Host": host})
            assert response.status == 200, host
            assert LookupResult.model_validate(await response.json()).profile_id == ivan

    run(store, redis_url, scenario)


def test_with_tokens_any_host_is_served_to_a_bearer(store: RedisIdentityStore, redis_url: str) -> None:
    """Tokens are what protects a served API (a rebinding page has none): the Host check is for open mode."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answered = await client.get("/v1/lookup", params=IVAN, headers={**auth, "Host": "lookup.internal:8080"})
        assert answered.status == 200
        refused = await client.get("/v1/lookup", params=IVAN, headers={"Host": "evil.example"})
        assert refused.status == 401
        assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status == 200  # a probe

    run(store, redis_url, scenario, tokens=(TOKEN.encode(),))


NOT_JSON = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data",
            "application/octet-stream", "application/jsonp", "text/json"]  # fmt: skip


@pytest.mark.parametrize("tokens", [(), (TOKEN.encode(),)], ids=["open", "with-tokens"])
def test_a_post_body_must_be_application_json(
    store: RedisIdentityStore, redis_url: str, tokens: tuple[bytes, ...]
) -> None:
    """What a web page can send cross-origin without a preflight (text/plain, a form, no type) gets 415."""
    auth = {"Authorization": f"Bearer {TOKEN}"} if tokens else {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        for content_type in NOT_JSON:
            response = await client.post("/v1/lookup/batch", data=BATCH, headers={**auth, "Content-Type": content_type})
            assert response.status == 415, content_type
            error = ErrorResponse.model_validate(await response.json())
            assert error.code == "unsupported_media_type"
            assert "application/json" in error.message
        # no Content-Type at all (a fetch() of a Blob without a type)
        head = b"POST /v1/lookup/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if tokens:
            head += b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        status, body = await raw(client, head + b"Content-Length: %d\r\n\r\n%s" % (len(BATCH), BATCH))
        assert status == 415, body
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            response = await client.post("/v1/lookup/batch", data=BATCH, headers={**auth, "Content-Type": content_type})
            assert response.status == 200, content_type
            assert BatchLookupResponse.model_validate(await response.json()).results[0].status == "found"
        if tokens:  # without the token, 401 comes first, whatever the body
            response = await client.post("/v1/lookup/batch", data=BATCH, headers={"Content-Type": "text/plain"})
            assert response.status == 401
        # a GET's body (no handler reads it) and an empty POST are not refused for their type
        assert (await client.get("/v1/lookup", params=IVAN, data=b"x", headers=auth)).status == 200
        empty = await client.post("/v1/lookup/batch", headers=auth)
        assert empty.status == 400
        assert (await client.get("/healthz")).status == 200  # still up

    run(store, redis_url, scenario, tokens)


# ----------------------------------------------------------------------------- where the API may listen open


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.2", "127.1.2.3", "::1", "[::1]"])
def test_loopback_addresses_and_localhost_may_serve_open(host: str) -> None:
    check_exposure(host, ())


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1.nip.io",  # a name that resolves to 127.0.0.1 today; DNS decides what it means tomorrow
        "127.0.0.1.evil.example",
        "no-such-host.invalid",  # does not resolve at all (RFC 2606): cannot be checked, so refused
        "127.evil.invalid",
        "localhost.evil.invalid",
        "0.0.0.0",  # noqa: S104 - the point of the test
        "::",
        "",
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "127.0.0.1 ",
        "2130706433",
    ],
)
def test_anything_else_refuses_to_serve_open(host: str) -> None:
    with pytest.raises(ConfigurationError, match="IDSTREAM_API_TOKENS"):
        check_exposure(host, ())
    check_exposure(host, (TOKEN.encode(),))  # with tokens, anywhere
