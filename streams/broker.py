"""The API server's producer, with the broker's errors mapped to idstream's error tree in this one place.

Every record the API accepts is acknowledged by the broker (``acks=all``) before the answer says so; a broker
that cannot be reached, a leader election or a timeout is a :class:`BrokerUnavailable` (retriable: the API
answers 503 and the client sends the batch again, which is safe because the workers apply an event id once).
A record the broker refuses for what it is (too large) is an :class:`~identity.InvalidInput` of that record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from identity import IdstreamError, InvalidInput, TransientError

__all__ = ["BrokerUnavailable", "Producer", "to_idstream"]

log = logging.getLogger("idstream.api")


class BrokerUnavailable(TransientError):
    """The broker did not acknowledge in time, or cannot be reached: nothing unacknowledged was accepted."""

    code = "broker_unavailable"


def to_idstream(exc: BaseException) -> IdstreamError:
    """One broker error as idstream's: the record's own fault, or the broker's (retriable)."""
    if isinstance(exc, IdstreamError):
        return exc
    if isinstance(exc, kafka_errors.MessageSizeTooLargeError | kafka_errors.RecordTooLargeError):
        return InvalidInput("the broker refused the record as too large")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return BrokerUnavailable("the broker did not acknowledge in time")
    name = type(exc).__name__
    return BrokerUnavailable(f"the broker is unavailable ({name})")


class Producer:
    """A lazily started producer: the API serves lookups while the broker is away, and writing resumes by itself
    once it is back. ``timeout``: seconds a batch may wait for its acknowledgements."""

    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            ms = max(1000, round(self.timeout * 1000))
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                linger_ms=2,
                request_timeout_ms=ms,
                max_request_size=1 << 20,
            )
            try:
                await asyncio.wait_for(producer.start(), self.timeout)
            except BaseException as exc:
                await _stop_quietly(producer)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise to_idstream(exc) from None
            self._producer = producer
            return producer

    async def send_all(self, topic: str, values: Sequence[bytes]) -> list[IdstreamError | None]:
        """Send each value; for each, None once acknowledged, else the error (in the values' order)."""
        if not values:
            return []
        producer = await self._started()
        futures: list[asyncio.Future[object] | IdstreamError] = []
        stopped: IdstreamError | None = None  # no metadata in time: each further send would wait as long
        for value in values:
            if stopped is not None:
                futures.append(stopped)
                continue
            try:
                futures.append(await producer.send(topic, value))
            except Exception as exc:  # refused before sending: too large, no metadata in time
                error = to_idstream(exc)
                futures.append(error)
                if error.retriable:
                    stopped = error
        pending = [f for f in futures if not isinstance(f, IdstreamError)]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout)
        out: list[IdstreamError | None] = []
        broken = False
        for f in futures:
            if isinstance(f, IdstreamError):
                out.append(f)
            elif not f.done():
                f.cancel()
                out.append(BrokerUnavailable("the broker did not acknowledge in time"))
                broken = True
            elif f.exception() is not None:
                error = to_idstream(f.exception())  # type: ignore[arg-type]
                broken = broken or error.retriable
                out.append(error)
            else:
                out.append(None)
        if broken:  # a fresh connection next time: a restarted broker may have forgotten this one
            await self.close()
        return out

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception as exc:  # nothing left to deliver: it was reported as not acknowledged
        log.debug("producer stop: %s", type(exc).__name__)
