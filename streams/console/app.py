"""The web console at ``/console/``: channels, funnel, calls, a person's card, review of conflicts, health.

Server-rendered HTML (Jinja2, autoescaped) over what the API already reads: the warehouse's reports, the Redis
graph through the lookup reader, explanations, and the broker's topics. Charts are drawn in the browser by
Chart.js, served from the package (no CDN: the console works offline); every chart sits beside a table of the same
numbers, which screen readers and CSV users read.

Access is the API's: with ``IDSTREAM_API_TOKENS`` set, a lookup token signs in and is kept in a cookie that is
``HttpOnly``, ``Secure`` and ``SameSite=Strict`` (browsers keep Secure cookies over HTTPS and on 127.0.0.1 /
localhost: serve the console behind HTTPS elsewhere). Corrections (link, unlink) write to the touch topics, so they
take an ingest token, given at sign-in. Without tokens the console is open, on loopback only, like the API. Every
form carries a token tied to the browser's session cookie (CSRF), and every page a strict Content-Security-Policy.
Pages with personal data are never cached, and no page sends a Referer elsewhere (search queries carry phone
numbers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import re
import secrets
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import networkx as nx
import orjson
from aiohttp import ClientSession, ClientTimeout, web
from markupsafe import Markup
from pydantic import ValidationError

from identity import Identifier, InvalidInput, Rejection, TransientError
from identity.attribution import MODELS
from identity.card import screen_pop, summary
from identity.explain import explain
from schemas import TouchEvent
from streams.console.i18n import LANGUAGES, choose, words
from streams.redis_errors import mapped

__all__ = ["ConsoleOptions", "add_console_routes"]

log = logging.getLogger("idstream.console")

PREFIX = "/console"
_NEXT = re.compile(r"/console/[^\x00-\x1f\x7f\\]{0,2000}")
_TOKEN_COOKIE, _WRITE_COOKIE, _SID_COOKIE = "idstream_token", "idstream_write", "idstream_sid"
_LANG_COOKIE, _OPERATOR_COOKIE = "idstream_lang", "idstream_operator"
_STATIC = {
    "chart.umd.min.js": "application/javascript",
    "console.js": "application/javascript",
    "console.css": "text/css",
    "chart.js.LICENSE.md": "text/markdown",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Review: how many of the newest messages of identity.changes are read, per partition.
REVIEW_TAIL = 500
#: Health: seconds between samples of the topics' end offsets, and how many are kept for the rates.
SAMPLE_EVERY, SAMPLES = 15.0, 40


@dataclass(frozen=True)
class ConsoleOptions:
    """What the console reads beyond the API's own configuration."""

    app_id: str = "idstream"
    changes_topic: str = "identity.changes"
    profiles_topic: str = "profiles.updates"
    spend_topic: str = "ad.spend"
    #: The workers' /metrics (``IDSTREAM_WORKER_METRICS_URLS``): applied events, dead letters, blob alerts.
    worker_metrics: tuple[str, ...] = ()


@dataclass
class _Session:
    sid: str
    read: bool
    write: bool
    lang: str
    t: dict[str, str]
    csrf: str
    new_sid: bool = False
    signed_in: bool = False


@dataclass
class _State:
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    sampler: asyncio.Task[None] | None = None
    derived: bytes | None = None
    inflight: dict[str, asyncio.Future[Any]] = field(default_factory=dict)


CONSOLE_STATE: web.AppKey[_State] = web.AppKey("console_state", _State)
CONSOLE_OPTIONS: web.AppKey[ConsoleOptions] = web.AppKey("console_options", ConsoleOptions)
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("streams.console", "templates"),
    autoescape=True,
    undefined=jinja2.ChainableUndefined,  # optional fields of a profile (utm, call, project) render empty
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    if isinstance(value, float) and digits == 0 and value != int(value):
        digits = 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f}".replace(",", "\u202f")


_ENV.filters["num"] = _number


def _source_text(source: Any) -> str:
    """A card's first or last source (system, UTM tags, time) as one short line."""
    if not isinstance(source, dict):
        return str(source) if source else "–"
    tags = [source.get(k) for k in ("utm_source", "utm_medium", "utm_campaign") if source.get(k)]
    text = " / ".join(str(tag) for tag in tags) or str(source.get("system") or "–")
    if tags and source.get("system"):
        text += f" ({source['system']})"
    when = str(source.get("occurred_at") or "")[:10]
    return f"{text} · {when}" if when else text


_ENV.filters["source"] = _source_text


# ----------------------------------------------------------------------------- access


def _api() -> Any:
    from streams import lookup_api  # noqa: PLC0415 - lookup_api builds the app and imports this module

    return lookup_api


def _matches(offered: str | None, tokens: Sequence[bytes]) -> bool:
    if not offered:
        return False
    given = offered.encode("utf-8", "surrogateescape")
    return any([hmac.compare_digest(given, token) for token in tokens])


def _session(request: web.Request) -> _Session:
    config = request.app[_api().CONFIG]
    sid = request.cookies.get(_SID_COOKIE, "")
    new_sid = not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", sid)
    if new_sid:
        sid = secrets.token_urlsafe(32)
    read = not config.tokens or _matches(request.cookies.get(_TOKEN_COOKIE), config.tokens)
    if config.ingest_tokens:
        write = read and _matches(request.cookies.get(_WRITE_COOKIE), config.ingest_tokens)
    else:
        write = read and not config.tokens  # the API's rule: lookup tokens without ingest tokens turn writing off
    lang = choose(request.query.get("lang"), request.cookies.get(_LANG_COOKIE), request.headers.get("Accept-Language"))
    csrf = hmac.new(_secret(request.app), sid.encode(), hashlib.sha256).hexdigest()
    return _Session(sid, read, write, lang, words(lang), csrf, new_sid, bool(config.tokens) and read)


