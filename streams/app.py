"""The Faust worker: consume touch topics in batches, resolve them in Redis, publish the results.

The agent is deliberately thin; everything it does to a batch is :class:`streams.processor.Processor`.
Faust acknowledges an event when the agent body raises (and the whole batch under ``take_events``),
so nothing may escape the loop: transient store errors are retried with backoff, and anything else,
or a store that stays down, ends the process with ``os._exit`` *before* the ack, so Kafka redelivers
the batch to the next worker (the store ignores event ids it has applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import faust
import redis
from aiokafka import errors as kafka_errors
from faust.streams import Stream
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from identity import IdstreamError, TransientError
from streams.observe import LAG, STORE_RETRIES, record_batch, start_health_server
from streams.processor import Inbound, Outbound, OutputTopics, Processor, output_dead_letter
from streams.settings import Settings

__all__ = ["Progress", "create_app", "deliver", "ensure_topics", "faust_app", "run_batch", "stop_before_ack"]

log = logging.getLogger("idstream.worker")


def ensure_topics(settings: Settings, bootstrap: str) -> None:
    """Create the touch and output topics (idempotent). ``profiles.updates`` is compacted."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="idstream-admin", request_timeout_ms=15_000)
    try:
        compacted = {"cleanup.policy": "compact"}
        wanted = [NewTopic(t, settings.topic_partitions, 1) for t in settings.touch_topics]
        wanted.append(NewTopic(settings.profiles_topic, settings.topic_partitions, 1, topic_configs=compacted))
        others = (settings.changes_topic, settings.triggers_topic, settings.spend_topic)
        wanted += [NewTopic(t, settings.topic_partitions, 1) for t in others]
        # dead letters keep the raw input, erased persons' values too: they age out instead of staying forever
        aging = {"retention.ms": str(round(settings.dlq_retention_days * 86_400_000))}
        letters = (settings.dlq_topic, settings.webhook_dlq_topic, settings.warehouse_dlq_topic)
        wanted += [NewTopic(t, settings.topic_partitions, 1, topic_configs=aging) for t in letters]
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                admin.create_topics(missing)
    finally:
        admin.close()


def stop_before_ack(reason: str) -> None:
    """Stop now, before Faust acknowledges the batch: the events will be redelivered."""
    log.critical("stopping the worker without acknowledging the batch: %s", reason)
    logging.shutdown()
    os._exit(70)


In = TypeVar("In")
Out = TypeVar("Out")


async def run_batch(
    process: Callable[[In], Out],
    batch: In,
    *,
    give_up_after: float,
    on_fatal: Callable[[str], None] = stop_before_ack,
) -> Out | None:
    """Run one step (a batch through the processor) off the event loop, retrying transient errors with backoff."""
    loop = asyncio.get_running_loop()
    delay, waited = 0.1, 0.0
    while True:
        try:
            return await loop.run_in_executor(None, process, batch)
        except TransientError as exc:
            if waited >= give_up_after:
                on_fatal(f"store unavailable for {waited:.0f} s: {exc}")
                return None
            STORE_RETRIES.inc()
            log.warning("transient error, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)
        except Exception as exc:
            log.exception("unexpected error in a batch")
            on_fatal(f"{type(exc).__name__}: {exc}")
            return None


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes 1,500 ms: with a broker that holds a fetch until its wait ends instead of
        # answering when records arrive, every fetch that found nothing would add that much latency.
        consumer._fetch_max_wait_ms = cast(_App, self.app).fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    """Faust whose consumer waits at most ``fetch_max_wait_ms`` at the broker (``IDSTREAM_FETCH_MAX_WAIT``)."""

    fetch_max_wait_ms = 1500

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def faust_app(settings: Settings, app_id: str, bootstrap: str) -> faust.App:
    """A Faust app (one consumer group) tuned for idstream's agents."""
    app = _App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        table_standby_replicas=0,  # no tables: the simple round-robin assignor
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,  # ensure_topics creates them, with the right configs
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=max(1.0, settings.broker_session_timeout / 5),
        broker_rebalance_timeout=settings.broker_session_timeout,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # Faust's 16 KiB producer batches hold four profile updates: a send then waits for the batch in
        # flight to that partition, and one worker could not produce 1,000 profiles/s (bench_latency.py).
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_max_request_size=max(settings.producer_batch_bytes, 1 << 20) * 2,
        web_enabled=False,
    )
    app.fetch_max_wait_ms = max(1, round(settings.fetch_max_wait * 1000))
    return app


