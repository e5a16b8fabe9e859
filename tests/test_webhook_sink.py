"""Webhook delivery against a real local HTTP receiver: signatures, retries, timeouts, filters, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from schemas.webhooks import WebhookDeadLetter
from sinks.webhook import (
    DeliveryOutcome,
    WebhookEndpoint,
    WebhookSender,
    dead_letter,
    default_delivery_id,
    deliver_all,
    sign,
    verify,
)

SECRET = "s3cr3t-hmac-key-0123456789"  # noqa: S105 - a test key
BODY = json.dumps(
    {"trigger_id": "trg-42", "rule": "cart_abandoned", "profile_id": "p-1", "note": "Северный"}, ensure_ascii=False
).encode()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    path: str
    headers: Mapping[str, str]
    body: bytes


class Receiver:
    """Records every request and answers from a script of replies, then with ``default``."""

    def __init__(self, script: Sequence[int | Reply], default: int | Reply) -> None:
        self.script = [r if isinstance(r, Reply) else Reply(r) for r in script]
        self.default = default if isinstance(default, Reply) else Reply(default)
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.released = asyncio.Event()
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        index = len(self.requests)
        self.requests.append(Seen(request.path, request.headers.copy(), body))
        reply = self.script[index] if index < len(self.script) else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.released.wait(), reply.delay)
        finally:
            self.in_flight -= 1
        return web.Response(status=reply.status, headers=dict(reply.headers), text="ok")


@contextlib.asynccontextmanager
async def receiver(*script: int | Reply, default: int | Reply = 200) -> AsyncIterator[Receiver]:
    rec = Receiver(script, default)
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        rec.released.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sender(
    seed: int = 7, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[WebhookSender, list[float]]]:
    """A sender whose backoff sleeps are recorded, not slept."""
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    async with aiohttp.ClientSession() as session:
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        yield WebhookSender(session, sleep=fake_sleep, rng=random.Random(seed), **extra), delays


def endpoint(url: str, **overrides: Any) -> WebhookEndpoint:
    config: dict[str, Any] = {"name": "crm", "url": url, "secret": SECRET, **overrides}
    return WebhookEndpoint.model_validate(config)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# 1. signing ---------------------------------------------------------------------------------------------------------


def test_the_receiver_gets_the_exact_body_signed_and_verifiable() -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver]:
        async with receiver() as rec, sender() as (snd, _):
            outcome = await snd.deliver(endpoint(rec.url()), "triggers", BODY, "trg-42")
        return outcome, rec

    outcome, rec = asyncio.run(scenario())
    assert outcome == DeliveryOutcome("crm", "trg-42", True, 1, 200, "")
    [seen] = rec.requests
    assert seen.body == BODY
    headers = seen.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "idstream-webhook/1"
    assert headers["X-Idstream-Delivery"] == "trg-42"
    assert headers["X-Idstream-Topic"] == "triggers"
    assert headers["X-Idstream-Attempt"] == "1"
    ts, signature = headers["X-Idstream-Timestamp"], headers["X-Idstream-Signature"]
    assert abs(int(ts) - time.time()) < 60

    # The documented recipe, computed independently of the module.
    expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    assert signature == expected == sign(SECRET.encode(), int(ts), BODY)

    key, now = SECRET.encode(), float(ts)
    assert verify(key, ts, seen.body, signature, now=now)
    assert verify(key, ts, seen.body, signature)  # default: the current time
    assert verify(key, ts, seen.body, signature, now=now + 299)
    assert not verify(b"another-secret-of-some-length", ts, seen.body, signature, now=now)
    assert not verify(key, ts, seen.body.replace(b"42", b"43"), signature, now=now)
    assert not verify(key, ts, seen.body + b" ", signature, now=now)
    assert not verify(key, str(int(ts) + 1), seen.body, signature, now=now)  # timestamp is signed too
    assert not verify(key, ts, seen.body, signature, now=now + 301)  # stale: a replay
    assert not verify(key, ts, seen.body, signature, now=now - 301)  # from the future
    assert verify(key, ts, seen.body, signature, now=now + 1000, tolerance=1000)
    assert not verify(key, "", seen.body, signature, now=now)
    assert not verify(key, "12ab", seen.body, signature, now=now)
    assert not verify(key, ts, seen.body, signature.upper(), now=now)
    assert not verify(key, ts, seen.body, "sha256=я", now=now)


# 2.-5. retries -------------------------------------------------------------------------------------------------------


def test_retries_after_500s_with_one_delivery_id_and_exponential_backoff() -> None:
    clock = iter([1_000_000.0, 1_000_010.0, 1_000_020.0])

    async def scenario() -> tuple[DeliveryOutcome, Receiver, list[float]]:
        async with receiver(500, 500, 200) as rec, sender(seed=3, clock=lambda: next(clock)) as (snd, delays):
            target = endpoint(rec.url(), backoff_initial=1.0, backoff_max=30.0)
            outcome = await snd.deliver(target, "triggers", BODY, "trg-42")
        return outcome, rec, delays

    outcome, rec, delays = asyncio.run(scenario())
    assert outcome.delivered
    assert outcome.attempts == 3
    assert outcome.last_status == 200
    assert outcome.last_error == ""
    assert [seen.headers["X-Idstream-Delivery"] for seen in rec.requests] == ["trg-42"] * 3
    assert [seen.headers["X-Idstream-Attempt"] for seen in rec.requests] == ["1", "2", "3"]
    assert all(seen.body == BODY for seen in rec.requests)

    # Re-signed per attempt: each attempt's signature verifies with its own timestamp, and they differ.
    stamps = [seen.headers["X-Idstream-Timestamp"] for seen in rec.requests]
    assert stamps == ["1000000", "1000010", "1000020"]
    for seen, ts in zip(rec.requests, stamps, strict=True):
        assert verify(SECRET.encode(), ts, seen.body, seen.headers["X-Idstream-Signature"], now=float(ts))
    assert len({seen.headers["X-Idstream-Signature"] for seen in rec.requests}) == 3

    # Two sleeps (none after the success): 1 s then 2 s, each times a jitter factor in [0.5, 1].
    assert len(delays) == 2
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    jitter = random.Random(3)
    assert delays == pytest.approx([1.0 * jitter.uniform(0.5, 1.0), 2.0 * jitter.uniform(0.5, 1.0)])


def test_backoff_doubles_up_to_the_cap() -> None:
    async def scenario() -> list[float]:
        async with sender() as (snd, _):
            target = endpoint("http://127.0.0.1:1/", backoff_initial=0.5, backoff_max=5.0)
            return [snd.backoff(target, attempt) for attempt in range(1, 11)]

    delays = asyncio.run(scenario())
    for attempt, delay in enumerate(delays, start=1):
        base = min(5.0, 0.5 * 2 ** (attempt - 1))
        assert base * 0.5 <= delay <= base
    assert max(delays) <= 5.0
    assert delays[-1] >= 2.5  # capped, not still doubling, and not collapsed either


@pytest.mark.parametrize(
    ("first", "expected_delay"),
    [
        (Reply(429, {"Retry-After": "0"}), 0.0),
        (Reply(503, {"Retry-After": "2.5"}), 2.5),
        (Reply(503, {"Retry-After": "120"}), 30.0),  # capped at backoff_max
    ],
)
def test_a_numeric_retry_after_is_honoured(first: Reply, expected_delay: float) -> None:
    async def scenario() -> tuple[DeliveryOutcome, list[float]]:
        async with receiver(first, 200) as rec, sender() as (snd, delays):
            outcome = await snd.deliver(endpoint(rec.url(), backoff_max=30.0), "triggers", BODY, "trg-42")
        return outcome, delays

    outcome, delays = asyncio.run(scenario())
    assert outcome.delivered
    assert outcome.attempts == 2
    assert delays == [expected_delay]


def test_a_retry_after_date_falls_back_to_exponential_backoff() -> None:
    async def scenario() -> list[float]:
        async with (
            receiver(Reply(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 200) as rec,
            sender() as (snd, delays),
        ):
            await snd.deliver(endpoint(rec.url(), backoff_initial=4.0), "triggers", BODY, "trg-42")
        return delays

    [delay] = asyncio.run(scenario())
    assert 2.0 <= delay <= 4.0


def test_after_max_attempts_of_500s_the_outcome_becomes_a_dead_letter_without_the_secret() -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver, list[float]]:
        async with receiver(default=500) as rec, sender() as (snd, delays):
            outcome = await snd.deliver(endpoint(rec.url(), max_attempts=4), "triggers", BODY, "trg-42")
        return outcome, rec, delays

    outcome, rec, delays = asyncio.run(scenario())
    assert not outcome.delivered
    assert outcome.attempts == 4
    assert outcome.last_status == 500
    assert outcome.last_error == "HTTP 500 from endpoint 'crm'"
    assert len(rec.requests) == 4
    assert len(delays) == 3  # no sleep after the last attempt

    letter = dead_letter(outcome, "triggers", BODY)
    assert letter.endpoint == "crm"
    assert letter.topic == "triggers"
    assert letter.delivery_id == "trg-42"
    assert letter.attempts == 4
    assert letter.last_status == 500
    assert letter.value_utf8.encode() == BODY
    failed_at = datetime.fromisoformat(letter.failed_at)
    assert failed_at.utcoffset() is not None
    assert failed_at.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - failed_at).total_seconds()) < 60

    wire = letter.model_dump_json()
    assert SECRET not in wire
    assert all(seen.headers["X-Idstream-Signature"].removeprefix("sha256=") not in wire for seen in rec.requests)
    assert WebhookDeadLetter.model_validate_json(wire) == letter
    with pytest.raises(ValidationError):
        WebhookDeadLetter.model_validate({**json.loads(wire), "secret": SECRET})  # extra="forbid"

    with pytest.raises(ValueError, match="succeeded"):
        dead_letter(DeliveryOutcome("crm", "trg-42", True, 1, 200, ""), "triggers", BODY)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_permanent_and_not_retried(status: int) -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver, list[float]]:
        async with receiver(status) as rec, sender() as (snd, delays):
            outcome = await snd.deliver(endpoint(rec.url()), "triggers", BODY, "trg-42")
        return outcome, rec, delays

    outcome, rec, delays = asyncio.run(scenario())
    assert not outcome.delivered
    assert outcome.attempts == 1
    assert outcome.last_status == status
    assert outcome.last_error == f"HTTP {status} from endpoint 'crm'"
    assert len(rec.requests) == 1
    assert delays == []


def test_redirects_are_not_followed() -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver]:
        async with receiver(Reply(307, {"Location": "/elsewhere"})) as rec, sender() as (snd, _):
            outcome = await snd.deliver(endpoint(rec.url()), "triggers", BODY, "trg-42")
        return outcome, rec

    outcome, rec = asyncio.run(scenario())
    assert not outcome.delivered
    assert outcome.attempts == 1
    assert "redirects are not followed" in outcome.last_error
    assert [seen.path for seen in rec.requests] == ["/hook"]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver]:
        async with receiver(status, 204) as rec, sender() as (snd, _):
            outcome = await snd.deliver(endpoint(rec.url()), "triggers", BODY, "trg-42")
        return outcome, rec

    outcome, rec = asyncio.run(scenario())
    assert outcome.delivered
    assert outcome.attempts == 2
    assert outcome.last_status == 204
    assert len(rec.requests) == 2


def test_a_receiver_slower_than_the_timeout_is_retried_then_fails() -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver, list[float]]:
        async with receiver(default=Reply(200, delay=3.0)) as rec, sender() as (snd, delays):
            target = endpoint(rec.url(), timeout=0.2, max_attempts=2)
            outcome = await snd.deliver(target, "triggers", BODY, "trg-42")
        return outcome, rec, delays

    started = time.monotonic()
    outcome, rec, delays = asyncio.run(scenario())
    assert time.monotonic() - started < 2.0  # the client gave up; it did not wait for the 3 s answer
    assert not outcome.delivered
    assert outcome.attempts == 2
    assert outcome.last_status is None
    assert "timeout" in outcome.last_error
    assert outcome.last_error == "timeout after 0.2 s"
    assert [seen.headers["X-Idstream-Attempt"] for seen in rec.requests] == ["1", "2"]
    assert len(delays) == 1


# 6. connection errors and sanitizing ----------------------------------------------------------------------------------


def test_connection_refused_fails_without_leaking_secret_credentials_or_query(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    target = endpoint(f"http://alice:pa55w0rd@127.0.0.1:{port}/hook?token=tok3n-abc", max_attempts=3)

    async def scenario() -> tuple[DeliveryOutcome, list[float]]:
        async with sender() as (snd, delays):
            outcome = await snd.deliver(target, "triggers", BODY, "trg-42")
        return outcome, delays

    with caplog.at_level(logging.DEBUG, logger="idstream.webhook"):
        outcome, delays = asyncio.run(scenario())

    assert not outcome.delivered
    assert outcome.attempts == 3
    assert outcome.last_status is None
    assert outcome.last_error == "connection refused"
    assert len(delays) == 2

    assert f"http://127.0.0.1:{port}/hook" in caplog.text  # the sanitized URL and the name are logged
    assert "'crm'" in caplog.text
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "connection refused" in failures[0].getMessage()

    letter = dead_letter(outcome, "triggers", BODY).model_dump_json()
    exposed = [outcome.last_error, caplog.text, letter, repr(target), str(target), target.safe_url]
    for text in exposed:
        for leak in (SECRET, "pa55w0rd", "alice", "tok3n", "token="):
            assert leak not in text, (leak, text)


def test_a_delivery_id_unsafe_for_a_header_is_refused_not_raised() -> None:
    async def scenario() -> tuple[DeliveryOutcome, Receiver]:
        async with receiver() as rec, sender() as (snd, _):
            outcome = await snd.deliver(endpoint(rec.url()), "triggers", BODY, "trg\r\nX-Evil: 1")
        return outcome, rec

    outcome, rec = asyncio.run(scenario())
    assert not outcome.delivered
    assert outcome.attempts == 0
    assert "delivery id" in outcome.last_error
    assert rec.requests == []


# 7. filtering and fan-out --------------------------------------------------------------------------------------------


def test_wants_filters_by_topic_and_by_trigger_rule() -> None:
    everything = endpoint("https://example.com/hook")
    assert everything.topics == ["triggers"]
    assert everything.wants("triggers", {"rule": "anything"})
    assert everything.wants("triggers", {})
    assert not everything.wants("profiles.updates", {"profile_id": "p-1"})

    picky = endpoint("https://example.com/hook", topics=["triggers", "profiles.updates"], rules=["cart_abandoned"])
    assert picky.wants("triggers", {"rule": "cart_abandoned"})
    assert not picky.wants("triggers", {"rule": "page_visit"})
    assert not picky.wants("triggers", {})
    assert not picky.wants("triggers", {"rule": ["cart_abandoned"]})
    assert picky.wants("profiles.updates", {"profile_id": "p-1"})  # rules only filter triggers
    assert not picky.wants("identity.changes", {"rule": "cart_abandoned"})

    nothing = endpoint("https://example.com/hook", rules=[])
    assert not nothing.wants("triggers", {"rule": "cart_abandoned"})


def _trigger(trigger_id: str, rule: str) -> bytes:
    return json.dumps({"trigger_id": trigger_id, "rule": rule, "profile_id": "p-1"}).encode()


MESSAGES: list[tuple[str, bytes]] = [
    ("triggers", _trigger("t-1", "cart_abandoned")),
    ("triggers", _trigger("t-2", "page_visit")),
    ("profiles.updates", json.dumps({"kind": "updated", "profile_id": "p-1", "version": 3}).encode()),
    ("triggers", b"not json"),
    ("identity.changes", json.dumps({"type": "merged", "profile_id": "p-1"}).encode()),
]


def _fan_out(concurrency: int) -> tuple[list[DeliveryOutcome], Receiver]:
    async def scenario() -> tuple[list[DeliveryOutcome], Receiver]:
        async with receiver(default=Reply(200, delay=0.05)) as rec, sender() as (snd, _):
            first = endpoint(rec.url("/a"), name="a", rules=["cart_abandoned"])
            second = endpoint(rec.url("/b"), name="b", topics=["triggers", "profiles.updates"])
            outcomes = await deliver_all(snd, [first, second], MESSAGES, default_delivery_id, concurrency=concurrency)
        return outcomes, rec

    return asyncio.run(scenario())


def test_deliver_all_fans_out_concurrently_and_respects_filters() -> None:
    outcomes, rec = _fan_out(concurrency=32)
    hashed = hashlib.sha256(b"triggers\0not json").hexdigest()
    summary = [(o.message_index, o.endpoint, o.delivery_id, o.delivered, o.attempts) for o in outcomes]
    assert summary == [
        (0, "a", "t-1", True, 1),
        (0, "b", "t-1", True, 1),
        (1, "b", "t-2", True, 1),
        (2, "b", "p-1:3", True, 1),
        (3, "a", hashed, False, 0),  # rules need a JSON object: refused, to be dead-lettered
        (3, "b", hashed, True, 1),  # no rules: the body is delivered as is
    ]
    refused = outcomes[4]
    assert "not a JSON object" in refused.last_error
    assert refused.message_index is not None
    assert dead_letter(refused, *MESSAGES[refused.message_index]).value_utf8 == "not json"

    assert [seen.body for seen in rec.paths("/a")] == [MESSAGES[0][1]]
    assert sorted(seen.body for seen in rec.paths("/b")) == sorted(MESSAGES[i][1] for i in (0, 1, 2, 3))
    topics = {seen.body: seen.headers["X-Idstream-Topic"] for seen in rec.requests}
    assert topics[MESSAGES[2][1]] == "profiles.updates"
    assert rec.max_in_flight >= 2  # each request takes 50 ms; sequential delivery would never overlap


def test_deliver_all_respects_the_concurrency_bound() -> None:
    outcomes, rec = _fan_out(concurrency=1)
    assert sum(o.delivered for o in outcomes) == 5
    assert len(rec.requests) == 5
    assert rec.max_in_flight == 1
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(deliver_all(WebhookSender.__new__(WebhookSender), [], [], default_delivery_id, concurrency=0))


def test_default_delivery_id() -> None:
    assert default_delivery_id("triggers", _trigger("t-9", "x")) == "t-9"
    profile = json.dumps({"profile_id": "p-7", "version": 12, "kind": "updated"}).encode()
    assert default_delivery_id("profiles.updates", profile) == "p-7:12"
    for topic, body in [
        ("triggers", b"not json"),
        ("triggers", b"[1, 2]"),
        ("triggers", json.dumps({"trigger_id": "bad\nid"}).encode()),  # unsafe in a header
        ("profiles.updates", json.dumps({"profile_id": "p-7", "version": True}).encode()),
        ("profiles.updates", b"\xff\xfe"),
    ]:
        expected = hashlib.sha256(topic.encode() + b"\0" + body).hexdigest()
        assert default_delivery_id(topic, body) == expected
    assert default_delivery_id("a", b"{}") != default_delivery_id("b", b"{}")


# 8. configuration ---------------------------------------------------------------------------------------------------


def test_the_endpoint_never_shows_its_secret() -> None:
    target = endpoint("https://hooks.example.com/idstream")
    assert target.secret.get_secret_value() == SECRET
    dumped = target.model_dump()
    shown = [
        repr(target),
        str(target),
        target.model_dump_json(),
        str(dumped),
        json.dumps(target.model_dump(mode="json")),
    ]
    for text in shown:
        assert SECRET not in text, text
    assert "crm" in repr(target)
    assert "hooks.example.com" in repr(target)
    with pytest.raises(ValidationError):
        target.name = "other"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"secret": "too-short-key"}, "secret"),
        ({"name": "bad name!"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_initial": -1}, "backoff_initial"),
        ({"retries": 3}, "retries"),
    ],
)
def test_invalid_configuration_names_the_field(overrides: dict[str, Any], field_name: str) -> None:
    config: dict[str, Any] = {"name": "crm", "url": "https://example.com/hook", "secret": SECRET, **overrides}
    with pytest.raises(ValidationError) as caught:
        WebhookEndpoint.model_validate(config)
    assert [err["loc"][0] for err in caught.value.errors()] == [field_name]
    assert field_name in str(caught.value)
    assert "too-short-key" not in str(caught.value)  # inputs are hidden: a rejected secret is still secret


def test_valid_configuration_defaults() -> None:
    target = endpoint("http://user:pw@[::1]:8080/a/b?token=x#frag")
    assert (target.timeout, target.max_attempts, target.backoff_initial, target.backoff_max) == (5.0, 6, 0.5, 30.0)
    assert target.rules is None
    assert target.safe_url == "http://[::1]:8080/a/b"
    assert endpoint("https://example.com").safe_url == "https://example.com:443/"
    assert endpoint("https://example.com", name="Crm_prod.v2-1").name == "Crm_prod.v2-1"
