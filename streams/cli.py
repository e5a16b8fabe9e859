"""The ``idstream`` command."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlencode

import redis

from identity import Identifier, IdstreamError, Normalizer, Touch, TransientError
from identity.attribution import MODELS
from schemas import InvalidMessage, TouchEvent, decode_touch, export_schemas
from streams.generate import GeneratedStream, generate
from streams.observe import redact_url, setup_logging
from streams.runtime import tune_gc
from streams.runtime_state import (
    Servers,
    forget,
    private_directory,
    redis_url,
    remember,
    servers,
    warehouse_url,
)
from streams.settings import Settings

__all__ = ["main"]


def _dump(obj: Any, out: IO[str]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    if path == "-":
        yield from enumerate(sys.stdin.buffer, 1)
        return
    with Path(path).open("rb") as handle:
        yield from enumerate(handle, 1)


def cmd_schema_export(args: argparse.Namespace) -> int:
    for path in export_schemas(Path(args.directory)):
        print(path)
    return 0


def cmd_normalize(args: argparse.Namespace) -> int:
    normalizer = Settings().graph().normalizer
    failed = 0
    for value in args.values:
        result = normalizer.normalize(args.kind, value)
        if isinstance(result, Identifier):
            _dump({"kind": result.kind, "input": value, "normalized": result.value}, sys.stdout)
        else:
            failed += 1
            _dump(
                {"kind": args.kind, "input": value, "rejected": result.reason, "message": result.message},
                sys.stdout,
            )
    return 1 if failed else 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Resolve a JSON-lines file of touch events with the in-memory core."""
    graph = Settings().graph()
    tune_gc()
    tally: Counter[str] = Counter()
    for number, line in _lines(args.file):
        if not line.strip():
            continue
        try:
            event = decode_touch(line.rstrip(b"\r\n"))
            result = graph.apply(event.to_touch())
        except InvalidMessage as exc:
            tally["invalid"] += 1
            _dump({"line": number, "error": exc.to_dict()}, sys.stderr)
            continue
        except IdstreamError as exc:  # e.g. a type this core does not apply yet: report, go on
            tally["refused"] += 1
            _dump({"line": number, "error": exc.to_dict()}, sys.stderr)
            continue
        tally[result.status] += 1
        tally["conflicts"] += len(result.conflicts)
        tally["rejected_identifiers"] += len(result.rejected)
        if args.changes:
            _dump(
                {
                    "event_id": result.event_id,
                    "status": result.status,
                    "profile_id": result.profile_id,
                    "changes": [c.to_dict() for c in result.changes],
                    "conflicts": [c.to_dict() for c in result.conflicts],
                    "rejected": [r.to_dict() for r in result.rejected],
                },
                sys.stdout,
            )
    if not args.changes:
        for profile in graph.profiles():
            _dump(profile, sys.stdout)
    _dump({"summary": {**dict(sorted(tally.items())), "persons": len(graph)}}, sys.stderr)
    return 0


def _store(settings: Settings) -> Any:
    return settings.redis_store(settings.redis_client(redis_url(settings)))


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one Faust worker against the configured (or `up`) servers until stopped."""

    from streams.app import create_app, ensure_topics  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
    legacy = settings.redis_store(settings.redis_client(found.redis))
    if legacy.has_legacy_keys():
        print(
            f"idstream: Redis holds the graph {{{settings.redis_prefix}}} in the layout of an earlier version; "
            "stop every worker and migrate it from the touch topics with `idstream rebuild --force`",
            file=sys.stderr,
        )
        return 2
    ensure_topics(settings, found.kafka)
    tune_gc()
    app = create_app(settings, found.kafka, found.redis)
    _run_worker(app, settings, args)
    return 0


def _logging(settings: Settings, args: argparse.Namespace | None = None) -> None:
    level = getattr(args, "loglevel", None) or settings.log_level
    setup_logging(settings.log_format, level, settings.secret_values())


def _run_worker(app: Any, settings: Settings, args: argparse.Namespace) -> None:
    """Run a Faust app with idstream's logging (JSON lines, secrets scrubbed) instead of Faust's."""
    import faust  # noqa: PLC0415

    _logging(settings, args)
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.spinner = None  # its terminal escapes would break a log of JSON lines
    worker.execute_from_commandline()


def cmd_topics(args: argparse.Namespace) -> int:
    """Create every topic idstream reads or writes (idempotent): a deployment's init step."""
    from streams.app import ensure_topics  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
    ensure_topics(settings, found.kafka)
    print(f"topics ready on {found.kafka}: {settings.topic_partitions} partitions each", file=sys.stderr)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Replay the touch topics into an empty Redis graph (Kafka is the source of truth)."""
    from streams.rebuild import rebuild  # noqa: PLC0415

    settings = Settings()
    _logging(settings)
    found = servers(settings)
    store = settings.redis_store(redis.Redis.from_url(found.redis))
    if args.force and (not store.is_empty()):
        print(f"deleting the graph {{{store.prefix}}} ({len(store)} persons) before the rebuild", file=sys.stderr)
        store.clear()
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        _progress(done, total, time.monotonic() - started)

    report = rebuild(
        store,
        found.kafka,
        touch_topics=settings.touch_topics,
        profiles_topic=settings.profiles_topic,
        triggers_topic=settings.triggers_topic,
        changes_topic=settings.changes_topic,
        batch_size=settings.batch_size,
        progress=None if args.quiet else progress,
    )
    if not args.quiet:
        sys.stderr.write("\n")
    _dump({"rebuild": report.to_dict()}, sys.stdout)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """Run the webhook agent (its own consumer group) against the configured (or `up`) servers."""

    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.webhooks_app import create_webhook_app  # noqa: PLC0415

    settings = Settings()
    if not settings.webhooks:
        print("idstream: no IDSTREAM_WEBHOOKS configured: nothing to deliver to", file=sys.stderr)
        return 2
    found = servers(settings)
    ensure_topics(settings, found.kafka)
    app = create_webhook_app(settings, found.kafka)
    _run_worker(app, settings, args)
    return 0


def cmd_warehouse(args: argparse.Namespace) -> int:
    """Migrate the warehouse; with 'run' (the default), run the warehouse agent (its own consumer group)."""
    from sinks.warehouse import head_revision, migrate  # noqa: PLC0415

    settings = Settings()
    writer = settings.warehouse_writer()
    at = migrate(writer.engine)
    print(f"warehouse {writer.engine.url.render_as_string(hide_password=True)} at migration {at} "
          f"(newest {head_revision()})", file=sys.stderr)  # fmt: skip
    if args.action == "migrate":
        return 0

    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.warehouse_app import create_warehouse_app  # noqa: PLC0415

    found = servers(settings)
    ensure_topics(settings, found.kafka)
    app = create_warehouse_app(settings, found.kafka, writer)
    _run_worker(app, settings, args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the channel report from the warehouse; --plot also draws it."""
    from sinks.warehouse import connect, migrate  # noqa: PLC0415
    from sinks.warehouse.report import parse_day, plot, render  # noqa: PLC0415

    settings = Settings()
    engine = connect(warehouse_url(settings))
    migrate(engine)  # an empty warehouse answers an empty report, not an error
    defaults = settings.report_settings()
    if args.tz:
        defaults = dataclasses.replace(defaults, tz=args.tz)
    report = defaults.report(engine, args.model, parse_day(args.start, "--from"), parse_day(args.end, "--to"))
    sys.stdout.write(render(report, args.format))
    if args.plot:
        print(f"plot written to {plot(report, Path(args.plot))}", file=sys.stderr)
    return 0


def cmd_report_calls(args: argparse.Namespace) -> int:
    """Print the call report from the warehouse: answered, missed, returned, by channel and hour."""
    from sinks.warehouse import connect, migrate  # noqa: PLC0415
    from sinks.warehouse.calls import call_report, render_calls  # noqa: PLC0415
    from sinks.warehouse.report import parse_day  # noqa: PLC0415

    settings = Settings()
    engine = connect(warehouse_url(settings))
    migrate(engine)
    tz = args.tz or settings.report_timezone
    report = call_report(engine, start=parse_day(args.start, "--from"), end=parse_day(args.end, "--to"), tz=tz,
                         within=args.within)  # fmt: skip
    if args.format == "json":
        _dump(report.to_dict(), sys.stdout)
    else:
        sys.stdout.write(render_calls(report))
    return 0