def _too_large(exc: BaseException) -> bool:
    """Did the producer or the broker refuse a message for its size (it will never fit)?"""
    while exc is not None:
        if isinstance(exc, (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError)):
            return True
        exc = exc.__cause__  # type: ignore[assignment]  # Faust wraps it in ProducerSendError
    return False


async def deliver(
    send: Callable[[Outbound], Awaitable[Awaitable[Any]]],
    out: Sequence[Outbound],
    *,
    topics: OutputTopics,
    limit: int,
    give_up_after: float,
    on_fatal: Callable[[str], None] = stop_before_ack,
) -> bool:
    """Produce every message and wait until the broker has each, before the batch is acknowledged.

    A message the broker can never take (too large) is replaced by a dead letter naming its key; any other
    failure is retried with backoff, and a broker that stays away past ``give_up_after`` stops the worker
    before the ack (the batch is redelivered: nothing is lost). Returns False when it stopped.
    """
    pending = list(out)
    delay, waited = 0.1, 0.0
    while pending:
        sent: list[tuple[Outbound, Awaitable[Any] | BaseException]] = []
        for message in pending:
            try:
                sent.append((message, await send(message)))
            except Exception as exc:
                sent.append((message, exc))
        retry: list[Outbound] = []
        letters: list[Outbound] = []
        for message, outcome in sent:
            failure = outcome if isinstance(outcome, BaseException) else await _failure(outcome)
            if failure is None:
                continue
            if _too_large(failure) and message.topic != topics.dlq:
                size = len(message.value or b"") + len(message.key or b"")
                key = (message.key or b"").decode("utf-8", "replace")
                letters.append(output_dead_letter(topics, message.topic, key, size, limit))
            else:
                log.warning("producing to %s failed (%s); retrying", message.topic, type(failure).__name__)
                retry.append(message)
        pending = letters + retry
        if retry:
            if waited >= give_up_after:
                on_fatal(f"the broker did not take {len(retry)} messages for {waited:.0f} s")
                return False
            STORE_RETRIES.inc()
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)
    return True


async def _failure(delivery: Awaitable[Any]) -> BaseException | None:
    try:
        await delivery
    except Exception as exc:
        return exc
    return None


