"""Data in over HTTP: ``POST /v1/touches`` and the webhook receivers at ``/v1/hooks/{source}/{secret}``.

Both decode with the stream's own decoder (what a worker would dead-letter is refused here, naming the field)
and produce to the touch topics, answering only once the broker acknowledged every accepted event (``acks=all``).
A broker that cannot be reached is a 503 (``broker_unavailable``, with ``Retry-After``) naming what was not
delivered; sending the batch again is safe, the workers apply an event id once.

Scopes: ``/v1/touches`` takes the ingest tokens (``IDSTREAM_INGEST_TOKENS``) and no other; the lookup tokens
read and cannot write. A webhook receiver is authenticated by its source's secret in the path
(``IDSTREAM_HOOK_SECRETS``): a wrong secret, or a source without one, answers 404 like an unknown route and lands
nothing. A vendor payload that cannot be mapped answers 400 with the reason and goes to the dead-letter topic
with its raw body (``topic: "http:/v1/hooks/<source>"``, partition and offset -1).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from identity import IdstreamError, Touch, TransientError
from schemas.api import MAX_INGEST
from schemas.outputs import DeadLetter
from streams.broker import Producer
from streams.connectors import CONNECTORS, HookRequest, MappingError
from streams.lookup_api import CONFIG, STORE, _decoded, _error, _error_body, _event_id_of, _json, _json_type
from streams.observe import DEAD_LETTERS
from streams.redis_errors import mapped

__all__ = ["MAX_INGEST", "PRODUCER", "add_ingest_routes", "topic_for"]

log = logging.getLogger("idstream.api")

#: Seconds a client should wait before sending a batch the broker did not take.
RETRY_AFTER = 5

PRODUCER: web.AppKey[Producer] = web.AppKey("producer", Producer)

#: The touch topic of each type, by the suffix of the configured topic names (touches.site, touches.calls...).
_TOPIC_SUFFIX = {"site_visit": "site", "call": "calls", "form_submit": "forms", "crm_stage": "crm"}


def topic_for(event_type: str, topics: Sequence[str]) -> str:
    """The configured touch topic an event of this type goes to (the first one when no name fits)."""
    suffix = _TOPIC_SUFFIX.get(event_type)
    if suffix:
        for topic in topics:
            if topic.rsplit(".", 1)[-1] == suffix:
                return topic
    return topics[0]


#: Largest ``/v1/touches`` body: 1,000 events of typical size with room to spare (one event is at most 64 KiB).
MAX_INGEST_BODY = 8 << 20


async def _read_limited(request: web.Request, limit: int) -> bytes | web.Response:
    """The body, up to ``limit`` bytes (the application's limit is the lookups' smaller one)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                return _error(413, "body_too_large", f"the body is over {limit >> 20} MiB; send fewer events")
            chunks.append(chunk)
    except web.RequestPayloadError:
        return _error(400, "invalid_body", "the request body could not be read as its headers describe it")
    return b"".join(chunks)


def _items(body: bytes, content_type: str) -> list[Any] | web.Response:
    """A JSON array (or one object), or JSON lines; each item as parsed JSON, or a 400 that says what is wrong."""
    if not body.strip():
        return _error(400, "invalid_request", "the body is empty: expected touch events as a JSON array or lines")
    if content_type == "application/json":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:200]}")
        if isinstance(parsed, dict):
            return [parsed]
        if not isinstance(parsed, list):
            return _error(400, "invalid_request", f"expected a JSON array of touch events, not {_json_type(parsed)}")
        return parsed
    out: list[Any] = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            out.append(_Unparsed(number, str(exc)[:200]))
    return out


class _Unparsed:
    """A JSON line that is not JSON: an item error of its own, the other lines still count."""

    def __init__(self, line: int, reason: str) -> None:
        self.line, self.reason = line, reason


def _invalid_item(index: int, item: Any, error: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "event_id": _event_id_of(item), "status": "invalid", "error": _error_body(error)}


async def _applied_before(request: web.Request, event_ids: list[str]) -> set[str]:
    """Event ids the workers already applied (within the dedup window); none when Redis cannot say now: the
    workers drop a redelivered id anyway, so the answer is only less precise, never wrong."""
    if not event_ids:
        return set()
    store = request.app[STORE]

    def lookup() -> set[str]:
        with mapped("ingest"):
            return store.applied_among(event_ids)

    try:
        return await asyncio.get_running_loop().run_in_executor(None, lookup)
    except IdstreamError as exc:
        log.warning("ingest: applied ids not checked (%s)", exc.code)
        return set()