def _progress(done: int, total: int, elapsed: float | None = None) -> None:
    width = 30
    filled = width * done // max(total, 1)
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if elapsed:
        rate = done / elapsed
        left = (total - done) / rate if rate else 0
        line += f"  {rate:,.0f}/s  {left:,.0f} s left   "
    sys.stderr.write(line)
    sys.stderr.flush()


def _group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: PLC0415

    from streams.rebuild import end_offsets  # noqa: PLC0415

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = end_offsets(consumer, partitions)
        # name the partitions: asking for all of a group's offsets is not answered by every broker
        committed = admin.list_group_offsets({group: partitions}).get(group, {})
        return sum(max(0, ends[tp] - max(0, committed[tp].offset if tp in committed else 0)) for tp in partitions)
    finally:
        consumer.close()
        admin.close()


#: Undelivered events an error message names (by line number and event id; never by content).
_SHOWN = 5


def _event_id(value: bytes) -> str | None:
    """The event id of a wire-format line, to name it in an error message (never an identifier value)."""
    try:
        event = json.loads(value)
    except ValueError:
        return None
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return event_id[:64] if isinstance(event_id, str) else None


def _kafka_reason(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)[:200]  # kafka-python's errors start with their name
    return text if text.startswith(name) else f"{name}: {text}"


class _Deliveries:
    """What a producer got acknowledged, and what it did not, counted by the producer's callbacks."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.lock = threading.Lock()
        self.total = self.delivered = self.undelivered = 0
        self.pending: dict[int, bytes] = {}  # number -> value, sent and not yet acknowledged
        self.first: list[tuple[int, bytes]] = []  # the undelivered with the lowest numbers, to name them
        self.reasons: Counter[str] = Counter()  # error type -> how many
        self.examples: dict[str, str] = {}  # error type -> one message
        self.closed = False

    def track(self, number: int, value: bytes, future: Any) -> None:
        with self.lock:
            self.pending[number] = value
        future.add_callback(self._acknowledged, number)
        future.add_errback(self._failed, number)

    def _acknowledged(self, number: int, metadata: Any) -> None:
        with self.lock:
            if not self.closed and self.pending.pop(number, None) is not None:
                self.delivered += 1

    def _failed(self, number: int, exc: BaseException) -> None:
        with self.lock:
            value = self.pending.pop(number, None)
            if not self.closed and value is not None:
                self._fail(number, value, type(exc).__name__, _kafka_reason(exc))

    def fail(self, number: int, value: bytes, kind: str, reason: str) -> None:
        with self.lock:
            self._fail(number, value, kind, reason)

    def _fail(self, number: int, value: bytes, kind: str, reason: str) -> None:
        self.undelivered += 1
        self.reasons[kind] += 1
        self.examples.setdefault(kind, reason)
        if len(self.first) < _SHOWN or number < self.first[-1][0]:
            bisect.insort(self.first, (number, value))
            del self.first[_SHOWN:]

    def give_up(self) -> None:
        """Whatever is still unacknowledged counts as not delivered; later callbacks change nothing."""
        with self.lock:
            for number, value in sorted(self.pending.items()):
                self._fail(number, value, "no answer", f"no acknowledgement within {self.timeout:g} s")
            self.pending.clear()
            self.closed = True

    def failure(self, what: str, where: str) -> str:
        """The error message: how many were not delivered, which (by line number and event id), and why."""
        named = []
        for number, value in self.first:
            event_id = _event_id(value)
            named.append(f"{what} {number}" + (f" (event_id {json.dumps(event_id)})" if event_id else ""))
        more = self.undelivered - len(named)
        why = "; ".join(f"{self.examples[kind]} ({n} events)" for kind, n in self.reasons.most_common(3))
        return (
            f"{self.undelivered} of {self.total} events were not delivered to {where}: "
            f"{', '.join(named)}{f' and {more} more' if more else ''}. {self.delivered} delivered, each "
            f"acknowledged by the broker. Why: {why}.\n"
            "Events without an acknowledgement may still have reached the topic: sending the same lines again "
            "is safe, the workers apply an event id once."
        )


def _producer(bootstrap: str, timeout: float) -> Any:
    """A producer whose every send is acknowledged (acks=all) or reported failed within ``timeout`` seconds.

    Not idempotent: kafka-python's idempotent producer leaves batches unexpired while the broker does
    not answer, and the workers drop a redelivered event id anyway."""
    from kafka import KafkaProducer  # noqa: PLC0415

    ms, linger = max(1000, round(timeout * 1000)), 5
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=linger,
        delivery_timeout_ms=ms, request_timeout_ms=min(30_000, ms - linger), max_block_ms=ms, bootstrap_timeout_ms=ms,
    )  # fmt: skip


def _deliver(
    producer: Any,
    records: Iterable[tuple[str, int, bytes]],
    timeout: float,
    progress: Callable[[int], None] | None = None,
) -> _Deliveries:
    """Send (topic, number, value) records; wait for each acknowledgement, at most ``timeout`` s after the last send.

    ``number`` names a record in error messages (a line number). No acknowledgement after the wait, a
    send refused, or no metadata for the topic: counted as not delivered."""
    from kafka.errors import KafkaError, KafkaTimeoutError  # noqa: PLC0415

    report = _Deliveries(timeout)
    stopped: tuple[str, str] | None = None  # once the broker gave no metadata in time: the rest is not sent
    for topic, number, value in records:
        report.total += 1
        if stopped is not None:
            report.fail(number, value, *stopped)
            continue
        try:
            future = producer.send(topic, value)
        except KafkaTimeoutError as exc:  # each further send would block as long again
            stopped = (type(exc).__name__, f"not sent: {_kafka_reason(exc)}")
            report.fail(number, value, *stopped)
            continue
        except KafkaError as exc:  # this record alone (too large, ...)
            report.fail(number, value, type(exc).__name__, _kafka_reason(exc))
            continue
        report.track(number, value, future)
        if progress is not None:
            progress(report.total)
    # the producer expires a batch delivery_timeout_ms after it was opened; a little slack for its timer
    with contextlib.suppress(KafkaTimeoutError):
        producer.flush(timeout=timeout + 5)
    report.give_up()
    return report


def _close(producer: Any) -> None:
    from kafka.errors import KafkaTimeoutError  # noqa: PLC0415

    with contextlib.suppress(KafkaTimeoutError):  # records it could not finish were reported already
        producer.close(timeout=5)


def _ingest_records(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line, read as it comes (standard input streams)."""
    for number, line in _lines(path):
        value = line.rstrip(b"\r\n")
        if value.strip():
            yield number, value


def cmd_ingest(args: argparse.Namespace) -> int:
    """Produce a JSON-lines file to a touch topic, every event acknowledged by the broker; with --wait,
    return once the workers consumed it all."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    try:
        total = None if args.file == "-" else sum(1 for _ in _ingest_records(args.file))
    except OSError as exc:
        print(f"idstream ingest: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    settings = Settings()
    _logging(settings)
    found = servers(settings)
    topic = args.topic or settings.touch_topics[0]

    def progress(done: int) -> None:
        if done % 500 == 0 or done == total:
            if total is None:
                sys.stderr.write(f"\r{done} sent")
                sys.stderr.flush()
            else:
                _progress(done, total)

    try:
        producer = _producer(found.kafka, args.delivery_timeout)
    except KafkaError as exc:
        print(f"idstream ingest: nothing sent, the broker at {found.kafka} does not answer: {_kafka_reason(exc)}",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        records = ((topic, number, value) for number, value in _ingest_records(args.file))
        report = _deliver(producer, records, args.delivery_timeout, progress)
    finally:
        _close(producer)
    sys.stderr.write("\n")
    if report.undelivered:
        print(f"idstream ingest: {report.failure('line', topic)}", file=sys.stderr)
        return 1
    sys.stderr.write(f"delivered {report.delivered} events to {topic} (each acknowledged by the broker)\n")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while (lag := _group_lag(found.kafka, settings.app_id, settings.touch_topics)) > 0:
            if time.monotonic() > deadline:
                sys.stderr.write(f"still {lag} events to process after {args.timeout:.0f} s\n")
                return 1
            time.sleep(0.5)
        sys.stderr.write("all events processed\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every golden profile in Redis, one JSON object a line."""
    for profile in _store(Settings()).profiles():
        _dump(profile, sys.stdout)
    return 0


