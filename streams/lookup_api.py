"""The lookup HTTP API: who is this caller? Reads the Redis identity graph directly.

    GET  /v1/lookup?kind=phone&value=8%20(916)%20123-45-67[&view=card|full]
    POST /v1/lookup/batch  {"identifiers": [{"kind": ..., "value": ...}, ...]}   (up to 1,000)
    GET  /v1/profiles/{profile_id}[?view=full|card]     (a retired id answers with its survivor)
    GET  /v1/explain?profile_id=...  or  ?kind=..&value=..[&other_kind=..&other_value=..]
                                                         (the evidence: why one person, or why not)
    POST /v1/preview  [touch event, ...]                 (up to 1,000: what they would do; a dry run, nothing
                                                         is written)
    GET  /v1/openapi.json                                (this description, from schemas/api.py)
    GET  /healthz, /readyz (Redis answers), /metrics     (no token: probes and Prometheus; no personal data)

Every answer is described by the models in :mod:`schemas.api` (published as
``schemas/json/lookup-api.openapi.json``). Raw values are normalized exactly as in the stream. A lookup
answers ``found`` (one person), ``ambiguous`` (several persons claim the identifier, e.g. an office
switchboard: ``candidates`` lists the first :data:`~schemas.api.MAX_CANDIDATES` of them, most touches
first, ``candidates_total`` counts them all, and no single profile is claimed), ``not_found`` (HTTP 404)
or ``invalid`` (HTTP 400 for a single lookup, an item status in a batch).

Every endpoint but the probes and ``/metrics`` needs ``Authorization: Bearer <token>`` with a token from
``IDSTREAM_API_TOKENS``; without configured tokens the server runs open, only on loopback, and answers
only requests addressed to a loopback name (``Host: localhost``, ``127.x.x.x`` or ``[::1]``, any port):
a web page whose name an attacker rebinds to 127.0.0.1 gets 421, not profiles. A POST's body must be
``Content-Type: application/json`` (415 otherwise), so no page can send one without a CORS preflight.
Nothing a client sends reaches Redis as anything but a script argument, and nothing it sends can
end the server: every failure becomes a JSON error with a message that says what is wrong.
Every Redis error is mapped by :mod:`streams.redis_errors`: one that can pass (a lost connection, a
timeout, a busy script, a paused or loading server) answers 503 ``store_unavailable``. Redis calls wait
at most ``ApiConfig.redis_timeout`` seconds, for the server or for one of the pool's connections.
Access logs are off: queries carry phone numbers and e-mails.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from identity import (
    ApplyResult,
    ConfigurationError,
    Identifier,
    IdstreamError,
    InvalidInput,
    Normalizer,
    Rejection,
    ResolutionPolicy,
    Touch,
    TransientError,
    UnsupportedEvent,
)
from identity.card import screen_pop, summary
from identity.explain import explain
from identity.graph import DEFAULT_ERASURE_KEY, unsupported
from schemas import InvalidMessage, decode_touch
from schemas.api import MAX_CANDIDATES, MAX_PREVIEW, MAX_VALUE, BatchLookupRequest, openapi
from schemas.errors import field_path
from schemas.export import API_VERSION
from sinks.warehouse import connect as connect_warehouse
from sinks.warehouse.report import ReportSettings, parse_day, render
from streams.console import ConsoleOptions, add_console_routes
from streams.observe import LOOKUP_REQUESTS, LOOKUP_SECONDS, metrics_response
from streams.reader import AsyncReader, Ranked
from streams.redis_errors import StoreError, async_client, mapped, sync_client
from streams.redis_store import Found, Preview, RedisIdentityStore, Refused

__all__ = ["ApiConfig", "check_exposure", "create_lookup_app"]

log = logging.getLogger("idstream.api")

#: Largest request body: a full batch of long values fits with room to spare (touch events: see ingest_api).
MAX_BODY = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiConfig:
    redis_url: str
    policy: ResolutionPolicy
    normalizer: Normalizer
    prefix: str = "idstream"
    tokens: tuple[bytes, ...] = ()
    warehouse_url: str | None = None
    reports: ReportSettings = field(default_factory=ReportSettings)
    #: Seconds a Redis call may take, and a lookup may wait for a free connection, before the API answers 503.
    redis_timeout: float = 3.0
    #: Redis connections of the process (each of the async pool and the explanations' sync pool): more
    #: concurrent lookups queue for one instead of failing.
    redis_connections: int = 64
    #: What the workers are configured with (``IDSTREAM_ERASURE_KEY``, ``IDSTREAM_DEDUP_DAYS``,
    #: ``IDSTREAM_MAX_FUTURE_SKEW``; None: no limit): a preview must meet erasures, applied event ids and
    #: future-dated events as the workers do.
    erasure_key: bytes = DEFAULT_ERASURE_KEY
    dedup_days: int = 14
    max_future_skew: float | None = 86_400.0
    #: Writing (``/v1/touches``, ``/v1/hooks``): the broker (None: they answer 503), the topics, the ingest tokens
    #: (``IDSTREAM_INGEST_TOKENS``), each webhook source's secret and the generic forms' field mappings.
    kafka: str | None = None
    touch_topics: tuple[str, ...] = ("touches.site", "touches.calls", "touches.forms", "touches.crm")
    dlq_topic: str = "touches.dlq"
    ingest_tokens: tuple[bytes, ...] = ()
    hook_secrets: Mapping[str, bytes] = field(default_factory=dict)
    hook_forms: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Seconds the broker may take to acknowledge a batch before the API answers 503.
    produce_timeout: float = 10.0
    #: The zone of vendors' local times (a call tracker's "2026-11-02 10:15:00"): ``IDSTREAM_HOOK_TIMEZONE``.
    hook_timezone: str = "Europe/Moscow"
    #: The amoCRM account whose deal webhooks are read for their contacts (``IDSTREAM_AMOCRM_URL``, ``_TOKEN``).
    amocrm_url: str | None = None
    amocrm_token: str | None = field(default=None, repr=False)
    #: The Bitrix24 portal's incoming webhook (it reads deals and contacts) and its outgoing webhook's token.
    bitrix24_url: str | None = field(default=None, repr=False)
    bitrix24_app_token: str | None = field(default=None, repr=False)
    #: The web console's view of the deployment: consumer groups, output topics, the workers' /metrics.
    console: ConsoleOptions = field(default_factory=ConsoleOptions)

    def hook_options(self, source: str) -> dict[str, Any]:
        """The operator's configuration a webhook connector is given."""
        options: dict[str, Any] = {"timezone": self.hook_timezone}
        if source == "form":
            options["forms"] = self.hook_forms
        if source == "amocrm" and self.amocrm_url and self.amocrm_token:
            from streams.connectors.amocrm import AmoClient  # noqa: PLC0415 - connectors import this module

            options["amocrm"] = AmoClient(self.amocrm_url, self.amocrm_token)
        if source == "bitrix24" and self.bitrix24_url:
            from streams.connectors.bitrix24 import BitrixClient  # noqa: PLC0415

            options["bitrix24"] = BitrixClient(self.bitrix24_url, self.bitrix24_app_token)
        return options