def _secret(app: web.Application) -> bytes:
    """The key of the CSRF tokens: derived from the configured erasure key and tokens, so every replica and a
    restarted server accept the forms of each other; random per process only where nothing is configured."""
    state = app[CONSOLE_STATE]
    if state.derived is None:
        config = app[_api().CONFIG]
        material = b"\0".join([config.erasure_key, *sorted(config.tokens), *sorted(config.ingest_tokens)])
        configured = bool(config.tokens) or config.erasure_key != _default_erasure_key()
        key = hmac.new(material, b"idstream console csrf", hashlib.sha256).digest()
        state.derived = key if configured else state.secret
    return state.derived


def _default_erasure_key() -> bytes:
    from identity.graph import DEFAULT_ERASURE_KEY  # noqa: PLC0415

    return DEFAULT_ERASURE_KEY


def _loopback(request: web.Request) -> bool:
    host = request.headers.get("Host", "")
    return _api()._loopback_host_header(host)  # type: ignore[no-any-return]


def _secure_context(request: web.Request) -> bool:
    """Would a browser keep a Secure cookie from this page? Over HTTPS (or a proxy that says so), or on loopback."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    return request.secure or forwarded or _loopback(request)


def _cookie(response: web.StreamResponse, name: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(name, value, path=PREFIX, httponly=True, secure=True, samesite="Strict", max_age=max_age)


def _finish(request: web.Request, session: _Session, response: web.StreamResponse) -> web.StreamResponse:
    if session.new_sid:
        _cookie(response, _SID_COOKIE, session.sid)
    if request.query.get("lang") in LANGUAGES:
        _cookie(response, _LANG_COOKIE, session.lang, max_age=365 * 86400)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # searched phone numbers never leave in a Referer
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["Content-Language"] = session.lang
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _render(request: web.Request, session: _Session, template: str, status: int = 200, **context: Any) -> web.Response:
    page = _ENV.get_template(template).render(
        t=session.t,
        lang=session.lang,
        other_lang="ru" if session.lang == "en" else "en",
        session=session,
        path=request.path,
        query=request.query_string,
        nav=[
            ("channels", "nav.channels"),
            ("funnel", "nav.funnel"),
            ("calls", "nav.calls"),
            ("persons", "nav.persons"),
            ("review", "nav.review"),
            ("health", "nav.health"),
        ],
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


Page = Callable[[web.Request, _Session], Awaitable[web.StreamResponse]]


def _page(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A console page: signed in (else to the login page), CSRF-checked when it changes something, errors shown."""

    async def run(request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if not session.read:
            target = request.path_qs if request.method == "GET" else f"{PREFIX}/"
            return _finish(request, session, _redirect(f"{PREFIX}/login?{urlencode({'next': target})}"))
        _start_sampler(request.app)
        if request.method == "POST":
            form = await request.post()
            if not _csrf_ok(request, session, form):
                return _finish(
                    request, session, _render(request, session, "error.html", 403, message=session.t["error.csrf"])
                )
        try:
            response = await handler(request, session)
        except TransientError:
            response = _render(request, session, "error.html", 503, message=session.t["error.store"])
        except InvalidInput as exc:
            message = session.t["error.bad_request"].format(message=exc.message)
            response = _render(request, session, "error.html", 400, message=message)
        except Exception as exc:  # a bug or a server away: logged by type only (messages may hold identifiers)
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("console page %s failed: %s (message withheld)\n%s", request.path, type(exc).__name__, frames)
            response = _render(request, session, "error.html", 500, message=session.t["error.internal"])
        return _finish(request, session, response)

    return run


def _csrf_ok(request: web.Request, session: _Session, form: Any) -> bool:
    """A form of this console: same origin, and the session's CSRF token (compared as bytes: any text is safe)."""
    given = str(form.get("csrf", "")).encode("utf-8", "surrogateescape")
    return _same_origin(request) and hmac.compare_digest(given, session.csrf.encode())


def _same_origin(request: web.Request) -> bool:
    """A form posted from this console: not a cross-site fetch (``Sec-Fetch-Site``, which browsers send), and an
    ``Origin``, when one is named, of this host. ``Origin: null`` (a privacy setting) leaves it to the CSRF token."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    # behind a proxy that rewrites Host, the name the browser used is X-Forwarded-Host (which no cross-site form
    # can set: it is not a header a page may send without a preflight)
    named = origin.split("://", 1)[-1]
    return named in (request.headers.get("Host", ""), request.headers.get("X-Forwarded-Host", "").split(",")[0].strip())


async def _off_loop(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# ----------------------------------------------------------------------------- sign in


async def login(request: web.Request) -> web.StreamResponse:
    config = request.app[_api().CONFIG]
    session = _session(request)
    error = None
    target = request.query.get("next", f"{PREFIX}/")
    if not _NEXT.fullmatch(target):  # only a page of this console: no other site, no header-breaking characters
        target = f"{PREFIX}/"
    if request.method == "POST":
        form = await request.post()
        if not _csrf_ok(request, session, form):
            error = session.t["error.csrf"]
        else:
            token, write = str(form.get("token", "")).strip(), str(form.get("write_token", "")).strip()
            if not config.tokens or _matches(token, config.tokens):
                response = _redirect(target)
                if config.tokens:
                    _cookie(response, _TOKEN_COOKIE, token)
                if write and _matches(write, config.ingest_tokens):
                    _cookie(response, _WRITE_COOKIE, write)
                elif write:
                    log.info("console sign-in with a second token that is not an ingest token")
                return _finish(request, session, response)
            log.info("console sign-in refused: not a lookup token")
            error = session.t["login.wrong"]
    page = _render(
        request,
        session,
        "login.html",
        401 if error else 200,
        error=error,
        target=target,
        open=not config.tokens,
        insecure=not _secure_context(request),
    )
    return _finish(request, session, page)


async def logout(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    form = await request.post()
    if not _csrf_ok(request, session, form):
        return _finish(request, session, _render(request, session, "error.html", 403, message=session.t["error.csrf"]))
    response = _redirect(f"{PREFIX}/login")
    for name in (_TOKEN_COOKIE, _WRITE_COOKIE):
        response.del_cookie(name, path=PREFIX)
    return _finish(request, session, response)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    kind = _STATIC.get(name)
    if kind is None:
        raise web.HTTPNotFound()
    body = resources.files("streams.console").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=kind)
    response.headers["Cache-Control"] = "public, max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def index(request: web.Request) -> web.StreamResponse:
    return _redirect(f"{PREFIX}/channels")


# ----------------------------------------------------------------------------- reports


def _warehouse(request: web.Request) -> Any:
    return request.app.get(_api().WAREHOUSE)


def _day(request: web.Request, name: str) -> date | None:
    from sinks.warehouse.report import parse_day  # noqa: PLC0415

    return parse_day(request.query.get(name) or None, name)


def _tz(request: web.Request) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    config = request.app[_api().CONFIG]
    tz = request.query.get("tz") or config.reports.tz
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {tz[:64]!r} (an IANA name such as Europe/Moscow)") from None
    return tz


def _model(request: web.Request) -> str:
    model = request.query.get("model") or request.app[_api().CONFIG].reports.model
    if model not in MODELS:
        raise InvalidInput(f"unknown attribution model {model[:40]!r}; choose one of {', '.join(MODELS)}")
    return model


def _channel_report(request: web.Request) -> Awaitable[Any]:
    config = request.app[_api().CONFIG]
    model, start, end, tz = _model(request), _day(request, "from"), _day(request, "to"), _tz(request)
    settings = dataclasses.replace(config.reports, tz=tz)
    engine = _warehouse(request)
    return _off_loop(lambda: settings.report(engine, model, start, end))


def _filters(request: web.Request, **extra: Any) -> dict[str, Any]:
    config = request.app[_api().CONFIG]
    q = request.query
    return {
        "model": q.get("model") or config.reports.model,
        "from": q.get("from", ""),
        "to": q.get("to", ""),
        "tz": q.get("tz") or config.reports.tz,
        "models": list(MODELS),
        **extra,
    }


def _channel_name(row: Any) -> str:
    parts = [p for p in (row.source, row.medium) if p]
    name = " / ".join(parts)
    if row.campaign and row.campaign != "(not set)":
        name += f" / {row.campaign}"
    return name


async def channels(request: web.Request, session: _Session) -> web.StreamResponse:
    if _warehouse(request) is None:
        return _render(request, session, "channels.html", filters=_filters(request), report=None, charts=None)
    report = await _channel_report(request)
    top = report.rows[:10]
    charts = {
        "labels": [_channel_name(r) for r in top],
        "leads": [round(r.leads, 2) for r in top],
        "deals": [round(r.deals, 2) for r in top],
        "revenue": [round(r.revenue, 2) for r in top],
        "cost": [round(r.cost, 2) for r in top],
        "cpl": [round(r.cpl, 2) if r.cpl is not None else None for r in top],
        "romi": [round(r.romi, 1) if r.romi is not None else None for r in top],
        "words": {
            k: session.t[k] for k in ("col.leads", "col.deals", "col.revenue", "col.cost", "col.cpl", "col.romi")
        },
    }
    csv_link = f"{PREFIX}/channels.csv?{request.query_string}" if request.query_string else f"{PREFIX}/channels.csv"
    return _render(
        request,
        session,
        "channels.html",
        filters=_filters(request),
        report=report,
        charts=_json_block(charts),
        csv_link=csv_link,
        channel_name=_channel_name,
    )


async def channels_csv(request: web.Request, session: _Session) -> web.StreamResponse:
    from sinks.warehouse.report import render  # noqa: PLC0415

    if _warehouse(request) is None:
        raise InvalidInput("no warehouse is configured (IDSTREAM_WAREHOUSE_URL)")
    report = await _channel_report(request)
    response = web.Response(text=render(report, "csv"), content_type="text/csv", charset="utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="channels-{report.model}.csv"'
    return response


async def funnel(request: web.Request, session: _Session) -> web.StreamResponse:
    from sinks.warehouse.funnel import deal_funnel  # noqa: PLC0415

    by, period = request.query.get("by", "channel"), request.query.get("period", "week")
    filters = _filters(request, by=by, period=period)
    engine = _warehouse(request)
    if engine is None:
        return _render(request, session, "funnel.html", filters=filters, funnel=None, charts=None)
    model, start, end, tz = _model(request), _day(request, "from"), _day(request, "to"), _tz(request)
    result = await _off_loop(
        lambda: deal_funnel(engine, model=model, by=by, period=period, start=start, end=end, tz=tz)
    )
    charts = {
        "stages": result.stages,
        "reached": [round(v, 2) for v in result.total.reached],
        "series_labels": [s.name for s in result.series],
        "series": [[round(v, 2) for v in s.reached] for s in result.series],
        "words": {"reached": session.t["funnel.reached"]},
    }
    return _render(request, session, "funnel.html", filters=filters, funnel=result, charts=_json_block(charts))


async def calls(request: web.Request, session: _Session) -> web.StreamResponse:
    from sinks.warehouse.calls import call_report  # noqa: PLC0415

    within_text = request.query.get("within", "30")
    filters = _filters(request, within=within_text)
    engine = _warehouse(request)
    if engine is None:
        return _render(request, session, "calls.html", filters=filters, report=None, charts=None)
    if not (within_text.isascii() and within_text.isdecimal() and 1 <= int(within_text) <= 10_080):
        raise InvalidInput(f"within must be 1 to 10080 minutes, not {within_text[:20]!r}")
    start, end, tz = _day(request, "from"), _day(request, "to"), _tz(request)
    report = (
        await _off_loop(lambda: call_report(engine, start=start, end=end, tz=tz, within=int(within_text)))
    ).to_dict()
    charts = {
        "days": [d["day"] for d in report["days"]],
        "answered": [d["answered"] for d in report["days"]],
        "missed": [d["missed"] for d in report["days"]],
        "hours": [h["hour"] for h in report["hours"]],
        "hour_calls": [h["calls"] for h in report["hours"]],
        "hour_missed": [h["missed"] for h in report["hours"]],
        "words": {k: session.t[k] for k in ("calls.answered", "calls.missed", "calls.calls")},
    }
    return _render(request, session, "calls.html", filters=filters, report=report, charts=_json_block(charts))


def _json_block(data: Any) -> Markup:
    """Chart data for a template: JSON that cannot close its ``<script>`` element."""
    return Markup(_script_json(data))  # noqa: S704 - every <, > and & is escaped by _script_json


def _svg(why: dict[str, Any], t: dict[str, str]) -> Markup:
    """The explanation graph for a template: SVG whose every text is escaped by :func:`_graph_svg`."""
    return Markup(_graph_svg(why, t))  # noqa: S704


def _script_json(data: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: nothing in it can close the element."""
    text = orjson.dumps(data).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------------------- persons

_PROFILE_ID = re.compile(r"p_[0-9a-f]{8,40}")
_GA = re.compile(r"(GA\d\.\d+\.)?\d{3,12}\.\d{6,12}", re.IGNORECASE)
_PREFIXED = re.compile(r"[a-z][a-z0-9_-]{1,31}:\S+")


def _kinds_for(q: str) -> list[str]:
    """The identifier kinds a typed value may be, most likely first (each is tried; the store decides)."""
    text = q.strip()
    if "@" in text:
        return ["email"]
    if _GA.fullmatch(text):
        return ["ga_client_id"]
    if _PREFIXED.fullmatch(text) and not text.lower().startswith(("tel:", "mailto:")):
        return ["crm_contact_id", "messenger_id"]
    digits = re.sub(r"\D", "", text)
    kinds = []
    if re.fullmatch(r"[\d\s()+\-.]+", text) and 7 <= len(digits) <= 15:
        kinds.append("phone")
    if text.isdigit() and len(text) >= 16:
        kinds.append("ym_client_id")
    if text.isdigit() or re.fullmatch(r"[\w.-]+", text):
        kinds.append("crm_contact_id")
    if text.startswith("@"):
        kinds.append("messenger_id")
    return kinds or ["phone", "email"]


async def persons(request: web.Request, session: _Session) -> web.StreamResponse:
    q = request.query.get("q", "").strip()[:256]
    if not q:
        return _render(request, session, "persons.html", q="", results=None)
    if _PROFILE_ID.fullmatch(q):
        return _redirect(f"{PREFIX}/persons/{q}")
    api = _api()
    config, reader = request.app[api.CONFIG], request.app[api.READER]
    tried = [(kind, config.normalizer.normalize(kind, q)) for kind in _kinds_for(q)]
    valid = [(kind, n) for kind, n in tried if isinstance(n, Identifier)]
    found = await reader.identifiers([n for _, n in valid]) if valid else []
    hits = [(kind, n, f) for (kind, n), f in zip(valid, found, strict=True) if f is not None]
    if len(hits) == 1 and not hits[0][2].ambiguous:
        return _redirect(f"{PREFIX}/persons/{hits[0][2].profile_id}")
    results: list[dict[str, Any]] = []
    for kind, ident, f in hits:
        if f.ambiguous:
            (listed,) = await reader.ranked([f.candidates], 20)
            results.append(
                {
                    "kind": kind,
                    "value": ident.value,
                    "ambiguous": True,
                    "candidates": [summary(p.profile) for p in listed.first],
                    "total": listed.total,
                }
            )
        else:
            results.append(
                {"kind": kind, "value": ident.value, "ambiguous": False, "candidates": [summary(f.profile)], "total": 1}
            )
    rejected = [n for _, n in tried if isinstance(n, Rejection)]
    reason = rejected[0].message if rejected and not valid else None
    return _render(request, session, "persons.html", q=q, results=results, reason=reason)


async def person(request: web.Request, session: _Session) -> web.StreamResponse:
    api = _api()
    requested = request.match_info["profile_id"]
    if not _PROFILE_ID.fullmatch(requested):
        raise InvalidInput("a profile id looks like p_ followed by hexadecimal digits")
    (found,) = await request.app[api.READER].profiles([requested])
    if found is None:
        return _render(request, session, "persons.html", 404, q=requested, results=[], reason=None)
    if found.profile_id != requested:
        return _redirect(f"{PREFIX}/persons/{found.profile_id}")
    profile = found.profile
    store, config = request.app[api.STORE], request.app[api.CONFIG]

    def explained() -> dict[str, Any] | None:
        with mapped("explain"):
            return explain(store, store.policy, profile_id=found.profile_id)

    why = await _off_loop(explained)
    model = _model(request)
    deals = []
    for deal in sorted((profile.get("deals") or {}).values(), key=lambda d: d.get("created_at") or "", reverse=True):
        credits = ((deal.get("attribution") or {}).get("models") or {}).get(model, [])
        deals.append({**deal, "credits": credits})
    return _render(
        request,
        session,
        "person.html",
        profile=profile,
        card=screen_pop(profile),
        deals=deals,
        model=model,
        models=list(MODELS),
        why=why,
        graph=_svg(why, session.t) if why else None,
        timeline=profile.get("recent_touches", []),
        currency=config.reports.currency,
    )


def _label(kind: str, value: str) -> str:
    short = value if len(value) <= 26 else value[:12] + "…" + value[-10:]
    return f"{kind}: {short}"


def _graph_svg(why: dict[str, Any], t: dict[str, str]) -> str:
    """The explanation as a small SVG: identifiers (circles), the events that joined them (squares), and what was
    kept apart (dashed, red) or is shared (orange). Laid out by networkx, drawn here: no script needed."""
    from xml.sax.saxutils import escape  # noqa: PLC0415

    g: nx.Graph = nx.Graph()
    mine = {(i["kind"], i["value"]) for i in why.get("identifiers", [])}
    for ident in mine:
        g.add_node(("id", ident))
    for n, link in enumerate(why.get("links", [])):
        node = ("event", n)
        g.add_node(node, link=link)
        for i in link["identifiers"]:
            g.add_edge(node, ("id", (i["kind"], i["value"])))
    for n, apart in enumerate(why.get("kept_apart", [])[:12]):
        others = [apart["identifier"]] if "identifier" in apart else apart.get("identifiers", [])
        for i in others:
            key = (i["kind"], i["value"])
            if key not in mine:
                g.add_node(("apart", key), apart=apart)
                anchor = next(iter(sorted(mine)), None)
                if anchor is not None:
                    g.add_edge(("apart", key), ("id", anchor), dashed=True)
        del n
    for i in why.get("shared_seen", [])[:12]:
        key = (i["kind"], i["value"])
        g.add_node(("shared", key))
        anchor = next(iter(sorted(mine)), None)
        if anchor is not None:
            g.add_edge(("shared", key), ("id", anchor), dashed=True)
    if not g:
        return ""
    width, height, pad = 760, 420, 70
    layout = nx.spring_layout(g, seed=7, k=1.4 / math.sqrt(max(len(g), 1)))
    xs, ys = [p[0] for p in layout.values()], [p[1] for p in layout.values()]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0

    def at(node: Any) -> tuple[float, float]:
        x, y = layout[node]
        return pad + (x - min(xs)) / span_x * (width - 2 * pad), 40 + (y - min(ys)) / span_y * (height - 80)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" class="graph" '
        f'aria-label="{escape(t["person.explanation"])}">'
    ]
    for a, b, data in g.edges(data=True):
        (x1, y1), (x2, y2) = at(a), at(b)
        cls = "edge apart" if data.get("dashed") else "edge"
        parts.append(f'<line class="{cls}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}"/>')
    for node, data in g.nodes(data=True):
        x, y = at(node)
        if node[0] == "event":
            link = data["link"]
            rule = t.get(f"person.rule.{link['rule']}", link["rule"])
            title = f"{link['source']} · {link['occurred_at'][:16].replace('T', ' ')} · {rule}"
            parts.append(
                f'<g class="event"><title>{escape(title)}</title>'
                f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12"/>'
                f'<text x="{x:.1f}" y="{y + 20:.1f}">{escape(link["source"])}</text></g>'
            )
        else:
            kind, value = node[1]
            cls = {"id": "ident", "apart": "ident apart", "shared": "ident shared"}[node[0]]
            parts.append(
                f'<g class="{cls}"><title>{escape(kind)}: {escape(value)}</title>'
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9"/>'
                f'<text x="{x:.1f}" y="{y - 14:.1f}">{escape(_label(kind, value))}</text></g>'
            )
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------- review


