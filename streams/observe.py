"""What operators see: Prometheus metrics, JSON logs without secrets, and the worker's health endpoints.

Metrics live in ``prometheus_client``'s default registry of the process; a worker serves them with
``/healthz`` and ``/readyz`` on ``IDSTREAM_METRICS_HOST:IDSTREAM_METRICS_PORT``, the lookup API on its
own port. No metric carries an identifier value or a profile id as a label: labels are topics, event
types, error codes and identifier kinds, so their number stays small and they hold no personal data.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "BatchStats",
    "JsonFormatter",
    "record_batch",
    "redact_url",
    "setup_logging",
    "start_health_server",
]

# ----------------------------------------------------------------------------- metrics

EVENTS = Counter("idstream_events", "Touch events handled, by topic, type and outcome", ["topic", "type", "outcome"])
DEAD_LETTERS = Counter("idstream_dead_letters", "Messages sent to the dead-letter topic", ["topic", "code"])
MERGES = Counter("idstream_merges", "Persons merged into another (each absorbed person counts once)")
SPLITS = Counter("idstream_splits", "Persons split off another")
ERASURES = Counter("idstream_erasures", "Persons erased")
CONFLICTS = Counter("idstream_conflicts", "Merges the policy refused, by identifier kind", ["kind"])
LAG = Gauge(
    "idstream_consumer_lag", "Messages behind the high watermark per assigned partition", ["topic", "partition"]
)
BATCH_SECONDS = Histogram(
    "idstream_batch_seconds",
    "Time to handle one batch: decode, the Redis call, rendering the outputs",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_EVENTS = Histogram("idstream_batch_events", "Events per batch", buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
LARGEST_COMPONENT = Gauge(
    "idstream_largest_component", "Identifiers in the largest identity component this worker has written since start"
)
BLOB_ALERTS = Counter("idstream_blob_alerts", "Batches that wrote a component above IDSTREAM_BLOB_COMPONENT_SIZE")
STORE_RETRIES = Counter("idstream_store_retries", "Transient store errors retried")
LOOKUP_SECONDS = Histogram(
    "idstream_lookup_seconds",
    "Lookup API answer time by endpoint",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LOOKUP_REQUESTS = Counter(
    "idstream_lookup_requests", "Lookup API requests by endpoint and status", ["endpoint", "status"]
)

log = logging.getLogger("idstream.observe")
_largest = [0]  # the gauge's value, kept here: prometheus_client has no public getter


@dataclass
class BatchStats:
    """What one batch did, counted by the processor (pure data; :func:`record_batch` exports it)."""

    events: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (topic, type, outcome) -> n
    dead_letters: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, code) -> n
    merges: int = 0
    splits: int = 0
    erasures: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)  # identifier kind -> n
    largest_component: int = 0
    event_ids: list[str] = field(default_factory=list)

    def count(self, topic: str, type_: str, outcome: str) -> None:
        key = (topic, type_, outcome)
        self.events[key] = self.events.get(key, 0) + 1


def record_batch(stats: BatchStats, seconds: float, size: int, blob_size: int) -> None:
    """Export one batch's stats; warn (and count an alert) when it wrote a component above ``blob_size``."""
    for (topic, type_, outcome), n in stats.events.items():
        EVENTS.labels(topic, type_, outcome).inc(n)
    for (topic, code), n in stats.dead_letters.items():
        DEAD_LETTERS.labels(topic, code).inc(n)
    MERGES.inc(stats.merges)
    SPLITS.inc(stats.splits)
    ERASURES.inc(stats.erasures)
    for kind, n in stats.conflicts.items():
        CONFLICTS.labels(kind).inc(n)
    BATCH_SECONDS.observe(seconds)
    BATCH_EVENTS.observe(size)
    if stats.largest_component > _largest[0]:
        _largest[0] = stats.largest_component
        LARGEST_COMPONENT.set(stats.largest_component)
    if blob_size and stats.largest_component > blob_size:
        BLOB_ALERTS.inc()
        log.warning(
            "a batch wrote an identity component of %d identifiers (IDSTREAM_BLOB_COMPONENT_SIZE %d): a shared "
            "identifier may be gluing people together; `idstream explain` on a profile of these events says why",
            stats.largest_component,
            blob_size,
            extra={"component_size": stats.largest_component, "event_ids": stats.event_ids[:20]},
        )


def metrics_response() -> web.Response:
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


# ----------------------------------------------------------------------------- health server


async def start_health_server(
    host: str,
    port: int,
    ready: Callable[[], Awaitable[str | None]],
    live: Callable[[], str | None] = lambda: None,
) -> web.AppRunner:
    """Serve ``/metrics``, ``/healthz`` (the event loop answers and ``live()`` finds no stall: else 503, and
    an orchestrator restarts the process) and ``/readyz`` (``ready()`` returns None)."""

    async def metrics(request: web.Request) -> web.Response:
        return metrics_response()

    async def healthz(request: web.Request) -> web.Response:
        problem = live()
        if problem is not None:
            return web.json_response({"status": "stalled", "reason": problem}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problem = await ready()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": problem}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# ----------------------------------------------------------------------------- logs

_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def redact_url(url: str) -> str:
    """A URL fit for a log: any password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class _Scrub:
    """Replaces every configured secret (and any URL password) in a finished log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return redact_url(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and whatever ``extra=`` carried (event_id...)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.scrub = _Scrub(secrets)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.scrub(json.dumps(out, ensure_ascii=False, default=str))


class _TextFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrub = _Scrub(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class _OwnDebugOnly(logging.Filter):
    """Below INFO, only idstream's own records pass: at DEBUG aiokafka logs every produced message whole (a
    profile update: phones, e-mails, names, erased persons too), and no library's debug output is vetted for
    personal data. idstream's own debug records carry event and profile ids, never identifier values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or record.name == "idstream" or record.name.startswith("idstream.")


#: Libraries that log payloads or connection details below INFO: held at INFO whatever the level asked.
THIRD_PARTY_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "aiohttp", "redis", "asyncio", "sqlalchemy", "alembic")


def setup_logging(fmt: str, level: str, secrets: Iterable[str] = ()) -> None:
    """Route every logger (Faust's and aiokafka's too) to stderr as JSON lines (or text), secrets scrubbed.

    ``DEBUG`` is idstream's own debug output only: third-party records below INFO are dropped (see
    :class:`_OwnDebugOnly`), so no log level prints a payload."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else _TextFormatter(secrets))
    handler.addFilter(_OwnDebugOnly())
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # not even formatted: their debug records are dropped anyway; and a logger's own level is what holds a
    # propagated record back (the root's is not consulted), so at WARNING theirs is WARNING too
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    if root.level > logging.DEBUG:  # kafka-python says "IO loop starting" at INFO on every connection
        logging.getLogger("kafka").setLevel(max(root.level, logging.WARNING))
    logging.captureWarnings(True)
