"""The lookup HTTP API: who is this caller? Reads the Redis identity graph directly.

    GET  /v1/lookup?kind=phone&value=8%20(916)%20123-45-67[&view=card|full]
    POST /v1/lookup/batch  {"identifiers": [{"kind": ..., "value": ...}, ...]}   (up to 1,000)
    GET  /v1/profiles/{profile_id}[?view=full|card]     (a retired id answers with its survivor)
    GET  /v1/explain?profile_id=...  or  ?kind=..&value=..[&other_kind=..&other_value=..]
                                                         (the evidence: why one person, or why not)
    GET  /v1/openapi.json                                (this description, from schemas/api.py)
    GET  /healthz, /readyz (Redis answers), /metrics     (no token: probes and Prometheus; no personal data)

Every answer is described by the models in :mod:`schemas.api` (published as ``schemas/openapi.json``).
Raw values are normalized exactly as in the stream. A lookup answers ``found`` (one person),
``ambiguous`` (several persons claim the identifier, e.g. an office switchboard: ``candidates``
lists them and no single profile is claimed), ``not_found`` (HTTP 404) or ``invalid`` (HTTP 400
for a single lookup, an item status in a batch).

Every endpoint but the probes and ``/metrics`` needs ``Authorization: Bearer <token>`` with a token from
``IDSTREAM_API_TOKENS``; without configured tokens the server runs open, and only on loopback.
Nothing a client sends reaches Redis as anything but a script argument, and nothing it sends can
end the server: every failure becomes a JSON error with a message that says what is wrong.
Access logs are off: queries carry phone numbers and e-mails.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError

from identity import (
    ConfigurationError,
    Identifier,
    InvalidInput,
    Normalizer,
    Rejection,
    ResolutionPolicy,
    TransientError,
)
from identity.card import screen_pop, summary
from identity.explain import explain
from schemas.api import MAX_VALUE, BatchLookupRequest, openapi
from schemas.errors import field_path
from schemas.export import API_VERSION
from sinks.warehouse import connect as connect_warehouse
from sinks.warehouse.report import ReportSettings, parse_day, render
from streams.observe import LOOKUP_REQUESTS, LOOKUP_SECONDS, metrics_response
from streams.reader import AsyncReader
from streams.redis_store import Found, RedisIdentityStore

__all__ = ["ApiConfig", "check_exposure", "create_lookup_app"]

log = logging.getLogger("idstream.api")

#: Largest request body: a full batch of long values fits with room to spare.
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


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = request.app[CONFIG].tokens
    if not tokens or request.path in OPEN_PATHS:
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    offered = given.strip().encode("utf-8", "surrogateescape")  # header bytes that are not UTF-8, as sent
    # compare with every token, always: the time taken says nothing about which one nearly matched
    matched = [hmac.compare_digest(offered, token) for token in tokens]
    if scheme.lower() != "bearer" or not any(matched):
        response = _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="idstream"'
        return response
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
    others: dict[str, Any],
) -> dict[str, Any]:
    if isinstance(normalized, Rejection):
        error = {"code": normalized.reason, "message": normalized.message}
        return {"status": "invalid", "kind": kind, "value": value, "error": error}
    if found is None:
        return {"status": "not_found", "kind": kind, "value": value}
    if found.ambiguous:
        candidates = [summary(others[pid]) for pid in found.candidates if pid in others]
        return {"status": "ambiguous", "kind": kind, "value": value, "candidates": candidates}
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
    contested = sorted({pid for f in results if f and f.ambiguous for pid in f.candidates})
    others: dict[str, Any] = {}
    if contested:
        for pid, person in zip(contested, await reader.profiles(contested), strict=True):
            if person is not None:
                others[pid] = person.profile
    return [
        _answer(kind, value, n, f, view=view, others=others)
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
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, lambda: explain(store, store.policy, **asked))
    if answer is None:
        return _error(404, "not_found", "no person holds this identifier or profile id")
    return _json(answer)


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


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        await request.app[READER].client.ping()
    except (redis.RedisError, OSError) as exc:
        return _json({"status": "not_ready", "reason": f"redis unavailable: {type(exc).__name__}"}, 503)
    return _json({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return metrics_response()


async def openapi_json(request: web.Request) -> web.Response:
    return _json(openapi(API_VERSION))


# ----------------------------------------------------------------------------- the app


def create_lookup_app(config: ApiConfig) -> web.Application:
    """The API as an aiohttp application; it opens its Redis connection pool on startup."""
    app = web.Application(middlewares=[_unread_body_closes, _timed, _errors, _auth], client_max_size=MAX_BODY)
    app[CONFIG] = config

    async def connect(app: web.Application) -> None:
        client = aioredis.Redis.from_url(config.redis_url)
        app[READER] = AsyncReader(client, config.policy, config.normalizer, config.prefix)
        # explanations read a whole evidence group in a few round trips: a sync store, off the loop
        app[STORE] = RedisIdentityStore(
            redis.Redis.from_url(config.redis_url), config.policy, config.normalizer, config.prefix
        )
        if config.warehouse_url:
            app[WAREHOUSE] = connect_warehouse(config.warehouse_url)  # connects on first use

    async def disconnect(app: web.Application) -> None:
        if READER in app:
            await app[READER].client.aclose()
        if STORE in app:
            app[STORE].client.close()
        if WAREHOUSE in app:
            app[WAREHOUSE].dispose()

    app.on_startup.append(connect)
    app.on_cleanup.append(disconnect)
    app.router.add_get("/v1/lookup", lookup)
    app.router.add_post("/v1/lookup/batch", lookup_batch)
    app.router.add_get("/v1/profiles/{profile_id}", profile)
    app.router.add_get("/v1/explain", explain_endpoint)
    app.router.add_get("/v1/reports/channels", channel_report_endpoint)
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    return app


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def check_exposure(host: str, tokens: Sequence[bytes]) -> None:
    """Refuse to serve without tokens anywhere but loopback."""
    if not tokens and not _is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the lookup API on {host} without tokens: set IDSTREAM_API_TOKENS "
            "(a JSON list of secrets of 16+ characters), or serve on 127.0.0.1"
        )