async def _produce(
    request: web.Request, accepted: list[tuple[int, Touch, bytes]]
) -> tuple[dict[int, IdstreamError], bool]:
    """Produce each (index, touch, value) to its topic; the errors by index, and whether the broker was away."""
    config, producer = request.app[CONFIG], request.app[PRODUCER]
    by_topic: dict[str, list[tuple[int, bytes]]] = {}
    for index, touch, value in accepted:
        by_topic.setdefault(topic_for(touch.type.value, config.touch_topics), []).append((index, value))
    errors: dict[int, IdstreamError] = {}
    away = False
    for topic, records in by_topic.items():
        try:
            results = await producer.send_all(topic, [value for _, value in records])
        except IdstreamError as exc:  # the producer could not start: nothing of this topic was sent
            results = [exc] * len(records)
        for (index, _), error in zip(records, results, strict=True):
            if error is not None:
                errors[index] = error
                away = away or error.retriable
    return errors, away


async def touches_endpoint(request: web.Request) -> web.Response:
    """Touch events in (a JSON array or JSON lines, at most 1,000): decoded, deduplicated, produced, acknowledged."""
    config = request.app[CONFIG]
    if PRODUCER not in request.app:
        return _error(503, "ingest_unavailable", "this server has no broker configured to write touch events to")
    body = await _read_limited(request, MAX_INGEST_BODY)
    if isinstance(body, web.Response):
        return body
    items = _items(body, request.content_type)
    if isinstance(items, web.Response):
        return items
    if not 1 <= len(items) <= MAX_INGEST:
        return _error(400, "invalid_request", f"give 1 to {MAX_INGEST} touch events; the body has {len(items)}")
    skew = timedelta(seconds=config.max_future_skew) if config.max_future_skew is not None else None
    now = datetime.now(UTC)
    answers: list[dict[str, Any]] = []
    candidates: list[tuple[int, Touch, bytes]] = []
    for index, item in enumerate(items):
        if isinstance(item, _Unparsed):
            error = {"code": "invalid_json", "message": f"line {item.line} is not valid JSON: {item.reason}"}
            answers.append({"index": index, "event_id": None, "status": "invalid", "error": error})
            continue
        decoded = _decoded(item, now, skew, config.policy)
        if isinstance(decoded, IdstreamError):
            answers.append(_invalid_item(index, item, decoded.to_dict()))
            continue
        answers.append({"index": index, "event_id": decoded.event_id, "status": "accepted"})
        candidates.append((index, decoded, orjson.dumps(item)))
    known = await _applied_before(request, [t.event_id for _, t, _ in candidates])
    accepted: list[tuple[int, Touch, bytes]] = []
    first_of: dict[str, int] = {}
    for index, touch, value in candidates:
        if touch.event_id in known or touch.event_id in first_of:
            answers[index]["status"] = "duplicate"
            continue
        first_of[touch.event_id] = index
        accepted.append((index, touch, value))
    errors, away = await _produce(request, accepted)
    for index, failure in errors.items():
        answers[index]["status"] = "not_delivered" if failure.retriable else "invalid"
        answers[index]["error"] = _error_body(failure.to_dict())
    counts = {s: sum(1 for a in answers if a["status"] == s) for s in ("accepted", "duplicate", "invalid")}
    body_out: dict[str, Any] = {**counts, "not_delivered": len(errors) if away else 0, "items": answers}
    if away:
        body_out.update(status="error", code="broker_unavailable",
                        message="the broker did not acknowledge every event; send the batch again")  # fmt: skip
        response = _json(body_out, 503)
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    return _json(body_out, 202)


# ----------------------------------------------------------------------------- webhooks


def _secret_matches(config_secret: bytes | None, given: str) -> bool:
    """Digests compared, so the time taken says nothing of the secret, its length included."""
    offered = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    expected = hashlib.sha256(config_secret if config_secret is not None else b"\x00").digest()
    return hmac.compare_digest(offered, expected) and config_secret is not None