def _tail(bootstrap: str, topic: str, per_partition: int) -> list[tuple[int, bytes]]:
    """The newest messages of a topic: (timestamp in ms, value), up to ``per_partition`` of each partition."""
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    from streams.rebuild import end_offsets  # noqa: PLC0415

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        consumer_timeout_ms=2_000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        ends = end_offsets(consumer, partitions)
        out: list[tuple[int, bytes]] = []
        waiting = {}
        for tp in partitions:
            start = max(0, ends[tp] - per_partition)
            if ends[tp] > start:
                consumer.seek(tp, start)
                waiting[tp] = ends[tp]
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            for tp, records in consumer.poll(500).items():
                for record in records:
                    if record.offset < waiting.get(tp, 0) and record.value is not None:
                        out.append((record.timestamp, record.value))
                    if record.offset + 1 >= waiting.get(tp, 0):
                        waiting.pop(tp, None)
        return out
    finally:
        consumer.close()


#: The broker is read on threads of its own: a broker that is away never holds the API's shared executor.
_BROKER_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="console-broker")


async def _cached(request: web.Request, key: str, seconds: float, fn: Callable[[], Any]) -> Any:
    bootstrap = request.app[_api().CONFIG].kafka or ""
    """``fn()`` on the broker's threads, once at a time per key (concurrent pages share the answer), its answer
    kept ``seconds`` and a failure (the broker away: :class:`TransientError`) kept as long."""
    state = request.app[CONSOLE_STATE]
    held = state.cache.get(key)
    if held is not None and time.monotonic() - held[0] < seconds:
        if isinstance(held[1], TransientError):
            raise held[1]
        return held[1]
    running = state.inflight.get(key)
    if running is None:
        running = asyncio.get_running_loop().run_in_executor(_BROKER_POOL, _broker_call, bootstrap, fn)
        state.inflight[key] = running
        try:
            value = await asyncio.shield(running)
        except TransientError as exc:
            state.cache[key] = (time.monotonic(), exc)
            raise
        else:
            state.cache[key] = (time.monotonic(), value)
        finally:
            state.inflight.pop(key, None)
        return value
    return await asyncio.shield(running)


