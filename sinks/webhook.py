"""Webhook delivery: POST idstream messages to HTTP endpoints, signed, retried, and dead-lettered.

This module is the delivery core only (asyncio + aiohttp, no Kafka); a stream agent consumes the
topics, calls :func:`deliver_all`, and writes :func:`dead_letter` for every failed outcome.

The contract a receiver can rely on
-----------------------------------
Every attempt is one ``POST`` of the original message body (the exact bytes from the topic, JSON)
to the endpoint's URL, with these headers::

    Content-Type: application/json
    User-Agent: idstream-webhook/1
    X-Idstream-Delivery: <delivery id>      the same on every retry of one message
    X-Idstream-Topic: <topic>               e.g. "triggers" or "profiles.updates"
    X-Idstream-Attempt: <n>                 1, 2, 3 ...
    X-Idstream-Timestamp: <unix seconds>    when this attempt was signed
    X-Idstream-Signature: sha256=<hex>      re-computed on every attempt

Signature recipe (what :func:`verify` does; any language can repeat it)::

    signed   = <X-Idstream-Timestamp header, as received> + "." + <raw request body bytes>
    expected = "sha256=" + hex(HMAC-SHA256(key=<the endpoint's shared secret>, msg=signed))

Accept the request only if ``expected`` equals ``X-Idstream-Signature`` under a constant-time
comparison *and* the timestamp is within 5 minutes of the receiver's clock (this bounds replays).
Verify against the raw body before parsing it: re-serialized JSON will not match.

Idempotency: delivery is at least once. A retry, a redelivery after a restart of the consumer, or a
replay from the dead-letter topic carries the same ``X-Idstream-Delivery`` (the trigger's
``trigger_id``; ``<profile_id>:<version>`` for profile updates; otherwise a SHA-256 of topic and
body, see :func:`default_delivery_id`), so a receiver deduplicates on it. Messages are delivered
concurrently, so order is not guaranteed; profile updates carry ``version`` to order by.

Retry policy: any 2xx is success (the response body is not read). Connection errors, timeouts
(``timeout`` seconds per attempt, whole request), 408, 429 and 5xx are retried, up to
``max_attempts`` attempts in total. Between attempts the sender waits for a numeric ``Retry-After``
if the response had one (capped at ``backoff_max``), otherwise
``min(backoff_max, backoff_initial * 2 ** (attempt - 1))`` times a random jitter factor in
[0.5, 1.0]. Every other status (3xx, since redirects are not followed, and 4xx such as 400, 401,
403, 404, 410, 422) is a permanent failure: not retried.

Dead letters: a message that an endpoint never accepted becomes one
:class:`schemas.webhooks.WebhookDeadLetter` (endpoint name, topic, delivery id, attempts, last
status and error, the original body), which can be replayed after the receiver is fixed.

Secrets: the endpoint's HMAC secret and the signature are never logged or put into an error text;
neither is the URL's userinfo or query string (a ``?token=`` is a credential too). Logs and errors
name the endpoint and its sanitized URL, ``scheme://host:port/path``. Userinfo in the URL is sent
as HTTP Basic authentication.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator

from schemas.webhooks import WebhookDeadLetter

__all__ = [
    "MIN_SECRET_LENGTH",
    "SIGNATURE_TOLERANCE",
    "TRIGGERS_TOPIC",
    "USER_AGENT",
    "DeliveryOutcome",
    "WebhookEndpoint",
    "WebhookSender",
    "dead_letter",
    "default_delivery_id",
    "deliver_all",
    "sign",
    "verify",
]

logger = logging.getLogger("idstream.webhook")

TRIGGERS_TOPIC = "triggers"
USER_AGENT = "idstream-webhook/1"
MIN_SECRET_LENGTH = 16
SIGNATURE_TOLERANCE = 300.0
"""Seconds a receiver should accept between ``X-Idstream-Timestamp`` and its own clock."""

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# A delivery id travels in a header: visible ASCII only, so no receiver or proxy mangles it.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,256}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class WebhookEndpoint(BaseModel):
    """One configured receiver: where to POST, the shared HMAC secret, what to send, how hard to retry.

    ``repr``, ``str`` and validation errors never show the secret or the URL's credentials;
    ``model_dump`` keeps the secret as a masked :class:`~pydantic.SecretStr`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=_NAME, description="1-64 letters, digits, '_', '.', '-'; used in logs and dead letters.")
    url: AnyHttpUrl
    secret: SecretStr = Field(description=f"The HMAC-SHA256 key, at least {MIN_SECRET_LENGTH} characters.")
    topics: list[str] = Field(default_factory=lambda: [TRIGGERS_TOPIC], description="The topics this endpoint gets.")
    rules: list[str] | None = Field(None, description="For 'triggers': only these rule values; null for all.")
    timeout: float = Field(5.0, gt=0, description="Seconds per attempt, for the whole request.")
    max_attempts: int = Field(6, ge=1)
    backoff_initial: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @property
    def safe_url(self) -> str:
        """The URL without userinfo, query or fragment: ``scheme://host:port/path``, safe to log."""
        return _safe_url(self.url)

    def wants(self, topic: str, body: Mapping[str, Any]) -> bool:
        """Whether this endpoint receives a message (the parsed JSON object ``body``) from ``topic``.

        ``rules`` only filter the ``triggers`` topic, by the trigger's ``rule`` field.
        """
        if topic not in self.topics:
            return False
        if self.rules is None or topic != TRIGGERS_TOPIC:
            return True
        rule = body.get("rule")
        return isinstance(rule, str) and rule in self.rules

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            yield (key, self.safe_url) if key == "url" else (key, value)