async def _dead_letter(request: web.Request, source: str, error: dict[str, Any], raw: bytes) -> bool:
    """The raw body of a payload that could not be mapped, on the dead-letter topic; False if the broker is away."""
    config = request.app[CONFIG]
    letter = DeadLetter.of(f"http:/v1/hooks/{source}", -1, -1, error, raw)
    if PRODUCER not in request.app:
        return False
    try:
        (failed,) = await request.app[PRODUCER].send_all(config.dlq_topic, [letter.model_dump_json().encode()])
    except IdstreamError:  # the producer cannot start: the broker is away
        return False
    if failed is None:
        DEAD_LETTERS.labels(config.dlq_topic, str(error.get("code", "error"))).inc()
    return failed is None


async def hook_endpoint(request: web.Request) -> web.Response:
    """A vendor's webhook: authenticated by the source's secret, mapped to touch events, produced."""
    config = request.app[CONFIG]
    source, secret = request.match_info["source"], request.match_info["secret"]
    connector = CONNECTORS.get(source)
    if not _secret_matches(config.hook_secrets.get(source), secret) or connector is None:
        return _error(404, "no_such_endpoint", "Not Found")  # the same answer as any unknown path
    if PRODUCER not in request.app:
        return _error(503, "ingest_unavailable", "this server has no broker configured to write touch events to")
    try:
        raw = await request.read()
    except web.RequestPayloadError:
        return _error(400, "invalid_body", "the request body could not be read as its headers describe it")
    hook = HookRequest(
        source=source,
        method=request.method,
        content_type=request.content_type,
        body=raw,
        query=dict(request.query),
        received_at=datetime.now(UTC),
        options=config.hook_options(source),
    )
    try:
        produced = connector(hook)
        mapped_events = await produced if inspect.isawaitable(produced) else produced
    except TransientError as exc:  # the vendor's API, read for details, is away: kept to replay, and a 503
        log.warning("hook %s: %s", source, exc.code)
        await _dead_letter(request, source, {**exc.to_dict(), "source": source}, raw + _query_note(request))
        response = _error(503, exc.code, exc.message)
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    except Exception as exc:
        failure = exc if isinstance(exc, MappingError) else MappingError(
            f"the payload could not be read ({type(exc).__name__})")  # fmt: skip
        error = {**failure.to_dict(), "source": source}
        kept = await _dead_letter(request, source, error, raw + _query_note(request))
        response = _error(400, failure.code, failure.message)
        if not kept:
            response = _error(503, "broker_unavailable", f"{failure.message}; and the dead-letter topic is unavailable")
            response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    if mapped_events is None:  # the vendor's test request: nothing to land
        return _json({"status": "ok", "events": 0})
    now = datetime.now(UTC)
    skew = timedelta(seconds=config.max_future_skew) if config.max_future_skew is not None else None
    accepted: list[tuple[int, Touch, bytes]] = []
    for index, event in enumerate(mapped_events):
        decoded = _decoded(event, now, skew, config.policy)
        if isinstance(decoded, IdstreamError):  # our mapping produced what the decoder refuses: the vendor's data
            error = {**decoded.to_dict(), "source": source}
            kept = await _dead_letter(request, source, error, raw + _query_note(request))
            status = 400 if kept else 503
            return _error(status, "unmappable_payload", f"the payload maps to an invalid event: {decoded.message}")
        accepted.append((index, decoded, orjson.dumps(event)))
    errors, _ = await _produce(request, accepted)
    if errors:
        response = _error(503, "broker_unavailable", "the broker did not acknowledge the events; send it again")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    return _json({"status": "ok", "events": len(accepted), "event_ids": [t.event_id for _, t, _ in accepted]})


def _query_note(request: web.Request) -> bytes:
    """A GET webhook's parameters are its payload: kept with the raw body in a dead letter."""
    if not request.query_string:
        return b""
    return b"\n?" + request.query_string.encode("utf-8", "surrogateescape")


def add_ingest_routes(app: web.Application, producer: Producer | None) -> None:
    """Register the ingest routes; ``producer``: None when no broker is configured (they answer 503)."""
    if producer is not None:
        app[PRODUCER] = producer

        async def close(app: web.Application) -> None:
            await producer.close()

        app.on_cleanup.append(close)
    app.router.add_post("/v1/touches", touches_endpoint)
    app.router.add_route("POST", "/v1/hooks/{source}/{secret}", hook_endpoint)
    app.router.add_route("GET", "/v1/hooks/{source}/{secret}", hook_endpoint)