def _accepts(bootstrap: str, timeout: float = 2.0) -> bool:
    """Does any bootstrap server accept a connection? Asked first: a Kafka client spends 30 s finding out."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _broker_call(bootstrap: str, fn: Callable[[], Any]) -> Any:
    """Kafka's errors as :class:`TransientError` (the page says the broker is away), named by type only."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    if not _accepts(bootstrap):
        raise TransientError("no bootstrap server accepts connections")
    try:
        return fn()
    except (KafkaError, OSError) as exc:
        raise TransientError(f"the broker is unavailable ({type(exc).__name__})") from None


_REVIEWED = ("conflict", "shared", "split", "merged")
_SENT = re.compile(r"identity_(un)?link console:[0-9a-f-]{36}")


async def review(request: web.Request, session: _Session) -> web.StreamResponse:
    api = _api()
    config, options = request.app[api.CONFIG], request.app[CONSOLE_OPTIONS]
    kinds = [k for k in request.query.getall("type", []) if k in _REVIEWED] or ["conflict", "shared", "split"]
    notice = request.query.get("sent")
    if notice is not None and not _SENT.fullmatch(notice):
        notice = None  # only what this console redirected with: a crafted link shows no false confirmation
    if config.kafka is None:
        return _render(
            request,
            session,
            "review.html",
            items=[],
            kinds=kinds,
            all_kinds=_REVIEWED,
            notice=None,
            broker=False,
            operator="",
        )
    bootstrap, topic = config.kafka, options.changes_topic
    try:
        raw = await _cached(request, f"tail:{topic}", 3.0, lambda: _tail(bootstrap, topic, REVIEW_TAIL))
    except TransientError as exc:
        return _render(request, session, "review.html", 503, items=[], kinds=kinds, all_kinds=_REVIEWED,
                       notice=None, broker=True, operator="", broker_error=exc.message)  # fmt: skip
    changes = []
    for timestamp, value in raw:
        try:
            change = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if change.get("type") in kinds:
            changes.append((change.get("occurred_at") or "", timestamp, change))
    changes.sort(key=lambda c: (c[0], c[1]), reverse=True)
    changes = changes[:60]
    wanted = sorted(
        {
            pid
            for _, _, c in changes
            for pid in (
                c.get("profile_id"),
                (c.get("conflict") or {}).get("other_profile_id"),
                *c.get("split_from", []),
                *c.get("merged_from", []),
            )
            if pid
        }
    )
    reader = request.app[api.READER]
    held = dict(zip(wanted, await reader.profiles(wanted), strict=True)) if wanted else {}

    def person_of(pid: str | None) -> dict[str, Any] | None:
        f = held.get(pid) if pid else None
        if f is None:
            return None
        ids = [{"kind": k, "value": v} for k, vs in f.profile.get("identifiers", {}).items() for v in vs]
        return {"profile_id": f.profile_id, "display_name": f.profile.get("display_name"), "identifiers": ids[:20]}

    items = []
    for occurred_at, _, c in changes:
        conflict = c.get("conflict") or {}
        item: dict[str, Any] = {
            "type": c["type"],
            "occurred_at": occurred_at,
            "event_id": c.get("event_id"),
            "source": c.get("source"),
            "change": c,
        }
        if c["type"] == "conflict":
            item["a"] = person_of(c.get("profile_id"))
            item["b"] = person_of(conflict.get("other_profile_id"))
            item["values"] = [conflict.get("identifier")] if conflict.get("identifier") else []
            item["reason"] = conflict.get("reason")
        elif c["type"] == "shared":
            item["a"] = person_of(c.get("profile_id"))
            item["b"] = None
            item["values"] = c.get("shared", [])
        elif c["type"] == "split":
            item["a"] = person_of(c.get("profile_id"))
            item["b"] = person_of(next(iter(c.get("split_from", [])), None))
            item["values"] = c.get("moved", [])
        else:
            item["a"] = person_of(c.get("profile_id"))
            item["b"] = item["a"]
            item["values"] = []
        item["reason"] = item.get("reason") or (c.get("evidence") or {}).get("rule")
        item["left"], item["right"] = _pair_choices(item)
        items.append(item)
    operator = request.cookies.get(_OPERATOR_COOKIE, "")
    return _render(
        request,
        session,
        "review.html",
        items=items,
        kinds=kinds,
        all_kinds=_REVIEWED,
        notice=notice,
        broker=True,
        operator=operator,
    )