def _safe_url(url: AnyHttpUrl) -> str:
    return f"{url.scheme}://{url.host}:{url.port}{url.path or '/'}"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Idstream-Signature`` value: ``"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}." + body))``."""
    return _signature(secret, str(timestamp).encode("ascii"), body)


def _signature(secret: bytes, timestamp: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """The receiver's check, given the raw ``X-Idstream-Timestamp``/``-Signature`` headers and raw body.

    True only if the timestamp is a unix time within ``tolerance`` seconds of ``now`` (default: the
    current time), in either direction, and the signature matches under a constant-time comparison.
    """
    if not _TIMESTAMP.fullmatch(timestamp):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    expected = _signature(secret, timestamp.encode("ascii"), body)
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


@dataclass(frozen=True)
class DeliveryOutcome:
    """What happened to one message at one endpoint.

    ``attempts`` is 0 when the message was refused before any request (see ``last_error``).
    ``last_status`` is the HTTP status of the last attempt, None if it got no response.
    ``message_index`` is the message's position in :func:`deliver_all`'s ``messages`` (None from
    :meth:`WebhookSender.deliver`), so a failed outcome can be matched to its body for a dead letter.
    """

    endpoint: str
    delivery_id: str
    delivered: bool
    attempts: int
    last_status: int | None
    last_error: str
    message_index: int | None = None


class WebhookSender:
    """Delivers messages over one shared :class:`aiohttp.ClientSession` (owned by the caller).

    ``sleep``, ``rng`` and ``clock`` are injectable so tests run backoff instantly and deterministically.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._clock = clock

    def backoff(self, endpoint: WebhookEndpoint, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one."""
        if retry_after is not None:
            return min(endpoint.backoff_max, retry_after)
        base = min(endpoint.backoff_max, endpoint.backoff_initial * 2.0 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

    async def deliver(self, endpoint: WebhookEndpoint, topic: str, body: bytes, delivery_id: str) -> DeliveryOutcome:
        """POST ``body`` to ``endpoint`` until it answers 2xx, fails permanently, or attempts run out.

        Never raises for network or HTTP problems: they end up in the returned outcome.
        """
        if not _HEADER_SAFE.fullmatch(delivery_id):
            error = "delivery id is not 1-256 visible ASCII characters; not sent"
            logger.warning("webhook %r (%s): %s", endpoint.name, endpoint.safe_url, error)
            return DeliveryOutcome(endpoint.name, delivery_id, False, 0, None, error)

        secret = endpoint.secret.get_secret_value().encode()
        url = str(endpoint.url)
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
        status: int | None = None
        error = ""
        for attempt in range(1, endpoint.max_attempts + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Idstream-Delivery": delivery_id,
                "X-Idstream-Topic": topic,
                "X-Idstream-Attempt": str(attempt),
                "X-Idstream-Timestamp": str(timestamp),
                "X-Idstream-Signature": sign(secret, timestamp, body),
            }
            status = None
            retry_after: float | None = None
            try:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except TimeoutError:
                error, retryable = f"timeout after {endpoint.timeout} s", True
            except (aiohttp.ClientError, OSError) as exc:
                error, retryable = _describe(exc), True
            else:
                if 200 <= status < 300:
                    logger.debug(
                        "webhook %r (%s): delivered %s on attempt %d", endpoint.name, endpoint.safe_url, delivery_id,
                        attempt,
                    )  # fmt: skip
                    return DeliveryOutcome(endpoint.name, delivery_id, True, attempt, status, "")
                error = f"HTTP {status} from endpoint {endpoint.name!r}"
                if 300 <= status < 400:
                    error += " (redirects are not followed)"
                retryable = status in (408, 429) or status >= 500

            if not retryable or attempt == endpoint.max_attempts:
                logger.warning(
                    "webhook %r (%s): delivery %s failed after %d attempt(s)%s: %s", endpoint.name, endpoint.safe_url,
                    delivery_id, attempt, "" if retryable else " (permanent)", error,
                )  # fmt: skip
                return DeliveryOutcome(endpoint.name, delivery_id, False, attempt, status, error)
            delay = self.backoff(endpoint, attempt, retry_after)
            logger.info(
                "webhook %r (%s): delivery %s attempt %d/%d failed: %s; retrying in %.2f s", endpoint.name,
                endpoint.safe_url, delivery_id, attempt, endpoint.max_attempts, error, delay,
            )  # fmt: skip
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns")  # pragma: no cover


def _retry_after(value: str | None) -> float | None:
    """A numeric ``Retry-After`` in seconds; None when absent, an HTTP date, or nonsense."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    """A short reason for a failed request. Built by hand: aiohttp's own texts may quote the full URL."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS error"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for host {exc.host!r}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected before responding"
    if isinstance(exc, aiohttp.ClientError):
        return f"request failed: {type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"request failed: {exc.strerror or type(exc).__name__}"
    return f"request failed: {type(exc).__name__}"  # pragma: no cover


def default_delivery_id(topic: str, body: bytes) -> str:
    """A stable id for a message, the same every time it is delivered.

    The body's ``trigger_id`` if it is a JSON object with one; ``f"{profile_id}:{version}"`` if it
    has those (profile updates); otherwise ``sha256(topic + "\\0" + body)`` in hex. An id that is not
    1-256 visible ASCII characters (it travels in a header) also falls back to the hash.
    """
    parsed = _json_object(body)
    if parsed is not None:
        trigger_id = parsed.get("trigger_id")
        if isinstance(trigger_id, str) and _HEADER_SAFE.fullmatch(trigger_id):
            return trigger_id
        profile_id, version = parsed.get("profile_id"), parsed.get("version")
        if isinstance(profile_id, str) and isinstance(version, int) and not isinstance(version, bool):
            candidate = f"{profile_id}:{version}"
            if _HEADER_SAFE.fullmatch(candidate):
                return candidate
    return hashlib.sha256(topic.encode() + b"\0" + body).hexdigest()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return parsed if isinstance(parsed, dict) else None


async def deliver_all(
    sender: WebhookSender,
    endpoints: Sequence[WebhookEndpoint],
    messages: Sequence[tuple[str, bytes]],
    delivery_id_of: Callable[[str, bytes], str] = default_delivery_id,
    concurrency: int = 32,
) -> list[DeliveryOutcome]:
    """Deliver every ``(topic, body)`` to every endpoint that wants it, at most ``concurrency`` at a time.

    Returns one outcome per (message, endpoint) pair that was attempted, in message order and then
    endpoint order, each with ``message_index`` set. An endpoint that does not subscribe to the topic,
    or whose ``rules`` do not match the trigger, gets nothing and yields no outcome. A body that is
    not a JSON object is still sent to endpoints without rules; an endpoint with rules cannot judge
    it, so it gets a failed outcome (0 attempts) to be dead-lettered.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    semaphore = asyncio.Semaphore(concurrency)

    async def one(endpoint: WebhookEndpoint, topic: str, body: bytes, delivery_id: str, index: int) -> DeliveryOutcome:
        async with semaphore:
            outcome = await sender.deliver(endpoint, topic, body, delivery_id)
        return dataclasses.replace(outcome, message_index=index)

    slots: list[DeliveryOutcome | asyncio.Task[DeliveryOutcome]] = []
    async with asyncio.TaskGroup() as group:
        for index, (topic, body) in enumerate(messages):
            delivery_id = delivery_id_of(topic, body)
            parsed: dict[str, Any] | None = None
            parse_tried = False
            for endpoint in endpoints:
                if topic not in endpoint.topics:
                    continue
                if endpoint.rules is not None and topic == TRIGGERS_TOPIC:
                    if not parse_tried:
                        parsed, parse_tried = _json_object(body), True
                    if parsed is None:
                        error = "body is not a JSON object, so the endpoint's rules cannot be applied; not sent"
                        logger.warning(
                            "webhook %r (%s): delivery %s: %s", endpoint.name, endpoint.safe_url, delivery_id, error
                        )
                        slots.append(DeliveryOutcome(endpoint.name, delivery_id, False, 0, None, error, index))
                        continue
                    if not endpoint.wants(topic, parsed):
                        continue
                slots.append(group.create_task(one(endpoint, topic, body, delivery_id, index)))
    return [slot.result() if isinstance(slot, asyncio.Task) else slot for slot in slots]


def dead_letter(
    outcome: DeliveryOutcome, topic: str, body: bytes, *, failed_at: datetime | None = None
) -> WebhookDeadLetter:
    """The dead-letter message for a failed outcome (``failed_at``, timezone-aware, defaults to now)."""
    if failed_at is not None and failed_at.tzinfo is None:
        raise ValueError("failed_at must be timezone-aware")
    if outcome.delivered:
        raise ValueError(f"delivery {outcome.delivery_id!r} to {outcome.endpoint!r} succeeded; nothing to dead-letter")
    moment = failed_at if failed_at is not None else datetime.now(UTC)
    return WebhookDeadLetter(
        endpoint=outcome.endpoint,
        topic=topic,
        delivery_id=outcome.delivery_id,
        attempts=outcome.attempts,
        last_status=outcome.last_status,
        last_error=outcome.last_error,
        failed_at=moment.astimezone(UTC).isoformat(),
        value_utf8=body.decode("utf-8", errors="replace"),
    )