class Progress:
    """What /healthz knows of the resolving loop: a worker that stopped making progress is not alive."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self.busy_since: float | None = None  # monotonic start of the batch in hand
        self.last_done = time.monotonic()
        self.stopped: str | None = None  # why the loop ended, if it did
        self.lag = 0

    def problem(self) -> str | None:
        now = time.monotonic()
        if self.stopped is not None:
            return f"the resolving loop stopped: {self.stopped}"
        if self.busy_since is not None and now - self.busy_since > self.stall_after:
            return f"one batch has been in hand for {now - self.busy_since:.0f} s"
        if self.lag > 0 and self.busy_since is None and now - self.last_done > self.stall_after:
            return f"{self.lag} events wait and no batch ended for {now - self.last_done:.0f} s"
        return None


def create_app(settings: Settings, bootstrap: str, redis_url: str, *, health: bool = True) -> faust.App:
    """A Faust app wired to the given broker and Redis (``health``: serve /metrics, /healthz, /readyz)."""
    app = faust_app(settings, settings.app_id, bootstrap)
    client = settings.redis_client(redis_url)
    topics = settings.output_topics()
    processor = Processor(
        settings.redis_store(client),
        topics,
        settings.trigger_rules_config(),
        max_message_bytes=settings.max_message_bytes,
        max_future_skew=settings.max_future_skew or None,
    )
    touches = app.topic(*settings.touch_topics, key_type=bytes, value_type=bytes, value_serializer="raw")
    processed: dict[TP, int] = {}  # the next offset to process, per partition this worker has handled
    progress = Progress(settings.stall_after)

    async def send(message: Outbound) -> Awaitable[Any]:
        return await app.producer.send(message.topic, message.key, message.value, None, None, None)

    async def resolve(stream: faust.StreamT[Any]) -> None:
        events: Sequence[EventT[Any]]
        batches = cast(Stream[Any], stream).take_events(settings.batch_size, within=settings.batch_within)
        try:
            async for events in batches:
                progress.busy_since = time.monotonic()
                batch = [Inbound(m.value, m.topic, m.partition, m.offset) for m in (e.message for e in events)]
                clock = time.perf_counter()
                counted = await run_batch(processor.process_counted, batch, give_up_after=settings.give_up_after)
                if counted is None:  # the process is stopping before the ack
                    continue
                out, stats = counted
                if out and not await deliver(
                    send, out, topics=topics, limit=settings.max_message_bytes, give_up_after=settings.give_up_after
                ):
                    continue
                if any(m.trigger_id for m in out):  # delivered before recorded: a crash re-fires, never loses
                    await run_batch(processor.confirm, out, give_up_after=settings.give_up_after)
                for e in events:
                    processed[e.message.tp] = e.message.offset + 1
                record_batch(stats, time.perf_counter() - clock, len(batch), settings.blob_component_size)
                progress.busy_since, progress.last_done = None, time.monotonic()
        except BaseException as exc:
            progress.stopped = type(exc).__name__
            raise

    app.agent(touches, name="idstream.resolve", concurrency=1)(resolve)

    async def missed_calls() -> None:
        """Missed calls whose windows closed: fire for those nobody returned (delivered, then recorded)."""
        if "missed_call_not_returned" not in processor.rules.enabled:
            return
        loop = asyncio.get_running_loop()
        try:
            out, decided = await loop.run_in_executor(None, processor.due)
            if out and not await deliver(
                send, out, topics=topics, limit=settings.max_message_bytes, give_up_after=settings.give_up_after
            ):
                return
            await loop.run_in_executor(None, processor.settle, out, decided)
        except IdstreamError as exc:  # the next tick tries again: nothing is dropped before it is delivered
            log.warning("missed-call check postponed: %s", exc.code)

    app.timer(settings.missed_call_check_s, on_leader=True)(missed_calls)  # one worker decides, none twice
    if health:
        _observe(app, settings, client, processed, progress)
    return app


def _observe(
    app: faust.App, settings: Settings, client: redis.Redis, processed: dict[TP, int], progress: Progress
) -> None:
    """Consumer lag every few seconds, and /metrics, /healthz, /readyz for probes and Prometheus."""
    assigned = asyncio.Event()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode types a sync receiver
    async def _assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned.set()

    async def lag() -> None:
        consumer = app.consumer
        total = 0
        for tp in consumer.assignment():
            done = processed.get(tp)
            if done is None:
                done = await consumer.position(tp)
            high = consumer.highwater(tp)
            if done is not None and high is not None:
                LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - done))
                total += max(0, high - done)
        if total and not progress.lag:  # work arrived after an idle spell: the stall clock starts now
            progress.last_done = max(progress.last_done, time.monotonic() - 5.0)
        progress.lag = total

    async def ready() -> str | None:
        if not assigned.is_set() or app.rebalancing:
            return "joining the consumer group"
        try:
            await asyncio.get_running_loop().run_in_executor(None, client.ping)
        except redis.RedisError as exc:
            return f"redis unavailable: {type(exc).__name__}"
        return None

    async def serve() -> None:
        where = f"http://{settings.metrics_host}:{settings.metrics_port}"
        try:
            await start_health_server(settings.metrics_host, settings.metrics_port, ready, live=progress.problem)
        except OSError as exc:  # a second worker on a laptop: resolving matters more than its metrics
            log.error("metrics and probes are off: cannot listen on %s: %s", where, exc)
            return
        log.info("metrics and probes on %s (/metrics, /healthz, /readyz)", where)

    app.timer(5.0)(lag)
    app.task(serve)