READER: web.AppKey[AsyncReader] = web.AppKey("reader", AsyncReader)
CONFIG: web.AppKey[ApiConfig] = web.AppKey("config", ApiConfig)
STORE: web.AppKey[RedisIdentityStore] = web.AppKey("store", RedisIdentityStore)
WAREHOUSE: web.AppKey[Any] = web.AppKey("warehouse")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"status": "error", "code": code, "message": message}, status)


# ----------------------------------------------------------------------------- middlewares


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's own: 404 route, 405 method, 413 body too large ...
        if exc.content_type == "application/json":
            raise
        code = {404: "no_such_endpoint", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http")
        response = _error(exc.status, code, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TransientError as exc:
        return _error(503, "store_unavailable", exc.message)
    except StoreError:  # not the client's doing, and no retry fixes it: the operator's, with the reply logged
        log.exception("redis refused answering %s %s", request.method, request.path)
        return _error(500, "store_error", "the identity store refused the operation; it is logged")
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return _error(500, "internal_error", "the server failed to answer; it is logged")


@web.middleware
async def _unread_body_closes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Close after answering when a body is left unread (a GET's, a refused one): aiohttp would read it to keep
    the connection alive, and one that does not decode (a broken gzip) dropped the connection unannounced."""
    response = await handler(request)
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


#: Answered without a token: the probes, and Prometheus counts and timings (no identifier ever is a label).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def _timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every answer by route (its pattern, never the raw path: ids stay out of the labels)."""
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "other"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if endpoint != "/metrics":
            LOOKUP_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
            LOOKUP_REQUESTS.labels(endpoint, str(status)).inc()


def _scope(path: str) -> str:
    """``open`` (probes, metrics), ``hook`` (a webhook: its secret is in its path), ``write`` or ``read``."""
    if path in OPEN_PATHS:
        return "open"
    if path.startswith("/v1/hooks/"):
        return "hook"
    if path == "/console" or path.startswith("/console/"):
        return "console"  # its own sign-in: a token kept in an HTTP-only cookie, and CSRF-checked forms
    if path == "/v1/touches":
        return "write"
    return "read"


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reading takes a lookup token, writing an ingest token: neither opens the other's endpoints. Without any
    lookup token the API is open on loopback, writing included unless ingest tokens are set."""
    config = request.app[CONFIG]
    scope = _scope(request.path)
    if scope in ("open", "hook", "console"):
        return await handler(request)
    if scope == "write":
        tokens = config.ingest_tokens
        if not tokens and config.tokens:
            return _error(403, "writing_disabled", "writing touch events needs IDSTREAM_INGEST_TOKENS on the server")
    else:
        tokens = config.tokens
    if not tokens:
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    offered = given.strip().encode("utf-8", "surrogateescape")  # header bytes that are not UTF-8, as sent
    # compare with every token, always: the time taken says nothing about which one nearly matched
    matched = [hmac.compare_digest(offered, token) for token in tokens]
    if scheme.lower() != "bearer" or not any(matched):
        kind = "an ingest" if scope == "write" else "a lookup"
        response = _error(401, "unauthorized", f"{kind} token is required: 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="idstream"'
        return response
    return await handler(request)


def _loopback_host_header(header: str | None) -> bool:
    """Does a ``Host`` header name a loopback address literally (``localhost``, ``127.x.x.x``, ``[::1]``, with
    any port)? Never resolved: a rebinding attacker's own name resolves to 127.0.0.1, which is the attack."""
    if not header:
        return False
    if header.startswith("["):  # [v6] or [v6]:port
        end = header.find("]")
        if end < 0:
            return False
        host, port = header[1:end], header[end + 1 :]
        if port and not port.startswith(":"):
            return False
        port = port[1:]
    elif header.count(":") > 1:  # a bare IPv6 address is not a valid Host
        return False
    else:
        host, _, port = header.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    return host.lower() == "localhost" or _loopback_address(host)


@web.middleware
async def _addressed_to_loopback(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Open (no tokens), the API answers only requests addressed to loopback: DNS rebinding makes a web page's
    own name point at 127.0.0.1, and the browser then sends that name as ``Host``."""
    if request.app[CONFIG].tokens:
        return await handler(request)
    header = request.headers.get("Host")
    if not _loopback_host_header(header):
        shown = repr(header[:64]) if header else "none"
        return _error(
            421,
            "host_not_allowed",
            f"without IDSTREAM_API_TOKENS this server answers only requests addressed to localhost, 127.0.0.1 or "
            f"[::1] (Host: {shown}); set tokens to serve it under another name",
        )
    return await handler(request)


#: Methods whose body a handler reads.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
#: Bodies ``/v1/touches`` takes: a JSON array, or JSON lines.
_WRITE_TYPES = ("application/json", "application/x-ndjson", "application/jsonl", "application/json-seq")


@web.middleware
async def _json_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body must say it is JSON: a web page can send text/plain (or no type) cross-origin without asking,
    never application/json."""
    scope = _scope(request.path)
    allowed = _WRITE_TYPES if scope == "write" else ("application/json",)
    if (
        request.method in _WITH_BODY
        and scope not in ("hook", "console")  # a vendor's webhook comes as it comes; the console posts forms
        and request.body_exists  # an empty POST is answered by its handler (a 400 that says what is missing)
        and request.match_info.http_exception is None  # no such route or method: its own 404 or 405
        and request.content_type not in allowed  # aiohttp lowercases it, without parameters
    ):
        given = request.headers.get("Content-Type", "")
        shown = repr(given[:64]) if given else "none"
        wanted = " or ".join(allowed)
        return _error(415, "unsupported_media_type", f"the body must be Content-Type: {wanted}, not {shown}")
    return await handler(request)


# ----------------------------------------------------------------------------- answers


def _view(request: web.Request, default: str) -> str:
    view = request.query.get("view", default)
    if view not in ("card", "full"):
        raise _BadRequest("invalid_view", f"view must be 'card' or 'full', not {view[:40]!r}")
    return view


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _shown(profile: dict[str, Any], view: str) -> dict[str, Any]:
    return screen_pop(profile) if view == "card" else profile


def _answer(
    kind: str,
    value: str,
    normalized: Identifier | Rejection,
    found: Found | None,
    *,
    view: str,
    ranked: dict[tuple[str, ...], Ranked],
) -> dict[str, Any]:
    if isinstance(normalized, Rejection):
        error = {"code": normalized.reason, "message": normalized.message}
        return {"status": "invalid", "kind": kind, "value": value, "error": error}
    if found is None:
        return {"status": "not_found", "kind": kind, "value": value}
    if found.ambiguous:
        listed = ranked.get(found.candidates, Ranked(0, []))
        return {
            "status": "ambiguous",
            "kind": kind,
            "value": value,
            "candidates": [summary(person.profile) for person in listed.first],
            # past the index's cap only the first claimants are ranked here; the index counts them all
            "candidates_total": listed.total if found.total <= len(found.candidates) else found.total,
        }
    return {
        "status": "found",
        "kind": kind,
        "value": value,
        "profile_id": found.profile_id,
        "profile": _shown(found.profile, view),
    }


def _normalize(normalizer: Normalizer, kind: str, value: str) -> Identifier | Rejection:
    if len(value) > MAX_VALUE:
        return Rejection(kind, value[:64], "too_long", f"{kind} value is longer than {MAX_VALUE} characters")
    return normalizer.normalize(kind, value)


async def _resolve(request: web.Request, queries: Sequence[tuple[str, str]], view: str) -> list[dict[str, Any]]:
    config, reader = request.app[CONFIG], request.app[READER]
    normalized = [_normalize(config.normalizer, kind, value) for kind, value in queries]
    valid = [n for n in normalized if isinstance(n, Identifier)]
    found = iter(await reader.identifiers(valid))
    results = [next(found) if isinstance(n, Identifier) else None for n in normalized]
    # the candidates of each ambiguous identifier, ranked in Redis: only the first MAX_CANDIDATES come back whole
    groups = list(dict.fromkeys(f.candidates for f in results if f and f.ambiguous and f.candidates))
    ranked = dict(zip(groups, await reader.ranked(groups, MAX_CANDIDATES), strict=True))
    return [
        _answer(kind, value, n, f, view=view, ranked=ranked)
        for (kind, value), n, f in zip(queries, normalized, results, strict=True)
    ]


async def lookup(request: web.Request) -> web.Response:
    kind, value = request.query.get("kind"), request.query.get("value")
    if not kind or value is None:
        return _error(400, "missing_parameter", "query parameters 'kind' and 'value' are both required")
    try:
        view = _view(request, "card")
    except _BadRequest as exc:
        return _error(400, exc.code, exc.message)
    (result,) = await _resolve(request, [(kind, value)], view)
    status = {"not_found": 404, "invalid": 400}.get(result["status"], 200)
    return _json(result, status)


async def lookup_batch(request: web.Request) -> web.Response:
    try:
        view = _view(request, "card")
    except _BadRequest as exc:
        return _error(400, exc.code, exc.message)
    try:
        body = await request.read()
    except web.RequestPayloadError:  # e.g. a body that is not the gzip its Content-Encoding says
        # the rest cannot be read either: _unread_body_closes ends the connection after this answer
        return _error(400, "invalid_body", "the request body could not be read as its headers describe it")
    try:
        parsed = BatchLookupRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        return _error(400, "invalid_request", f'expected {{"identifiers": [{{"kind", "value"}}, ...]}}: {problems}')
    results = await _resolve(request, [(q.kind, q.value) for q in parsed.identifiers], view)
    return _json({"results": results})


async def profile(request: web.Request) -> web.Response:
    requested = request.match_info["profile_id"]
    try:
        view = _view(request, "full")
    except _BadRequest as exc:
        return _error(400, exc.code, exc.message)
    if len(requested) > 64:
        return _error(400, "invalid_profile_id", "a profile id is at most 64 characters")
    (found,) = await request.app[READER].profiles([requested])
    if found is None:
        return _error(404, "not_found", "no profile has this id, and no retired id redirects from it")
    body = {
        "profile_id": found.profile_id,
        "requested_id": requested,
        "retired": found.profile_id != requested,
        "profile": _shown(found.profile, view),
    }
    return _json(body)


async def explain_endpoint(request: web.Request) -> web.Response:
    q = request.query
    store: RedisIdentityStore = request.app[STORE]
    asked: dict[str, Any] = {}
    if q.get("profile_id"):
        if len(q["profile_id"]) > 64:
            return _error(400, "invalid_profile_id", "a profile id is at most 64 characters")
        asked["profile_id"] = q["profile_id"]
    else:
        for name, kind, value in (("a", "kind", "value"), ("b", "other_kind", "other_value")):
            if q.get(kind) is None and q.get(value) is None and name == "b":
                continue
            if not q.get(kind) or q.get(value) is None:
                return _error(400, "missing_parameter", f"give profile_id, or '{kind}' and '{value}' together")
            ident = store.normalizer.normalize(q[kind], q[value])
            if isinstance(ident, Rejection):
                return _error(400, ident.reason, ident.message)
            asked[name] = ident

    def explained() -> dict[str, Any] | None:
        with mapped("explain"):
            return explain(store, store.policy, **asked)

    answer = await asyncio.get_running_loop().run_in_executor(None, explained)
    if answer is None:
        return _error(404, "not_found", "no person holds this identifier or profile id")
    return _json(answer)


def _identifier(ident: Identifier) -> dict[str, str]:
    return {"kind": ident.kind, "value": ident.value}


def _decoded(item: Any, now: datetime, skew: timedelta | None, policy: ResolutionPolicy) -> Touch | IdstreamError:
    """One item of a preview decoded as the worker decodes a message (``Processor._decode``): the wire decoder,
    the applied types, and no event dated past the worker's clock skew; or why it would be a dead letter."""
    try:
        touch = decode_touch(orjson.dumps(item)).to_touch()
        if not policy.applies(touch.type):
            raise UnsupportedEvent(unsupported(touch))
        if skew is not None and touch.occurred_at > now + skew:
            raise InvalidMessage.single(
                "occurred_at",
                "in_future",
                f"occurred_at {touch.occurred_at.isoformat()} is more than "
                f"{skew} ahead of the worker's clock (IDSTREAM_MAX_FUTURE_SKEW)",
            )
    except InvalidInput as exc:  # InvalidMessage, UnsupportedEvent, and a Touch the core refuses
        return exc
    return touch


def _error_body(error: dict[str, Any]) -> dict[str, Any]:
    body = {"code": str(error.get("code", "error")), "message": str(error.get("message", ""))}
    if "errors" in error:
        body["errors"] = error["errors"]
    return body


def _event_id_of(item: Any) -> str | None:
    """The event id of an item that did not decode, when it names a plausible one."""
    eid = item.get("event_id") if isinstance(item, dict) else None
    return eid if isinstance(eid, str) and 0 < len(eid) <= 128 else None


def _previewed(index: int, result: ApplyResult | Refused) -> dict[str, Any]:
    if isinstance(result, Refused):
        return _invalid(index, result.event_id, result.error)
    return {
        "index": index,
        "event_id": result.event_id,
        "status": result.status,
        "profile_id": result.profile_id,
        "changes": [
            {
                "kind": c.kind,
                "profile_id": c.profile_id,
                "merged_from": list(c.merged_from),
                "split_from": list(c.split_from),
                "moved": [_identifier(i) for i in c.moved],
            }
            for c in result.changes
        ],
        "conflicts": [
            {
                "reason": c.reason,
                "kind": c.kind,
                "limit": c.limit,
                "profile_id": c.profile_id,
                "other_profile_id": c.other_profile_id,
                "identifier": _identifier(c.identifier),
            }
            for c in result.conflicts
        ],
        "shared": [_identifier(i) for i in result.shared],
        "rejected": [r.to_dict() for r in result.rejected],
        "reused_by": result.reused_by,
        "error": None,
    }


def _invalid(index: int, event_id: str | None, error: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": index,
        "event_id": event_id,
        "status": "invalid",
        "profile_id": None,
        "changes": [],
        "conflicts": [],
        "shared": [],
        "rejected": [],
        "reused_by": None,
        "error": _error_body(error),
    }


def _summary(events: list[dict[str, Any]], contested: int) -> dict[str, Any]:
    status = [e["status"] for e in events]
    changes = [c for e in events for c in e["changes"]]
    shared = {(i["kind"], i["value"]) for e in events for i in e["shared"]}
    return {
        "events": len(events),
        "applied": status.count("applied") + status.count("reordered"),
        "reordered": status.count("reordered"),
        "duplicates": status.count("duplicate"),
        "unresolved": status.count("unresolved"),
        "invalid": status.count("invalid"),
        "persons_created": sum(c["kind"] == "created" for c in changes),
        "persons_merged": sum(len(c["merged_from"]) for c in changes if c["kind"] == "merged"),
        "splits": sum(c["kind"] == "split" for c in changes),
        "persons_erased": sum(c["kind"] == "erased" for c in changes),
        "conflicts": sum(len(e["conflicts"]) for e in events),
        "newly_shared": len(shared),
        "newly_contested": contested,
    }


async def preview_endpoint(request: web.Request) -> web.Response:
    """A dry run: what a batch of touch events would do, resolved by the worker's engine, writing nothing."""
    config, store = request.app[CONFIG], request.app[STORE]
    try:
        body = await request.read()
    except web.RequestPayloadError:
        return _error(400, "invalid_body", "the request body could not be read as its headers describe it")
    if not body.strip():
        return _error(400, "invalid_request", "the body is empty: expected a JSON array of touch events")
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(items, list):
        return _error(400, "invalid_request", f"expected a JSON array of touch events, not {_json_type(items)}")
    if not 1 <= len(items) <= MAX_PREVIEW:
        return _error(400, "invalid_request", f"give 1 to {MAX_PREVIEW} touch events; the array has {len(items)}")
    skew = timedelta(seconds=config.max_future_skew) if config.max_future_skew is not None else None
    now = datetime.now(UTC)

    def previewed() -> tuple[list[Touch | IdstreamError], Preview]:  # decoding and resolving: off the event loop
        decoded = [_decoded(item, now, skew, config.policy) for item in items]
        with mapped("preview"):
            return decoded, store.preview([t for t in decoded if isinstance(t, Touch)])

    try:
        decoded, found = await asyncio.get_running_loop().run_in_executor(None, previewed)
    except IdstreamError:
        raise  # transient: 503; the store's own: a logged 500 (errors name no identifier)
    except Exception as exc:  # a bug: logged without its message, which may carry an identifier
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error("preview failed: %s (message withheld: it may hold personal data)\n%s", type(exc).__name__, frames)
        return _error(500, "internal_error", "the server failed to answer; it is logged")
    results = iter(found.results)
    events = [
        _previewed(i, next(results)) if isinstance(d, Touch) else _invalid(i, _event_id_of(items[i]), d.to_dict())
        for i, d in enumerate(decoded)
    ]
    contested = [_identifier(i) for i in found.contested]
    return _json(
        {"dry_run": True, "events": events, "contested": contested, "summary": _summary(events, len(contested))}
    )


def _json_type(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


async def channel_report_endpoint(request: web.Request) -> web.Response:
    """The channel report, computed from the warehouse off the event loop."""
    config, engine = request.app[CONFIG], request.app.get(WAREHOUSE)
    if engine is None:
        return _error(503, "warehouse_unavailable", "no warehouse is configured (IDSTREAM_WAREHOUSE_URL)")
    q = request.query
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, "invalid_format", f"format must be 'json' or 'csv', not {fmt[:40]!r}")
    try:
        start, end = parse_day(q.get("from"), "from"), parse_day(q.get("to"), "to")
        loop = asyncio.get_running_loop()
        report = await loop.run_in_executor(None, lambda: config.reports.report(engine, q.get("model"), start, end))
    except InvalidInput as exc:
        return _error(400, exc.code, exc.message)
    except ConfigurationError as exc:  # e.g. a currency without a rate: the operator's to fix, said plainly
        return _error(500, exc.code, exc.message)
    if fmt == "csv":
        return web.Response(text=render(report, "csv"), content_type="text/csv")
    return _json(report.to_dict())


async def call_report_endpoint(request: web.Request) -> web.Response:
    """The call report (answered, missed, returned) from the warehouse, off the event loop."""
    from sinks.warehouse.calls import call_report  # noqa: PLC0415 - only this endpoint needs it

    config, engine = request.app[CONFIG], request.app.get(WAREHOUSE)
    if engine is None:
        return _error(503, "warehouse_unavailable", "no warehouse is configured (IDSTREAM_WAREHOUSE_URL)")
    q = request.query
    try:
        start, end = parse_day(q.get("from"), "from"), parse_day(q.get("to"), "to")
        within_text = q.get("within", "30")
        if not (within_text.isdecimal() and within_text.isascii() and 1 <= int(within_text) <= 10_080):
            raise InvalidInput(f"within must be 1 to 10080 minutes, not {within_text[:20]!r}")
        tz = config.reports.tz
        report = await asyncio.get_running_loop().run_in_executor(
            None, lambda: call_report(engine, start=start, end=end, tz=tz, within=int(within_text))
        )
    except InvalidInput as exc:
        return _error(400, exc.code, exc.message)
    return _json(report.to_dict())


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        await request.app[READER].ping()
    except IdstreamError as exc:  # mapped: a transient error, or one the operator must fix; neither is ready
        cause = exc.__cause__ or exc
        return _json({"status": "not_ready", "reason": f"redis unavailable: {type(cause).__name__}"}, 503)
    return _json({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return metrics_response()


async def openapi_json(request: web.Request) -> web.Response:
    return _json(openapi(API_VERSION))


# ----------------------------------------------------------------------------- the app


def create_lookup_app(config: ApiConfig) -> web.Application:
    """The API as an aiohttp application; it opens its Redis connection pool on startup."""
    middlewares = [_unread_body_closes, _timed, _errors, _addressed_to_loopback, _auth, _json_bodies]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[CONFIG] = config

    async def connect(app: web.Application) -> None:
        # a bounded pool that waits for a free connection (a burst of lookups queues instead of failing), and
        # a short timeout: a lookup answers 503 instead of waiting behind a stalled server
        timeout, connections = config.redis_timeout, config.redis_connections
        client = async_client(config.redis_url, timeout=timeout, max_connections=connections)
        app[READER] = AsyncReader(client, config.policy, config.normalizer, config.prefix)
        # explanations read a whole evidence group in a few round trips: a sync store, off the loop
        sync = sync_client(config.redis_url, timeout=timeout, max_connections=connections)
        app[STORE] = RedisIdentityStore(
            sync, config.policy, config.normalizer, config.prefix, config.erasure_key, dedup_days=config.dedup_days
        )
        if config.warehouse_url:
            app[WAREHOUSE] = connect_warehouse(config.warehouse_url)  # connects on first use

    async def disconnect(app: web.Application) -> None:
        if READER in app:  # a client given its pool leaves the pool open: close both
            await app[READER].client.aclose()
            await app[READER].client.connection_pool.disconnect()
        if STORE in app:
            app[STORE].client.close()
            app[STORE].client.connection_pool.disconnect()
        if WAREHOUSE in app:
            app[WAREHOUSE].dispose()

    app.on_startup.append(connect)
    app.on_cleanup.append(disconnect)
    app.router.add_get("/v1/lookup", lookup)
    app.router.add_post("/v1/lookup/batch", lookup_batch)
    app.router.add_get("/v1/profiles/{profile_id}", profile)
    app.router.add_get("/v1/explain", explain_endpoint)
    app.router.add_post("/v1/preview", preview_endpoint)
    app.router.add_get("/v1/reports/channels", channel_report_endpoint)
    app.router.add_get("/v1/reports/calls", call_report_endpoint)
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    from streams.broker import Producer  # noqa: PLC0415 - the ingest routes import this module's helpers
    from streams.ingest_api import add_ingest_routes  # noqa: PLC0415

    add_ingest_routes(app, Producer(config.kafka, config.produce_timeout) if config.kafka else None)
    add_console_routes(app, config.console)
    return app


def _loopback_address(text: str) -> bool:
    """Is ``text`` an IP address literal of loopback (127.0.0.0/8, ::1, ::ffff:127.x.x.x)?"""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _is_loopback(host: str) -> bool:
    """Does serving on ``host`` listen on loopback only? A loopback address literal, or the name localhost when
    every address it resolves to is loopback. Any other name is refused, whatever it resolves to now: what a
    name means is up to DNS (``127.0.0.1.nip.io``), and one that does not resolve cannot be checked."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if _loopback_address(name):
        return True
    if name.lower() != "localhost":
        return False
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(_loopback_address(str(info[4][0]).partition("%")[0]) for info in found)


def check_exposure(host: str, tokens: Sequence[bytes]) -> None:
    """Refuse to serve without tokens anywhere but loopback."""
    if not tokens and not _is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the lookup API on {host!r} without tokens: set IDSTREAM_API_TOKENS "
            "(a JSON list of secrets of 16+ characters), or serve on 127.0.0.1, ::1 or localhost"
        )
