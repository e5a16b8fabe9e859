"""The webhook agent: delivers ``triggers`` (and, for endpoints that ask, ``profiles.updates``) over HTTP.

It is its own Faust app and consumer group (``<app_id>-webhooks``), run by ``idstream webhooks``, so
a slow or failing endpoint holds back only its own deliveries: identity resolution never waits on it.
Delivery itself is :mod:`sinks.webhook` (signatures, retries with backoff, dead letters). A batch is
acknowledged once every message in it was delivered or dead-lettered on ``webhooks.dlq``; if the
process dies before, Kafka redelivers the batch and receivers dedupe on ``X-Idstream-Delivery``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import aiohttp
import faust
from faust.streams import Stream
from faust.types import EventT

from sinks.webhook import WebhookSender, dead_letter, deliver_all
from streams.app import faust_app, stop_before_ack
from streams.settings import Settings

__all__ = ["create_webhook_app"]

log = logging.getLogger("idstream.webhooks")


def create_webhook_app(settings: Settings, bootstrap: str) -> faust.App:
    app = faust_app(settings, f"{settings.app_id}-webhooks", bootstrap)
    endpoints = list(settings.webhooks)
    # endpoints subscribe to logical names; the deployment may name its topics differently
    logical = {settings.triggers_topic: "triggers"}
    if any("profiles.updates" in e.topics for e in endpoints):
        logical[settings.profiles_topic] = "profiles.updates"
    source = app.topic(*logical, key_type=bytes, value_type=bytes, value_serializer="raw")

    async def deliver(stream: faust.StreamT[Any]) -> None:
        events: Sequence[EventT[Any]]
        async with aiohttp.ClientSession() as session:
            sender = WebhookSender(session)
            batches = cast(Stream[Any], stream).take_events(settings.batch_size, within=settings.batch_within)
            async for events in batches:
                # tombstones (retired profile ids) carry no body to deliver
                messages = [(logical[e.message.topic], e.message.value) for e in events if e.message.value]
                try:
                    outcomes = await deliver_all(sender, endpoints, messages, concurrency=settings.webhook_concurrency)
                    failed = [o for o in outcomes if not o.delivered]
                    for outcome in failed:
                        topic, body = messages[outcome.message_index or 0]
                        letter = dead_letter(outcome, topic, body).model_dump_json().encode()
                        key = outcome.delivery_id.encode()
                        await app.producer.send(settings.webhook_dlq_topic, key, letter, None, None, None)
                    if failed:
                        await app.producer.flush()  # dead letters written before the batch is acknowledged
                except Exception as exc:
                    log.exception("webhook batch failed")
                    stop_before_ack(f"{type(exc).__name__}: {exc}")

    app.agent(source, name="idstream.webhooks", concurrency=1)(deliver)
    return app