def cmd_connect_metrica(args: argparse.Namespace) -> int:
    """Pull the Metrica counter's visits (Logs API) into site_visit events, resuming from the checkpoint."""
    from datetime import UTC, datetime  # noqa: PLC0415
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    from streams.ingest_api import topic_for  # noqa: PLC0415
    from streams.pullers.metrica import DEFAULT_FIELDS, Checkpoint, LogsApi, period, pull  # noqa: PLC0415

    settings = Settings()
    _logging(settings)
    counter = args.counter or settings.metrica_counter
    if not counter or settings.metrica_token is None:
        print("idstream connect metrica: set IDSTREAM_METRICA_TOKEN and the counter (--counter or "
              "IDSTREAM_METRICA_COUNTER)", file=sys.stderr)  # fmt: skip
        return 2
    checkpoint = Path(args.checkpoint or settings.state_file.parent / f"metrica-{counter}.json")
    fields = [f.strip() for f in args.fields.split(",")] if args.fields else list(DEFAULT_FIELDS)
    try:
        held = Checkpoint.load(checkpoint)
        date1, date2 = period(held, args.date_from, args.date_to, datetime.now(UTC).date())
        found = servers(settings)
    except IdstreamError as exc:
        print(f"idstream connect metrica: {exc.message}", file=sys.stderr)
        return 2
    topic = topic_for("site_visit", settings.touch_topics)
    api = LogsApi(settings.metrica_url, settings.metrica_token.get_secret_value(), counter, retries=args.retries)
    from kafka.errors import KafkaError  # noqa: PLC0415

    try:
        producer = _producer(found.kafka, args.delivery_timeout)
    except KafkaError as exc:
        print(f"idstream connect metrica: the broker is unavailable ({type(exc).__name__})", file=sys.stderr)
        return 1

    def deliver(part: int, events: list[dict[str, Any]]) -> None:
        values = [json.dumps(e, ensure_ascii=False).encode() for e in events]
        report = _deliver(producer, ((topic, n, v) for n, v in enumerate(values, 1)), args.delivery_timeout)
        if report.undelivered:
            raise TransientError(f"part {part}: {report.failure('visit', topic)}")

    def progress(text: str) -> None:
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()

    try:
        done = pull(api, checkpoint, counter, date1=date1, date2=date2, fields=fields, deliver=deliver,
                    zone=ZoneInfo(settings.metrica_timezone), poll=args.poll, progress=progress)  # fmt: skip
    except IdstreamError as exc:
        sys.stderr.write("\n")
        print(f"idstream connect metrica: {exc.message} (checkpoint {checkpoint}: run again to resume)",
              file=sys.stderr)  # fmt: skip
        return 1 if exc.retriable else 2
    finally:
        _close(producer)
    sys.stderr.write(f"\nvisits {date1}..{date2} of counter {counter}: {len(done.parts_done)} parts to {topic}\n")
    return 0


def cmd_connect_direct(args: argparse.Namespace) -> int:
    """Pull Yandex Direct's cost per campaign and day (Reports API) into ad_spend messages."""
    from streams.pullers.direct import Reports, spend_rows  # noqa: PLC0415

    settings = Settings()
    _logging(settings)
    if settings.direct_token is None:
        print("idstream connect direct: set IDSTREAM_DIRECT_TOKEN", file=sys.stderr)
        return 2
    login = args.login or settings.direct_login
    checkpoint = Path(args.checkpoint or settings.state_file.parent / f"direct-{login or 'own'}.json")
    reports = Reports(settings.direct_url, settings.direct_token.get_secret_value(), login)

    def fetch(date1: str, date2: str) -> list[Any]:
        sys.stderr.write(f"Direct report {date1}..{date2}: waiting for it\n")
        tsv = reports.fetch(reports.body(date1, date2, vat=args.vat), patience=args.patience)
        return list(spend_rows(tsv, currency=args.currency, account=login or "", campaign_by=args.campaign))

    return _pull_spend("direct", settings, args, checkpoint, fetch, restated=3)  # Direct restates its last days


def _pull_spend(
    vendor: str,
    settings: Settings,
    args: argparse.Namespace,
    checkpoint: Path,
    fetch: Callable[[str, str], list[Any]],
    *,
    restated: int,
) -> int:
    """Pull a cabinet's cost for the period after the checkpoint (and the days it restates), produce it to the
    spend topic, and move the checkpoint once every row is acknowledged."""
    try:
        date1, date2 = _spend_period(checkpoint, args.date_from, args.date_to, restated=restated)
        found = servers(settings)
        rows = fetch(date1, date2)
        failed = _produce_spend(settings, found.kafka, rows, args.delivery_timeout)
    except IdstreamError as exc:
        return _spend_done(vendor, exc.message, 1 if exc.retriable else 2)
    if failed:
        return _spend_done(vendor, failed, 1)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(json.dumps({"last_finished": date2}), encoding="utf-8")
    return _spend_done(vendor, f"{len(rows)} spend rows {date1}..{date2} to {settings.spend_topic}", 0)


def _spend_done(vendor: str, message: str, code: int) -> int:
    sys.stderr.write(f"idstream connect {vendor}: {message}\n")
    return code