def _pair_choices(item: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The identifiers a correction may name on each side, the likely pair first: the refused, moved or shared
    value against the other person's identifiers; for a merge, two of the person's own."""
    a_ids = item["a"]["identifiers"] if item.get("a") else []
    b_ids = item["b"]["identifiers"] if item.get("b") else []
    values = [v for v in item.get("values") or [] if v]
    if item["type"] == "merged":
        left, right = a_ids, a_ids[1:] + a_ids[:1]
    elif item["type"] == "shared":
        left, right = values, [i for i in a_ids if i not in values]
    else:  # a refused merge, a split: the value against the other side's person
        left, right = values or a_ids, [i for i in (b_ids or a_ids) if i not in values]
    if left and right and left[0] == right[0]:
        right = right[1:] + right[:1]
    if not left or not right or (len(left) == len(right) == 1 and left == right):
        return [], []
    return left, right


def _identifier_field(text: str) -> dict[str, str]:
    kind, sep, value = text.partition(":")
    if not sep or not kind or not value:
        raise InvalidInput("choose two identifiers to link or unlink")
    return {"kind": kind, "value": value}


async def correct(request: web.Request, session: _Session) -> web.StreamResponse:
    """Link or unlink two identifiers: an ``identity_link`` / ``identity_unlink`` event with operator and reason,
    produced to the touch topics like any other (the workers apply it; ``identity.changes`` shows it)."""
    api = _api()
    config = request.app[api.CONFIG]
    if not session.write:
        raise InvalidInput(session.t["review.read_only"])
    if config.kafka is None or api_producer(request) is None:
        raise InvalidInput(session.t["review.no_broker"])
    form = await request.post()
    action = str(form.get("action", ""))
    if action not in ("identity_link", "identity_unlink"):
        raise InvalidInput("the action must be link or unlink")
    a, b = _identifier_field(str(form.get("a", ""))), _identifier_field(str(form.get("b", "")))
    if a == b:
        raise InvalidInput("choose two different identifiers")
    operator, reason = str(form.get("operator", "")).strip(), str(form.get("reason", "")).strip()
    if not operator or not reason:
        raise InvalidInput("say who you are and why: both are kept with the correction")
    if len(operator) > 100 or len(reason) > 500:
        raise InvalidInput("the name is at most 100 characters, the reason at most 500")
    event_id = f"console:{uuid.uuid4()}"
    try:
        event = TouchEvent.model_validate(
            {
                "event_id": event_id,
                "type": action,
                "occurred_at": datetime.now(UTC).isoformat(),
                "source": "console",
                "identifiers": [a, b],
                "attributes": {"actor": operator, "reason": reason},
            }
        )
    except ValidationError as exc:  # named by field only: the values are identifiers
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        raise InvalidInput(f"the correction is not a valid event ({', '.join(fields)[:200]})") from None
    from streams.ingest_api import topic_for  # noqa: PLC0415

    topic = topic_for(action, config.touch_topics)
    (failure,) = await api_producer(request).send_all(topic, [event.model_dump_json().encode()])
    if failure is not None:
        if failure.retriable:
            raise TransientError(failure.message)
        raise InvalidInput(failure.message)
    log.info("console correction sent", extra={"event_id": event_id, "type": action})
    response = _redirect(f"{PREFIX}/review?{urlencode({'sent': f'{action} {event_id}'})}")
    _cookie(response, _OPERATOR_COOKIE, operator, max_age=365 * 86400)
    return response


def api_producer(request: web.Request) -> Any:
    from streams.ingest_api import PRODUCER  # noqa: PLC0415

    return request.app.get(PRODUCER)


# ----------------------------------------------------------------------------- health


def _offsets(bootstrap: str, groups: dict[str, list[str]], totals: list[str], dlq: str) -> dict[str, Any]:
    """End offsets of the touch topics and the dead-letter topic, and each group's lag per topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: PLC0415

    from streams.rebuild import end_offsets  # noqa: PLC0415

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=10_000
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        topics = sorted({*totals, dlq, *(t for ts in groups.values() for t in ts)})
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = end_offsets(consumer, partitions)
        lag = []
        for group, names in groups.items():
            mine = [tp for tp in partitions if tp.topic in names]
            committed = admin.list_group_offsets({group: mine}).get(group, {}) if mine else {}
            for name in names:
                behind = sum(
                    max(0, ends[tp] - max(0, committed[tp].offset if tp in committed else 0))
                    for tp in mine
                    if tp.topic == name
                )
                lag.append({"group": group, "topic": name, "lag": behind})
        total = sum(ends[tp] for tp in partitions if tp.topic in totals)
        dead = sum(ends[tp] for tp in partitions if tp.topic == dlq)
        return {"lag": lag, "events": total, "dead": dead}
    finally:
        consumer.close()
        admin.close()


def _parse_metrics(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    out: dict[str, float] = {"applied": 0.0, "dead_letters": 0.0, "blob_alerts": 0.0, "largest": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "idstream_events_total" and sample.labels.get("outcome") == "applied":
                out["applied"] += sample.value
            elif sample.name == "idstream_dead_letters_total":
                out["dead_letters"] += sample.value
            elif sample.name == "idstream_blob_alerts_total":
                out["blob_alerts"] += sample.value
            elif sample.name == "idstream_largest_component":
                out["largest"] = max(out["largest"], sample.value)
    return out


async def _workers(urls: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    async with ClientSession(timeout=ClientTimeout(total=3)) as client:
        for url in urls:
            shown = re.sub(r"//[^@/]*@", "//", url)  # never a password in the page
            try:
                async with client.get(url) as response:
                    text = await response.text()
                out.append({"url": shown, "up": response.status == 200, **_parse_metrics(text)})
            except Exception as exc:
                out.append({"url": shown, "up": False, "error": type(exc).__name__})
    return out


def _rates(samples: list[tuple[float, int, int]]) -> dict[str, Any] | None:
    if len(samples) < 2:
        return None
    (t0, e0, d0), (t1, e1, d1) = samples[0], samples[-1]
    minutes = (t1 - t0) / 60
    if minutes <= 0:
        return None
    return {"events": (e1 - e0) / minutes, "dead": (d1 - d0) / minutes, "minutes": max(1, round(minutes))}


async def health(request: web.Request, session: _Session) -> web.StreamResponse:
    api = _api()
    config, options, state = request.app[api.CONFIG], request.app[CONSOLE_OPTIONS], request.app[CONSOLE_STATE]
    offsets, recent, broker_error = None, [], None
    if config.kafka is not None:
        bootstrap = config.kafka
        try:
            offsets = await _cached(
                request, "offsets", 3.0, lambda: _offsets(bootstrap, *_health_topics(config, options))
            )
            _sample(state, offsets)
            tail = await _cached(request, "dlq", 5.0, lambda: _tail(bootstrap, config.dlq_topic, 10))
        except TransientError as exc:  # exactly what this page is for: said, not failed
            tail, broker_error = [], exc.message
        for timestamp, value in sorted(tail, reverse=True)[:10]:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                letter = orjson.loads(value)
                recent.append(
                    {
                        "at": datetime.fromtimestamp(timestamp / 1000, UTC).isoformat(timespec="seconds"),
                        "topic": letter.get("topic"),
                        "code": (letter.get("error") or {}).get("code"),
                    }
                )
    workers = await _workers(options.worker_metrics) if options.worker_metrics else None
    return _render(
        request,
        session,
        "health.html",
        offsets=offsets,
        rates=_rates(state.samples),
        workers=workers,
        recent=recent,
        broker=config.kafka is not None,
        broker_error=broker_error,
    )


def _health_topics(config: Any, options: ConsoleOptions) -> tuple[dict[str, list[str]], list[str], str]:
    touches = list(config.touch_topics)
    groups = {
        options.app_id: touches,
        f"{options.app_id}-warehouse": [*touches, options.profiles_topic, options.spend_topic],
    }
    return groups, touches, config.dlq_topic


def _sample(state: _State, offsets: dict[str, Any]) -> None:
    now = time.monotonic()
    if state.samples and now - state.samples[-1][0] < 1.0:
        return
    state.samples.append((now, int(offsets["events"]), int(offsets["dead"])))
    del state.samples[:-SAMPLES]


def _start_sampler(app: web.Application) -> None:
    """Sample the broker from the first console page on (an API nobody opens the console of never does)."""
    state = app[CONSOLE_STATE]
    if state.sampler is None and app[_api().CONFIG].kafka is not None:
        state.sampler = asyncio.get_running_loop().create_task(_sampler(app))


async def _sampler(app: web.Application) -> None:
    """Sample the topics' end offsets every few seconds, so the health page has rates on its first view."""
    api = _api()
    config, options, state = app[api.CONFIG], app[CONSOLE_OPTIONS], app[CONSOLE_STATE]
    if config.kafka is None:
        return
    bootstrap = config.kafka
    while True:
        try:
            offsets = await asyncio.get_running_loop().run_in_executor(
                _BROKER_POOL, _broker_call, bootstrap, lambda: _offsets(bootstrap, *_health_topics(config, options))
            )
            _sample(state, offsets)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("console sampler: %s", type(exc).__name__)
        await asyncio.sleep(SAMPLE_EVERY)


# ----------------------------------------------------------------------------- routes


def add_console_routes(app: web.Application, options: ConsoleOptions) -> None:
    """Register ``/console/...`` on the API application."""
    app[CONSOLE_OPTIONS] = options
    app[CONSOLE_STATE] = _State()

    async def stop_sampler(app: web.Application) -> None:
        task = app[CONSOLE_STATE].sampler
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_cleanup.append(stop_sampler)
    r = app.router
    r.add_get(PREFIX, index)
    r.add_get(f"{PREFIX}/", index)
    r.add_route("GET", f"{PREFIX}/login", login)
    r.add_route("POST", f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", logout)
    r.add_get(f"{PREFIX}/static/{{name}}", static)
    r.add_get(f"{PREFIX}/channels", _page(channels))
    r.add_get(f"{PREFIX}/channels.csv", _page(channels_csv))
    r.add_get(f"{PREFIX}/funnel", _page(funnel))
    r.add_get(f"{PREFIX}/calls", _page(calls))
    r.add_get(f"{PREFIX}/persons", _page(persons))
    r.add_get(f"{PREFIX}/persons/{{profile_id}}", _page(person))
    r.add_get(f"{PREFIX}/review", _page(review))
    r.add_post(f"{PREFIX}/review", _page(correct))
    r.add_get(f"{PREFIX}/health", _page(health))
