"""The warehouse worker: a Faust agent (its own consumer group) that feeds the SQL warehouse.

It reads the touch topics, ``profiles.updates`` and the ad-spend topic, and hands each batch to
:class:`sinks.warehouse.WarehouseWriter` (one transaction). As in the resolver, nothing may escape the
loop: a database outage is retried with backoff, anything else stops the process before the ack, and
bad ad-spend or profile messages go to the warehouse dead-letter topic before the batch is acked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import EventT

from schemas import DeadLetter
from sinks.warehouse import Message, WarehouseWriter, WriteStats
from streams.app import faust_app, run_batch
from streams.settings import Settings

__all__ = ["create_warehouse_app"]

log = logging.getLogger("idstream.warehouse")


def create_warehouse_app(settings: Settings, bootstrap: str, writer: WarehouseWriter) -> faust.App:
    """The agent over a writer whose warehouse is migrated (``idstream warehouse`` migrates before this)."""
    app = faust_app(settings, f"{settings.app_id}-warehouse", bootstrap)
    names = [*settings.touch_topics, settings.profiles_topic, settings.spend_topic]
    source = app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw")

    async def load(stream: faust.StreamT[Any]) -> None:
        events: Sequence[EventT[Any]]
        batches = cast(Stream[Any], stream).take_events(settings.batch_size, within=settings.batch_within)
        async for events in batches:
            batch = [
                Message(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
                for e in events
            ]
            done: tuple[WriteStats, list[DeadLetter]] | None = await run_batch(
                writer.write, batch, give_up_after=settings.give_up_after
            )
            if done is None:
                continue
            stats, dead = done
            for letter in dead:
                value = letter.model_dump_json().encode()
                await app.producer.send(settings.warehouse_dlq_topic, None, value, None, None, None)
            if dead:
                await app.producer.flush()  # dead letters written before the batch is acknowledged
            log.info("warehouse batch: %s", stats)

    app.agent(source, name="idstream.warehouse", concurrency=1)(load)
    return app