def _spend_period(checkpoint: Path, date_from: str | None, date_to: str | None, restated: int) -> tuple[str, str]:
    """The days to pull: as given; else from ``restated`` days before the last finished period to yesterday."""
    from datetime import UTC, date, datetime, timedelta  # noqa: PLC0415

    try:
        held = json.loads(checkpoint.read_text(encoding="utf-8")) if checkpoint.exists() else {}
    except ValueError:
        raise InvalidMessage.single("checkpoint", "unreadable", f"{checkpoint} is unreadable; move it away") from None
    date2 = date_to or (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    if date_from:
        return date_from, date2
    if held.get("last_finished"):
        return min((date.fromisoformat(held["last_finished"]) - timedelta(days=restated)).isoformat(), date2), date2
    return date2, date2


def _produce_spend(settings: Settings, kafka: str, rows: list[dict[str, Any]], timeout: float) -> str | None:
    """Validate and produce spend rows; None when each was acknowledged, else why not."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    from schemas.spend import decode_spend  # noqa: PLC0415

    values = [json.dumps(r, ensure_ascii=False) for r in rows]
    for value in values:
        decode_spend(value)
    try:
        producer = _producer(kafka, timeout)
    except KafkaError as exc:
        raise TransientError(f"the broker is unavailable ({type(exc).__name__})") from None
    try:
        report = _deliver(producer, ((settings.spend_topic, n, v.encode()) for n, v in enumerate(values, 1)), timeout)
    finally:
        _close(producer)
    return report.failure("row", settings.spend_topic) if report.undelivered else None


def cmd_connect_vkads(args: argparse.Namespace) -> int:
    """Pull VK Ads' cost per campaign and day into ad_spend messages."""
    from datetime import date  # noqa: PLC0415

    from streams.pullers.vkads import VkAds, spend_rows  # noqa: PLC0415

    settings = Settings()
    _logging(settings)
    if not settings.vkads_client_id or settings.vkads_client_secret is None:
        print("idstream connect vkads: set IDSTREAM_VKADS_CLIENT_ID and IDSTREAM_VKADS_CLIENT_SECRET", file=sys.stderr)
        return 2
    state = settings.state_file.parent
    checkpoint = Path(args.checkpoint or state / f"vkads-{settings.vkads_client_id}.json")
    token_file = Path(args.token_file or state / f"vkads-{settings.vkads_client_id}.token")
    api = VkAds(settings.vkads_url, settings.vkads_client_id, settings.vkads_client_secret.get_secret_value(),
                token_file)  # fmt: skip

    def fetch(date1: str, date2: str) -> list[Any]:
        return list(spend_rows(api, date.fromisoformat(date1), date.fromisoformat(date2), currency=args.currency,
                               source=args.source, medium=args.medium, campaign_by=args.campaign))  # fmt: skip

    return _pull_spend("vkads", settings, args, checkpoint, fetch, restated=7)


def _kafka_or_none(settings: Settings) -> str | None:
    """The broker the API writes to: configured, or the running `up`'s; None leaves the API read-only."""
    try:
        return servers(settings).kafka
    except IdstreamError:
        return settings.kafka_bootstrap_servers


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the lookup API (bearer tokens from IDSTREAM_API_TOKENS; without them, loopback only)."""
    import logging  # noqa: PLC0415

    from aiohttp import web  # noqa: PLC0415

    from streams.console import ConsoleOptions  # noqa: PLC0415
    from streams.lookup_api import ApiConfig, check_exposure, create_lookup_app  # noqa: PLC0415

    settings = Settings()
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    tokens = settings.token_bytes()
    check_exposure(host, tokens)
    _logging(settings)
    logging.getLogger("idstream.api").info("serving the lookup API on http://%s:%d", host, port)
    if not tokens:
        logging.getLogger("idstream.api").warning("no IDSTREAM_API_TOKENS: serving open, on loopback only")
    config = ApiConfig(
        redis_url(settings),
        settings.policy(),
        Normalizer(settings.normalizer_config()),
        settings.redis_prefix,
        tokens,
        settings.warehouse_url,
        settings.report_settings(),
        redis_timeout=settings.api_redis_timeout,
        redis_connections=settings.api_redis_connections,
        erasure_key=settings.erasure_key.get_secret_value().encode(),
        dedup_days=settings.dedup_days,
        max_future_skew=settings.max_future_skew or None,
        kafka=_kafka_or_none(settings),
        touch_topics=tuple(settings.touch_topics),
        dlq_topic=settings.dlq_topic,
        ingest_tokens=settings.ingest_token_bytes(),
        hook_secrets=settings.hook_secret_bytes(),
        hook_forms=settings.hook_forms,
        hook_timezone=settings.hook_timezone,
        amocrm_url=settings.amocrm_url,
        amocrm_token=settings.amocrm_token.get_secret_value() if settings.amocrm_token else None,
        bitrix24_url=settings.bitrix24_url.get_secret_value() if settings.bitrix24_url else None,
        bitrix24_app_token=settings.bitrix24_app_token.get_secret_value() if settings.bitrix24_app_token else None,
        console=ConsoleOptions(
            app_id=settings.app_id,
            changes_topic=settings.changes_topic,
            profiles_topic=settings.profiles_topic,
            spend_topic=settings.spend_topic,
            worker_metrics=tuple(settings.worker_metrics_urls),
        ),
    )
    web.run_app(create_lookup_app(config), host=host, port=port, print=None, access_log=None)
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    """The golden profile holding KIND VALUE (normalized as in the stream)."""
    from identity.card import summary  # noqa: PLC0415

    store = _store(Settings())
    asked = {"kind": args.kind, "value": args.value}
    ident = store.normalizer.normalize(args.kind, args.value)
    if not isinstance(ident, Identifier):
        _dump({"status": "invalid", **asked, "error": {"code": ident.reason, "message": ident.message}}, sys.stdout)
        return 2
    found = store.read_identifier(ident)
    if found is None:
        _dump({"status": "not_found", **asked}, sys.stdout)
        return 1
    if found.ambiguous:
        candidates = [summary(store.profile(pid) or {"profile_id": pid}) for pid in found.candidates]
        _dump({"status": "ambiguous", **asked, "candidates": candidates}, sys.stdout)
        return 0
    _dump({"status": "found", "profile_id": found.profile_id, "profile": found.profile}, sys.stdout)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """The evidence that joins identifiers (or holds a profile together), and why links were refused."""
    from identity.explain import explain  # noqa: PLC0415

    store = _store(Settings())
    pairs = list(args.pairs)
    if (args.profile is None) == (not pairs) or len(pairs) % 2 or len(pairs) > 4:
        print("idstream explain: give KIND VALUE [KIND VALUE], or --profile ID", file=sys.stderr)
        return 2
    asked: dict[str, Any] = {}
    if args.profile is not None:
        asked["profile_id"] = args.profile
    for name, (kind, value) in zip(("a", "b"), zip(pairs[::2], pairs[1::2], strict=True), strict=False):
        ident = store.normalizer.normalize(kind, value)
        if not isinstance(ident, Identifier):
            _dump({"status": "invalid", "kind": kind, "value": value, "error": ident.to_dict()}, sys.stdout)
            return 2
        asked[name] = ident
    answer = explain(store, store.policy, **asked)
    if answer is None:
        _dump({"status": "not_found"}, sys.stdout)
        return 1
    _dump(answer, sys.stdout)
    return 0


class _Service:
    """The accuracy harness's way through the running service: produce to Kafka, wait, read Redis."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings, self.timeout = settings, timeout
        self.bootstrap = servers(settings).kafka
        self.delivery_timeout = min(timeout, 120.0)
        self.producer = _producer(self.bootstrap, self.delivery_timeout)
        self.store = _store(settings)

    def send(self, touches: Sequence[Touch]) -> None:
        topic = self.settings.touch_topics[0]
        records = ((topic, i, TouchEvent.from_touch(t).model_dump_json().encode()) for i, t in enumerate(touches, 1))
        report = _deliver(self.producer, records, self.delivery_timeout)
        if report.undelivered:
            raise TransientError(report.failure("event", topic))
        deadline = time.monotonic() + self.timeout
        while _group_lag(self.bootstrap, self.settings.app_id, self.settings.touch_topics) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not consume the stream within {self.timeout:.0f} s")
            time.sleep(0.5)

    def match(self, ident: Identifier) -> Any:
        return self.store.match(ident)

    def explain(self, a: Identifier, b: Identifier) -> Any:
        from identity.explain import explain  # noqa: PLC0415

        return explain(self.store, self.store.policy, a=a, b=b)


def _situations(args: argparse.Namespace) -> Any:
    """The generator's situation shares from ``--situation NAME=SHARE`` and ``--split-share`` (None: invalid, said)."""
    from streams.generate import Situations  # noqa: PLC0415

    shares = dict(args.situation or ())
    if args.split_share is not None:
        shares["call_then_email_form"] = args.split_share
    try:
        return Situations().with_shares(**shares)
    except ValueError as exc:
        print(f"idstream {args.command}: {exc}", file=sys.stderr)
        return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Replay generated streams (or the Senzing truth set) through idstream, in several arrival orders, and score
    them against the truth: overall, per situation, the shared-value and erasure counts, the missed pairs."""
    from streams.evaluate import (  # noqa: PLC0415
        StoreResolver,
        evaluate_orders,
        render_run,
        render_summary,
        senzing_stream,
    )
    from streams.generate import JUNK_EMAILS  # noqa: PLC0415

    settings = Settings()
    seeds = [args.seed] if args.seed is not None else args.seeds
    runs = 1 if args.senzing else len(seeds)
    if args.through == "service" and (runs > 1 or args.orders > 1):
        print(
            "idstream evaluate: through the service, evaluate one seed in stream order (--seeds S --orders 1): the "
            "service's graph cannot be reset between runs; --through memory or redis runs them all",
            file=sys.stderr,
        )
        return 2
    plan = None if args.senzing else _situations(args)
    if plan is None and not args.senzing:
        return 2
    if args.through == "memory":

        def make_resolver() -> Any:
            return StoreResolver(settings.graph())

    elif args.through == "redis":
        store = _store(settings)

        def make_resolver() -> Any:
            store.clear()
            return StoreResolver(store)

    else:
        service = _Service(settings, args.timeout)

        def make_resolver() -> Any:
            return service

    options: dict[str, Any] = {
        "orders": args.orders,
        "normalizer": Normalizer(settings.normalizer_config()),
        "policy": settings.policy(),
        "erase": args.erase,
        "examples": args.examples,
    }
    started = time.perf_counter()
    reports: dict[str, Any] = {}
    if args.senzing:
        touches, truth = senzing_stream(Path(args.senzing))
        dataset = "senzing-truthsets/demo"
        reports["senzing"] = evaluate_orders(make_resolver, touches, dict(truth), **options)
        if not args.json:
            print(render_run(f"Senzing truth set, {args.erase} erased", reports["senzing"]) + "\n", flush=True)
    else:
        dataset = f"generated persons={args.persons} seeds={','.join(map(str, seeds))}"
        junk = [("email", j) for j in JUNK_EMAILS]
        for seed in seeds:
            stream = generate(args.persons, seed, plan)
            report = evaluate_orders(
                make_resolver,
                stream.touches,
                dict(stream.truth),
                shuffle_seed=seed,
                junk=junk,
                situations=stream.situations,
                names=stream.names,
                **options,
            )
            reports[f"seed {seed}"] = report
            if not args.json:
                title = f"seed {seed}: {args.persons:,} generated persons, {args.erase} erased after the stream"
                print(render_run(title, report) + "\n", flush=True)
    seconds = time.perf_counter() - started
    if args.json:
        shares = plan.shares() if plan is not None else None
        _dump(
            {
                "dataset": dataset,
                "through": args.through,
                "situations": shares,
                "seconds": round(seconds, 1),
                "runs": reports,
            },
            sys.stdout,
        )
    else:
        print(render_summary(reports))
        print(f"{dataset}, through {args.through}, {args.orders} arrival order(s): {seconds:.1f} s")
    return 0


def cmd_crm_mirror(args: argparse.Namespace) -> int:
    """Keep a local SQLite mirror of profiles from profiles.updates (the example subscriber)."""
    from streams.crm_mirror import Mirror, follow  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
    mirror = Mirror(args.db)
    try:
        total = 0
        for applied in follow(mirror, found.kafka, settings.profiles_topic, forever=args.follow):
            total += applied
            sys.stderr.write(f"\rapplied {total} messages")
        profiles = mirror.profiles()
        sys.stderr.write(f"\nmirror holds {len(profiles)} profiles and {len(mirror.deals())} deals\n")
        if args.check:
            exported = list(_store(settings).profiles())
            if profiles != exported:
                mine, theirs = {p["profile_id"] for p in profiles}, {p["profile_id"] for p in exported}
                other = sum(1 for p in profiles if p["profile_id"] in theirs and p not in exported)
                sys.stderr.write(
                    f"mirror differs from export: {len(mine - theirs)} only in the mirror, "
                    f"{len(theirs - mine)} only in Redis, {other} with other content\n"
                )
                return 1
            sys.stderr.write("mirror equals `idstream export`\n")
        return 0
    finally:
        mirror.close()


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on a topic right now, without joining a consumer group."""
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    from streams.rebuild import end_offsets  # noqa: PLC0415

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = end_offsets(consumer, partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(200).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def _reachable(host: str) -> str:
    """How this machine reaches a server listening on ``host`` (a wildcard address: by loopback)."""
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - compared, not bound
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _scrubber(settings: Settings) -> Callable[[str], str]:
    """Replaces every configured secret, and any password in a URL, in text bound for the terminal."""
    secrets = sorted({s for s in settings.secret_values() if len(s) >= 4}, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return redact_url(text)

    return scrub


class _UpFailed(Exception):
    """`up` (or `demo`) cannot go on: a child exited or did not answer. The message says which, and why."""


@dataclasses.dataclass(eq=False)
class _Child:
    """A service `up` runs as a child process; its stderr goes on to ours (secrets scrubbed) and its tail is kept."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    probe: str | None  # a URL that answers 200 once the child has started
    tail: deque[str]
    reader: threading.Thread

    @classmethod
    def start(
        cls, name: str, argv: list[str], env: dict[str, str], scrub: Callable[[str], str], probe: str | None
    ) -> _Child:
        process = subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], env=env, stderr=subprocess.PIPE)  # noqa: S603
        tail: deque[str] = deque(maxlen=30)

        def pump() -> None:
            for raw in process.stderr or ():
                line = scrub(raw.decode(errors="replace"))
                tail.append(line)
                with contextlib.suppress(OSError, ValueError):  # our stderr closed: keep the tail all the same
                    sys.stderr.write(line)
                    sys.stderr.flush()

        reader = threading.Thread(target=pump, name=f"idstream-{argv[0]}-stderr", daemon=True)
        reader.start()
        return cls(name, argv, process, probe, tail, reader)

    def exited(self, when: str = "") -> str | None:
        """None while it runs; else which child stopped, how, and its last lines on stderr."""
        code = self.process.poll()
        if code is None:
            return None
        self.reader.join(2)  # the lines it wrote just before it exited
        how = f"exited with code {code}"
        if code < 0:
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-code).name}"
        last = "".join(line if len(line) <= 400 else line[:400] + "...\n" for line in list(self.tail)[-12:]).strip()
        said = f"its last words:\n{textwrap.indent(last, '    ')}" if last else "it wrote nothing on stderr"
        return f"the {self.name} (`idstream {' '.join(self.argv)}`) {how}{when}; {said}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def reap(self) -> None:
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.reader.join(2)


@dataclasses.dataclass
class _Runtime:
    found: Servers
    children: list[_Child]
    warehouse_url: str
    console: str = ""

    def check(self) -> None:
        """Raise _UpFailed if any child has exited: a runtime with a dead worker or API must not look alive."""
        for child in self.children:
            why = child.exited()
            if why is not None:
                raise _UpFailed(why)


def _answers(url: str) -> str | None:
    """None when ``url`` answers 200; else what it answered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own child's probe
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.read()[:200].decode(errors='replace')}"
    except OSError as exc:
        return str(getattr(exc, "reason", exc))


def _await_start(children: list[_Child], timeout: float) -> None:
    """Until every child with a probe answers it; _UpFailed as soon as a child exits, or at the timeout."""
    deadline = time.monotonic() + timeout
    waiting = {child.name: child.probe for child in children if child.probe}
    answered: dict[str, str] = {}
    while True:
        for child in children:
            why = child.exited(" during start-up")
            if why is not None:
                raise _UpFailed(why)
        for name, probe in list(waiting.items()):
            answer = _answers(probe)
            if answer is None:
                del waiting[name]
            else:
                answered[name] = answer
        if not waiting:
            return
        if time.monotonic() > deadline:
            late = [f"the {name} did not answer {probe} within {timeout:g} s ({answered[name]})"
                    for name, probe in waiting.items()]  # fmt: skip
            raise _UpFailed("; ".join(late))
        time.sleep(0.2)


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise _UpFailed(
            f"Redis at {redact_url(url)} does not answer: {type(exc).__name__}: {redact_url(str(exc))}"
        ) from None
    finally:
        client.close()


@contextlib.contextmanager
def _runtime(
    settings: Settings,
    command: str,
    startup_timeout: float,
    *,
    own_warehouse: bool = False,
    data_dir: Path | None = None,
) -> Iterator[_Runtime]:
    """Kafka and Redis (embedded unless configured), the topics, a worker, the lookup API, the warehouse (and
    the webhook agent). Yields once they answer, having printed their addresses (no password); if a child
    exits (during start-up or later) or does not answer in time, says which and why, stops everything, and
    raises _UpFailed. ``own_warehouse``: unless one is configured, a warehouse of this run's own, which lives
    and dies with its embedded broker and Redis (a demo reports only its own persons). ``data_dir``: the embedded
    broker (its topics and group offsets, on a local object store), Redis (an append-only file) and, unless one is
    configured, the SQLite warehouse live there and survive the run; one ``up`` at a time may use it."""
    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.embedded import ChildServer, free_port, start_broker, start_redis  # noqa: PLC0415

    servers_started: list[ChildServer] = []
    children: list[_Child] = []
    remembered = False
    workdir = Path(tempfile.mkdtemp(prefix="idstream-up-"))
    scrub = _scrubber(settings)
    lock: IO[str] | None = None
    try:
        if data_dir is not None:
            lock = _lock_data_dir(data_dir)
        kafka = settings.kafka_bootstrap_servers
        if not kafka:
            if data_dir is not None:
                from streams.local_s3 import s3_env, start_object_store  # noqa: PLC0415

                objects = start_object_store(data_dir / "broker", workdir=workdir / "objects")
                servers_started.append(objects)
                broker = start_broker(workdir / "broker", storage="s3://tansu/", env=s3_env(objects.url))
                servers_started.append(broker)
            else:
                servers_started.append(start_broker(workdir / "broker"))
            kafka = servers_started[-1].url
        redis_url = settings.redis_url
        if not redis_url:
            redis_dir = data_dir / "redis" if data_dir is not None else workdir / "redis"
            servers_started.append(start_redis(redis_dir, appendonly=True))
            redis_url = servers_started[-1].url
        _check_redis(redis_url)
        ensure_topics(settings, kafka)
        env = {**os.environ, "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka, "IDSTREAM_REDIS_URL": redis_url}
        warehouse_url = settings.warehouse_url
        if "warehouse_url" not in settings.model_fields_set and (own_warehouse or data_dir is not None):
            home = data_dir if data_dir is not None else workdir
            warehouse_url = env["IDSTREAM_WAREHOUSE_URL"] = f"sqlite:///{home / 'warehouse.db'}"
        found = Servers(kafka, redis_url, os.getpid(), warehouse_url)
        remember(settings.state_file, found)  # `idstream report` and the others find this run's servers
        remembered = True
        # a terminal, not a log pipeline: warnings as text, unless the operator asked for more
        env.setdefault("IDSTREAM_LOG_FORMAT", "text")
        env.setdefault("IDSTREAM_LOG_LEVEL", "WARNING")
        # the worker's /healthz tells it started; on a port of its own unless one was configured
        metrics_port = settings.metrics_port if "metrics_port" in settings.model_fields_set else free_port()
        worker_env = {**env, "IDSTREAM_METRICS_PORT": str(metrics_port)}
        probe = f"http://{_reachable(settings.metrics_host)}:{metrics_port}/healthz"
        children.append(_Child.start("worker", ["worker"], worker_env, scrub, probe))
        api_port = free_port()
        lookup = f"http://{_reachable(settings.api_host)}:{api_port}"
        api_env = {**env}
        if "worker_metrics_urls" not in settings.model_fields_set:  # the console's Health page reads the worker
            api_env["IDSTREAM_WORKER_METRICS_URLS"] = json.dumps([probe.removesuffix("/healthz") + "/metrics"])
        children.append(
            _Child.start("lookup API", ["serve", "--port", str(api_port)], api_env, scrub, lookup + "/readyz")
        )
        # the warehouse (SQLite by default: the demo needs no database server); it serves no probe
        children.append(_Child.start("warehouse", ["warehouse"], env, scrub, None))
        if settings.webhooks:
            children.append(_Child.start("webhook agent", ["webhooks"], env, scrub, None))
        _await_start(children, startup_timeout)
        console = f"{lookup}/console/"
        print(f"kafka={redact_url(kafka)} redis={redact_url(redis_url)} lookup={lookup}", flush=True)
        print(f"console: {console}  (channels, funnel, calls, a person's card, review, health)", flush=True)
        if data_dir is not None:
            _say_continuing(settings, redis_url, data_dir)
        yield _Runtime(found, children, warehouse_url, console)
    except _UpFailed as exc:
        print(f"idstream {command}: {exc}\nidstream {command}: stopping", file=sys.stderr, flush=True)
        raise
    finally:
        # a second Ctrl-C must not cut the cleanup short and leave servers running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children:
            child.stop()
        for child in children:
            child.reap()
        for server in reversed(servers_started):
            server.stop()
        if remembered:
            forget(settings.state_file)
        if lock is not None:
            lock.close()  # releases the data directory for the next `up`
        shutil.rmtree(workdir, ignore_errors=True)


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir`` for this run (released when the process ends, however it ends), or say who holds it."""
    import fcntl  # noqa: PLC0415 - POSIX only, like the embedded servers

    private_directory(data_dir)
    handle = (data_dir / "lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise _UpFailed(
            f"the data directory {data_dir} is in use by `idstream up` (pid {holder}): stop it, or give another "
            "--data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _say_continuing(settings: Settings, redis_url: str, data_dir: Path) -> None:
    """Tell whether this run continues a previous one (and with how many persons) or starts a new directory."""
    client = redis.Redis.from_url(redis_url)
    try:
        persons = len(settings.redis_store(client))
    finally:
        client.close()
    if persons:
        print(f"data: {data_dir} (continuing: {persons} persons from the previous run)", flush=True)
    else:
        print(f"data: {data_dir} (new: nothing resolved yet)", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or connect to) Kafka and Redis, create topics, run a worker, the lookup API and the warehouse
    until Ctrl-C; exit 1 (stopping the rest) as soon as one of them exits."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        settings = Settings()
        data_dir = args.data_dir if args.data_dir is not None else settings.data_dir
        with _runtime(settings, "up", args.startup_timeout, data_dir=data_dir.expanduser()) as runtime:
            while True:
                runtime.check()
                time.sleep(0.5)
    except _UpFailed:
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a realistic synthetic touch stream (wire format v1, JSON lines)."""
    plan = _situations(args)
    if plan is None:
        return 2
    stream = generate(args.persons, args.seed, plan)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(args.out).open("w", encoding="utf-8")) if args.out else sys.stdout
        for touch in stream.touches:
            out.write(TouchEvent.from_touch(touch).model_dump_json() + "\n")
    print(
        f"{len(stream.touches)} events for {stream.persons} persons ({stream.redeliveries} redelivered, "
        f"{stream.late} CRM events late, {stream.shared_office_phones} office switchboards)",
        file=sys.stderr,
    )
    lived = Counter(stream.situations.values())
    print("persons by situation: " + ", ".join(f"{name} {n}" for name, n in sorted(lived.items())), file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`up`, plus a generated stream of persons ingested and a short tour of the result."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    settings = Settings()
    try:
        with _runtime(settings, "demo", args.startup_timeout, own_warehouse=True) as runtime:
            found = runtime.found
            stream = generate(args.persons, args.seed)
            values = [TouchEvent.from_touch(t).model_dump_json().encode() for t in stream.touches]
            values.insert(len(values) // 2, b'{"event_id": "broken-1", "type": "call"}')
            started = time.monotonic()
            topics = settings.touch_topics
            _produce(found, ((topics[i % len(topics)], i, value) for i, value in enumerate(values, 1)))
            print(f"ingesting {len(values)} events for {stream.persons} generated persons ...", flush=True)
            while _group_lag(found.kafka, settings.app_id, settings.touch_topics) > 0:
                runtime.check()
                time.sleep(0.5)
            _tour(
                settings, found, events=len(values), seconds=time.monotonic() - started, stream=stream,
                console=runtime.console,
            )  # fmt: skip
            _channels(settings, runtime, stream, args.seed)
            while True:
                runtime.check()
                time.sleep(0.5)
    except _UpFailed:
        return 1
    except KeyboardInterrupt:
        return 0


def _produce(found: Servers, records: Iterable[tuple[str, int, bytes]], timeout: float = 120.0) -> None:
    """Every record acknowledged by the broker, or _UpFailed naming what was not."""
    producer = _producer(found.kafka, timeout)
    try:
        report = _deliver(producer, records, timeout)
    finally:
        _close(producer)
    if report.undelivered:
        raise _UpFailed(report.failure("event", "the broker"))


def _channels(settings: Settings, runtime: _Runtime, stream: GeneratedStream, seed: int) -> None:
    """Produce the generated ad spend, wait for the warehouse to catch up, print the channel report."""
    from sinks.warehouse import connect  # noqa: PLC0415
    from sinks.warehouse.report import render  # noqa: PLC0415
    from streams.generate import ad_spend  # noqa: PLC0415

    found = runtime.found
    spend = enumerate(ad_spend(stream, seed), 1)
    _produce(found, ((settings.spend_topic, i, json.dumps(body).encode()) for i, body in spend))
    topics = [*settings.touch_topics, settings.profiles_topic, settings.spend_topic]
    deadline = time.monotonic() + 120
    while _group_lag(found.kafka, f"{settings.app_id}-warehouse", topics) > 0 and time.monotonic() < deadline:
        runtime.check()
        time.sleep(0.5)
    report = settings.report_settings().report(connect(runtime.warehouse_url), None, None, None)
    shown = dataclasses.replace(report, rows=report.rows[:TOUR_CHANNELS])
    more = len(report.rows) - len(shown.rows)
    print(f"\nthe top {len(shown.rows)} channels by revenue, from the warehouse ({redact_url(runtime.warehouse_url)}):")
    print(render(shown, "table") + (f"  ... and {more} more channels\n" if more > 0 else ""))
    print("  idstream report channels --model linear --format csv\n  idstream report channels --plot channels.png")


#: Channels the demo's tour shows (the report has them all).
TOUR_CHANNELS = 10


def _showcase(profiles: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """A person worth showing: a name, several browsers, a call and a deal, the most touches among those."""

    def worth(p: dict[str, Any]) -> tuple[int, ...]:
        ids, counts = p.get("identifiers", {}), p.get("touch_counts", {})
        browsers = len(ids.get("ga_client_id", [])) + len(ids.get("ym_client_id", []))
        won = any(d.get("status") == "won" for d in p.get("deals", {}).values())
        return (bool(p.get("display_name")), won, bool(p.get("deals")), counts.get("call", 0) > 0,
                min(browsers, 3), sum(counts.values()))  # fmt: skip

    return max(profiles, key=worth, default=None)


def _shared_phone(store: Any, profiles: Sequence[dict[str, Any]]) -> tuple[str, int] | None:
    """A phone judged shared (an office switchboard), and how many persons a lookup names: a shared value keeps
    a "person" of its own holding nothing else, so look among those."""
    lone = [p["identifiers"]["phone"][0] for p in profiles if list(p.get("identifiers", {})) == ["phone"]]
    for phone in lone[:500]:
        found = store.match(Identifier("phone", phone))
        if found is not None and found.shared and len(found.candidates) > 1:
            return phone, len(found.candidates)
    return None


def _card(profile: dict[str, Any]) -> str:
    """A person as the call center sees them, in a few lines."""
    ids = profile.get("identifiers", {})
    browsers = len(ids.get("ga_client_id", [])) + len(ids.get("ym_client_id", []))
    deals = profile.get("deals", {})
    lines = [
        f"  {profile.get('display_name') or '(no name)'}   {profile['profile_id']}",
        f"  phones {', '.join(ids.get('phone', [])) or '-'};  e-mails {', '.join(ids.get('email', [])) or '-'};  "
        f"{browsers} browser ids;  CRM {', '.join(ids.get('crm_contact_id', [])) or '-'}",
        "  touches: " + ", ".join(f"{n} {t}" for t, n in sorted(profile.get("touch_counts", {}).items())),
    ]
    for deal_id, deal in list(deals.items())[:2]:
        credit = ((deal.get("attribution") or {}).get("models") or {}).get("last_non_direct") or []
        first = credit[0] if credit else None
        channel = f"{first['source']}/{first['medium']}" if first else "-"
        amount = f", {deal['amount']:,.0f}" if isinstance(deal.get("amount"), int | float) else ""
        lines.append(f"  deal {deal_id}: {deal.get('stage')} ({deal.get('status')}{amount}), credited to {channel}")
    return "\n".join(lines)


def _tour(
    settings: Settings, found: Servers, *, events: int, seconds: float, stream: GeneratedStream, console: str = ""
) -> None:
    generated = stream.persons
    client = redis.Redis.from_url(found.redis)
    store = settings.redis_store(client)
    changes = [json.loads(v) for _, v in read_topic(found.kafka, settings.changes_topic) if v]
    letters = read_topic(found.kafka, settings.dlq_topic)
    kinds = Counter(c["type"] for c in changes)
    profiles = list(store.profiles())
    best = _showcase(profiles)
    phone = ((best or {}).get("identifiers", {}).get("phone") or ["+70000000000"])[0]
    shared = _shared_phone(store, profiles)
    ambiguous = ""
    if shared is not None:
        ambiguous = (f"\nan office switchboard is nobody's: `idstream lookup phone \"{shared[0]}\"` answers ambiguous,"
                     f" with the {shared[1]} persons seen calling from it\n")  # fmt: skip
    card = _card(best) if best is not None else "  (nobody)"
    pages = ""
    if console:
        pages = f"\nopen the console: {console}\n"
        if best is not None:
            pages += f"  this person's card: {console}persons/{best['profile_id']}\n"
        if shared is not None:
            pages += f"  the switchboard:    {console}persons?{urlencode({'q': shared[0]})}\n"
    print(
        f"""{pages}
processed {events} events in {seconds:.1f} s, one worker, its consumer-group join included
persons found:        {len(store):>6}   (generated: {generated}; switchboards, info@ mailboxes and family
                              computers are recognized as shared and glue nobody)
merges:               {len(store.redirects):>6}   retired profile ids, each redirecting to its survivor
refused merges:       {kinds["conflict"]:>6}   a second CRM contact, too many phones, ... (identity.changes)
rejected identifiers: {kinds["rejected_identifiers"]:>6}   events with junk or invalid values (identity.changes)
dead letters:         {len(letters):>6}   malformed input, with its bytes and the reason ({settings.dlq_topic})

one person, as the call center sees them:
{card}
{ambiguous}
try, in another terminal:
  idstream lookup phone "{phone}"
  idstream explain --profile {(best or {}).get("profile_id", "p_...")}
  idstream export | head -n 3
Ctrl-C stops everything.""",
        flush=True,
    )


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not 1 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError(f"{text}: give seconds from 1 to 86400")
    return seconds


def _startup_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--startup-timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long the worker and the lookup API may take to answer before it gives up (default 60)",
    )


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas, not {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a share is a number from 0 to 1, not {text!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is a number from 0 to 1, not {text!r}")
    return share


def _situation_share(text: str) -> tuple[str, float]:
    from streams.generate import SITUATIONS  # noqa: PLC0415

    name, sep, value = text.partition("=")
    if not sep or name.strip() not in SITUATIONS:
        raise argparse.ArgumentTypeError(f"give NAME=SHARE with NAME one of {', '.join(SITUATIONS)}; got {text!r}")
    return name.strip(), _share(value)


def _situation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split-share",
        type=_share,
        metavar="SHARE",
        help="share of the persons who split their contacts across a call and an e-mail-only form "
        "(call_then_email_form; default 0.1; 0.333 for the target stream)",
    )
    parser.add_argument(
        "--situation",
        type=_situation_share,
        action="append",
        metavar="NAME=SHARE",
        help="share of the persons living a situation (repeatable; 0 turns it off); see streams/generate.py",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idstream", description="Real-time identity resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    schema = sub.add_parser("schema", help="the wire contract").add_subparsers(dest="schema_command", required=True)
    export = schema.add_parser("export", help="write the JSON Schema of every message into DIR")
    export.add_argument("directory")
    export.set_defaults(func=cmd_schema_export)

    normalize = sub.add_parser("normalize", help="show how values of a kind normalize")
    normalize.add_argument("kind")
    normalize.add_argument("values", nargs="+")
    normalize.set_defaults(func=cmd_normalize)

    resolve = sub.add_parser("resolve", help="resolve a JSON-lines file of touch events offline")
    resolve.add_argument("file", help="path, or - for standard input")
    resolve.add_argument("--changes", action="store_true", help="print each event's outcome instead of profiles")
    resolve.set_defaults(func=cmd_resolve)

    up = sub.add_parser("up", help="start the embedded runtime (or use configured servers) and a worker")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the embedded broker's topics, Redis and the warehouse here between runs "
        "(default IDSTREAM_DATA_DIR, ~/.idstream/data); a restarted `up` continues where it stopped",
    )
    _startup_timeout(up)
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="up, plus a generated stream ingested and a short tour")
    demo.add_argument("--persons", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=1)
    _startup_timeout(demo)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="write a realistic synthetic touch stream as JSON lines")
    gen.add_argument("--persons", type=int, default=2000)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--out", help="file to write; default standard output")
    _situation_options(gen)
    gen.set_defaults(func=cmd_generate)

    worker = sub.add_parser("worker", help="run a Faust worker")
    worker.add_argument("--loglevel", default=None, help="overrides IDSTREAM_LOG_LEVEL")
    worker.set_defaults(func=cmd_worker)

    rebuild = sub.add_parser("rebuild", help="replay the touch topics into an empty Redis graph (workers stopped)")
    rebuild.add_argument("--force", action="store_true", help="delete this deployment's graph first")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")
    rebuild.set_defaults(func=cmd_rebuild)
    topics = sub.add_parser("topics", help="create every topic (idempotent; a deployment's init step)")
    topics.set_defaults(func=cmd_topics)
    webhooks = sub.add_parser("webhooks", help="run the webhook agent (delivers triggers over HTTP)")
    webhooks.add_argument("--loglevel", default=None, help="overrides IDSTREAM_LOG_LEVEL")
    webhooks.set_defaults(func=cmd_webhooks)

    ingest = sub.add_parser("ingest", help="produce a JSON-lines file of touch events")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--topic", help="default: the first touch topic")
    ingest.add_argument("--wait", action="store_true", help="return once the workers processed everything")
    ingest.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits for the workers")
    ingest.add_argument(
        "--delivery-timeout",
        type=_positive_seconds,
        default=120.0,
        metavar="SECONDS",
        help="each event must be acknowledged by the broker within this many seconds of its send (and the "
        "command waits at most this long after the last line); else it exits 1 naming what was not delivered "
        "(default 120)",
    )
    ingest.set_defaults(func=cmd_ingest)

    crm = sub.add_parser("crm-mirror", help="example subscriber: mirror profiles.updates into SQLite")
    crm.add_argument("--db", default="crm-mirror.sqlite", help="SQLite file (offsets are kept in it too)")
    crm.add_argument("--follow", action="store_true", help="keep consuming instead of stopping when caught up")
    crm.add_argument("--check", action="store_true", help="compare the mirror with `idstream export`")
    crm.set_defaults(func=cmd_crm_mirror)

    export = sub.add_parser("export", help="print every golden profile as JSON lines")
    export.set_defaults(func=cmd_export)

    connect = sub.add_parser("connect", help="pull a vendor's API into touch events (resumable)")
    vendors = connect.add_subparsers(dest="vendor", required=True)
    metrica = vendors.add_parser("metrica", help="Yandex Metrica visits (Logs API) into site_visit events")
    metrica.add_argument("--counter", help="the counter id (default IDSTREAM_METRICA_COUNTER)")
    metrica.add_argument("--from", dest="date_from", help="first day, YYYY-MM-DD (default: resume from the checkpoint)")
    metrica.add_argument("--to", dest="date_to", help="last day (default yesterday: Metrica has no data for today)")
    metrica.add_argument("--fields", help="comma-separated Logs API fields (default: idstream's visit fields)")
    metrica.add_argument("--checkpoint", help="checkpoint file (default ~/.idstream/metrica-<counter>.json)")
    metrica.add_argument("--poll", type=float, default=20.0, help="seconds between status checks")
    metrica.add_argument("--retries", type=int, default=5, help="retries of a call the API asks to repeat")
    metrica.add_argument("--delivery-timeout", type=float, default=30.0)
    metrica.set_defaults(func=cmd_connect_metrica)

    direct = vendors.add_parser("direct", help="Yandex Direct cost per campaign and day into ad_spend")
    direct.add_argument("--login", help="the advertiser's login (default IDSTREAM_DIRECT_LOGIN; agencies need it)")
    direct.add_argument("--from", dest="date_from", help="first day (default: three days before the last run's end)")
    direct.add_argument("--to", dest="date_to", help="last day (default yesterday)")
    direct.add_argument("--currency", default="RUB", help="the account's currency (ISO 4217)")
    direct.add_argument("--campaign", choices=["name", "id"], default="name",
                        help="what the ads' utm_campaign carries: the campaign's name or its id")  # fmt: skip
    direct.add_argument("--no-vat", dest="vat", action="store_false", help="costs without VAT (default: with)")
    direct.add_argument("--checkpoint", help="checkpoint file (default ~/.idstream/direct-<login>.json)")
    direct.add_argument("--patience", type=float, default=3600.0, help="seconds to wait for an offline report")
    direct.add_argument("--delivery-timeout", type=float, default=30.0)
    direct.set_defaults(func=cmd_connect_direct)

    vkads = vendors.add_parser("vkads", help="VK Ads cost per campaign and day into ad_spend")
    vkads.add_argument("--from", dest="date_from", help="first day (default: seven days before the last run's end)")
    vkads.add_argument("--to", dest="date_to", help="last day (default yesterday)")
    vkads.add_argument("--currency", default="RUB", help="the account's currency (ISO 4217)")
    vkads.add_argument("--source", default="vk", help="utm_source of VK Ads traffic in your links")
    vkads.add_argument("--medium", default="cpc", help="utm_medium of VK Ads traffic in your links")
    vkads.add_argument("--campaign", choices=["name", "id"], default="name", help="what utm_campaign carries")
    vkads.add_argument("--checkpoint", help="checkpoint file (default ~/.idstream/vkads-<client>.json)")
    vkads.add_argument("--token-file", help="where the access token is kept (default ~/.idstream/vkads-<client>.token)")
    vkads.add_argument("--delivery-timeout", type=float, default=30.0)
    vkads.set_defaults(func=cmd_connect_vkads)

    serve = sub.add_parser("serve", help="serve the lookup API")
    serve.add_argument("--host", help="default: IDSTREAM_API_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: IDSTREAM_API_PORT (8080)")
    serve.set_defaults(func=cmd_serve)

    lookup = sub.add_parser("lookup", help="the golden profile holding an identifier")
    lookup.add_argument("kind")
    lookup.add_argument("value")
    lookup.set_defaults(func=cmd_lookup)

    evaluate = sub.add_parser(
        "evaluate",
        help="score idstream against the truth of generated streams (per situation, in several arrival orders) "
        "or of the Senzing truth set",
    )
    evaluate.add_argument("--persons", type=int, default=3000, help="persons per generated stream (default 3000)")
    evaluate.add_argument(
        "--seeds", type=_seeds, default=[1, 2, 3], metavar="S,S,...", help="one stream per seed (default 1,2,3)"
    )
    evaluate.add_argument("--seed", type=int, help="a single seed (the same as --seeds S)")
    evaluate.add_argument(
        "--orders",
        type=int,
        default=3,
        help="arrival orders per stream: its own, then seeded shuffles of the whole stream (default 3)",
    )
    evaluate.add_argument("--erase", type=int, default=20, help="persons to erase after the stream (then re-send "
                          "their history); erase requests inside the stream are always honoured")  # fmt: skip
    _situation_options(evaluate)
    evaluate.add_argument("--senzing", metavar="DIR", help="the Senzing truth-sets folder, not a generated stream")
    evaluate.add_argument(
        "--through",
        choices=["service", "redis", "memory"],
        default="memory",
        help="memory (default): a fresh in-process graph per run; redis: the configured Redis, cleared before each "
        "run; service: produce to the running service's topic and read its Redis (one seed, stream order only)",
    )
    evaluate.add_argument("--examples", type=int, default=3, help="examples of missed pairs per cause (default 3)")
    evaluate.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    evaluate.add_argument("--timeout", type=float, default=600.0)
    evaluate.set_defaults(func=cmd_evaluate)

    warehouse = sub.add_parser("warehouse", help="feed the SQL warehouse from the topics (or just migrate it)")
    warehouse.add_argument("action", nargs="?", choices=["run", "migrate"], default="run")
    warehouse.add_argument("--loglevel", default=None, help="overrides IDSTREAM_LOG_LEVEL")
    warehouse.set_defaults(func=cmd_warehouse)

    report = sub.add_parser("report", help="reports from the warehouse").add_subparsers(dest="report", required=True)
    channels = report.add_parser("channels", help="per source/medium/campaign: leads, deals, revenue, cost, ROMI")
    channels.add_argument("--model", choices=list(MODELS), help="attribution model (default IDSTREAM_REPORT_MODEL)")
    channels.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day (inclusive)")
    channels.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day (inclusive)")
    channels.add_argument("--tz", help="time zone of the days (default IDSTREAM_REPORT_TIMEZONE)")
    channels.add_argument("--format", choices=["table", "csv", "json"], default="table")
    channels.add_argument("--plot", metavar="FILE.png", help="also draw the channel comparison")
    channels.set_defaults(func=cmd_report)

    calls = report.add_parser("calls", help="answered and missed calls by channel and hour; missed calls returned")
    calls.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day (inclusive)")
    calls.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day (inclusive)")
    calls.add_argument("--tz", help="time zone of the days and hours (default IDSTREAM_REPORT_TIMEZONE)")
    calls.add_argument("--within", type=int, default=30, help="minutes a missed call has to be returned in")
    calls.add_argument("--format", choices=["table", "json"], default="table")
    calls.set_defaults(func=cmd_report_calls)

    explain = sub.add_parser(
        "explain", help="why identifiers are one person (KIND VALUE [KIND VALUE]), or a profile (--profile ID)"
    )
    explain.add_argument("pairs", nargs="*", metavar="KIND VALUE", help="one identifier, or two to connect")
    explain.add_argument("--profile", help="explain a profile id instead")
    explain.set_defaults(func=cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except IdstreamError as exc:  # configuration and input problems: say what is wrong, no traceback
        print(f"idstream: {exc.message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
