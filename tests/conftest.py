"""Shared test helpers: building touches tersely and finding the shared test data."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from identity import CrmInfo, IdentityGraph, ResolutionPolicy, Touch, TouchType, Utm
from identity.graph import ApplyResult
from identity.touch import AttributeValue
from identity.triggers import MissedCall
from streams.embedded import ChildServer, start_broker, start_redis
from streams.lookup_api import ApiConfig, create_lookup_app
from streams.redis_store import RedisIdentityStore, Snapshot
from streams.settings import Settings
from tests.e2e import Deployment

SHARED_TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def touch(
    event_id: str,
    minute: float,
    *identifiers: tuple[str, str],
    type: str = "site_visit",
    source: str = "site",
    attributes: Mapping[str, AttributeValue] | None = None,
    utm: Utm | None = None,
    crm: CrmInfo | None = None,
) -> Touch:
    """A touch ``minute`` minutes after T0 with raw identifiers."""
    return Touch(
        event_id=event_id,
        type=TouchType(type),
        occurred_at=T0 + timedelta(minutes=minute),
        source=source,
        identifiers=tuple(identifiers),
        attributes=dict(attributes or {}),
        utm=utm,
        crm=crm,
    )


def shared_file(*parts: str) -> Path:
    path = SHARED_TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (it lives beside the repository in ../shared)")
    return path


def partition(persons: Mapping[str, frozenset[object]]) -> set[frozenset[object]]:
    return set(persons.values())


def ids(*pairs: Sequence[str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in pairs)


# ----------------------------------------------------------------------------- real servers


class StoreWrapper:
    """The real store behind a test's fault injection: subclasses override one step, the rest goes through."""

    def __init__(self, store: RedisIdentityStore) -> None:
        self.store = store

    @property
    def largest_component(self) -> int:
        return self.store.largest_component

    @property
    def policy(self) -> ResolutionPolicy:
        return self.store.policy

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        return self.store.apply_batch(touches)

    def snapshot(self, profile_ids: Sequence[str], extra_versions: int = 0) -> Snapshot:
        return self.store.snapshot(profile_ids, extra_versions)

    def unfired(self, trigger_ids: Sequence[str]) -> set[str]:
        return self.store.unfired(trigger_ids)

    def mark_fired(self, trigger_ids: Sequence[str]) -> None:
        self.store.mark_fired(trigger_ids)

    def add_pending(self, calls: Sequence[MissedCall]) -> None:
        self.store.add_pending(calls)

    def due_pending(self, now: float, limit: int = 200) -> list[MissedCall]:
        return self.store.due_pending(now, limit)

    def drop_pending(self, event_ids: Sequence[str]) -> None:
        self.store.drop_pending(event_ids)


def http_server(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A vendor's fake API on a free loopback port, served from a thread: the server and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def store_url(store: RedisIdentityStore) -> str:
    """The Redis URL a store's client talks to."""
    kwargs = store.client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def serve_api(config: ApiConfig, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    """Run ``scenario`` against the API server built from ``config``, in process."""

    async def main() -> None:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            await scenario(client)

    asyncio.run(main())


def _configured_or_started(
    configured: str | None, start: Callable[[Path], ChildServer], workdir: Path
) -> Iterator[str]:
    if configured:
        yield configured
        return
    with start(workdir) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """IDSTREAM_REDIS_URL / REDIS_URL when set, else a private redis-server for this test session."""
    yield from _configured_or_started(Settings().redis_url, start_redis, tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """IDSTREAM_KAFKA_BOOTSTRAP_SERVERS when set, else a private broker for this test session."""
    settings = Settings()
    yield from _configured_or_started(settings.kafka_bootstrap_servers, start_broker, tmp_path_factory.mktemp("broker"))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


StoreFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Builds an empty identity store of each implementation; the contract tests run against both."""
    if request.param == "memory":
        return lambda policy=None: IdentityGraph(policy)
    client: redis.Redis = request.getfixturevalue("redis_client")

    def make(policy: ResolutionPolicy | None = None) -> RedisIdentityStore:
        return RedisIdentityStore(client, policy, prefix=f"test-{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture
def deployment(kafka: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """An isolated deployment (group, topics, key prefix) on the session's broker and Redis."""
    deployed = Deployment(kafka, redis_url, tmp_path)
    yield deployed
    deployed.stop()
