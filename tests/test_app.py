"""The Faust app's tuning reaches the Kafka clients (the figures behind it: benchmarks/bench_latency.py)."""

from __future__ import annotations

import asyncio

from streams.app import faust_app
from streams.settings import Settings


def test_the_consumer_waits_at_the_broker_only_as_long_as_configured() -> None:
    async def check() -> None:
        app = faust_app(Settings(fetch_max_wait=0.05, producer_batch_bytes=1 << 21), "idstream-test", "127.0.0.1:1")
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)  # built, never started
        try:
            assert consumer._fetch_max_wait_ms == 50  # Faust alone hard-codes 1,500 ms
        finally:
            await consumer.stop()
        assert app.conf.producer_max_batch_size == 1 << 21
        assert app.conf.producer_max_request_size >= app.conf.producer_max_batch_size

    asyncio.run(check())


def test_defaults_favour_latency_under_light_load() -> None:
    settings = Settings()
    assert settings.fetch_max_wait <= 0.05
    assert settings.batch_within <= 0.05  # under load a batch fills long before this
    assert settings.producer_batch_bytes >= 1 << 20  # Faust's 16 KiB holds four profile updates
