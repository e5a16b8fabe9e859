"""The ``idstream`` command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis

from identity import Identifier, IdstreamError, Normalizer, Touch
from identity.attribution import MODELS
from schemas import InvalidMessage, TouchEvent, decode_touch, export_schemas
from streams.generate import GeneratedStream, generate
from streams.observe import setup_logging
from streams.runtime import tune_gc
from streams.runtime_state import Servers, forget, redis_url, remember, servers
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
    return settings.redis_store(redis.Redis.from_url(redis_url(settings)))


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one Faust worker against the configured (or `up`) servers until stopped."""

    from streams.app import create_app, ensure_topics  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
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
    engine = connect(settings.warehouse_url)
    migrate(engine)  # an empty warehouse answers an empty report, not an error
    defaults = settings.report_settings()
    if args.tz:
        defaults = dataclasses.replace(defaults, tz=args.tz)
    report = defaults.report(engine, args.model, parse_day(args.start, "--from"), parse_day(args.end, "--to"))
    sys.stdout.write(render(report, args.format))
    if args.plot:
        print(f"plot written to {plot(report, Path(args.plot))}", file=sys.stderr)
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


def cmd_ingest(args: argparse.Namespace) -> int:
    """Produce a JSON-lines file to a touch topic; with --wait, return once the workers consumed it all."""
    from kafka import KafkaProducer  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
    topic = args.topic or settings.touch_topics[0]
    lines = [line.rstrip(b"\r\n") for _, line in _lines(args.file) if line.strip()]
    producer = KafkaProducer(bootstrap_servers=found.kafka, linger_ms=5, acks=1)
    for i, line in enumerate(lines, 1):
        producer.send(topic, line)
        if i % 500 == 0 or i == len(lines):
            _progress(i, len(lines))
    producer.flush()
    producer.close()
    sys.stderr.write(f"\nproduced {len(lines)} events to {topic}\n")
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the lookup API (bearer tokens from IDSTREAM_API_TOKENS; without them, loopback only)."""
    import logging  # noqa: PLC0415

    from aiohttp import web  # noqa: PLC0415

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
        from kafka import KafkaProducer  # noqa: PLC0415

        self.settings, self.timeout = settings, timeout
        self.bootstrap = servers(settings).kafka
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks=1)
        self.store = _store(settings)

    def send(self, touches: Sequence[Touch]) -> None:
        topic = self.settings.touch_topics[0]
        for touch in touches:
            self.producer.send(topic, TouchEvent.from_touch(touch).model_dump_json().encode())
        self.producer.flush()
        deadline = time.monotonic() + self.timeout
        while _group_lag(self.bootstrap, self.settings.app_id, self.settings.touch_topics) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not consume the stream within {self.timeout:.0f} s")
            time.sleep(0.5)

    def match(self, ident: Identifier) -> Any:
        return self.store.match(ident)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Replay a generated stream (or the Senzing truth set) through idstream and score it against the truth."""
    from streams.evaluate import StoreResolver, evaluate, senzing_stream  # noqa: PLC0415
    from streams.generate import JUNK_EMAILS  # noqa: PLC0415

    settings = Settings()
    if args.senzing:
        touches, truth = senzing_stream(Path(args.senzing))
        name, junk = "senzing-truthsets/demo", []
        truth_map: dict[str, Any] = dict(truth)
    else:
        stream = generate(args.persons, args.seed)
        touches, truth_map = stream.touches, dict(stream.truth)
        name, junk = f"generated persons={args.persons} seed={args.seed}", [("email", j) for j in JUNK_EMAILS]
    if args.through == "memory":
        resolver: Any = StoreResolver(settings.graph())
    elif args.through == "redis":
        store = _store(settings)
        store.clear()
        resolver = StoreResolver(store)
    else:
        resolver = _Service(settings, args.timeout)
    policy = settings.policy()
    normalizer = Normalizer(settings.normalizer_config())
    report = evaluate(resolver, touches, truth_map, normalizer=normalizer, policy=policy, erase=args.erase, junk=junk)
    _dump({"dataset": name, "through": args.through, **report}, sys.stdout)
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


@contextlib.contextmanager
def _runtime(settings: Settings) -> Iterator[tuple[Servers, subprocess.Popen[bytes]]]:
    """Kafka and Redis (embedded unless configured), the topics, and one worker process."""
    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.embedded import ChildServer, free_port, start_broker, start_redis  # noqa: PLC0415

    children: list[ChildServer] = []
    processes: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="idstream-up-"))
    try:
        kafka = settings.kafka_bootstrap_servers
        if not kafka:
            children.append(start_broker(workdir / "broker"))
            kafka = children[-1].url
        redis_url = settings.redis_url
        if not redis_url:
            children.append(start_redis(workdir / "redis", appendonly=True))
            redis_url = children[-1].url
        ensure_topics(settings, kafka)
        found = Servers(kafka, redis_url, os.getpid())
        remember(settings.state_file, found)
        env = {**os.environ, "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka, "IDSTREAM_REDIS_URL": redis_url}
        # a terminal, not a log pipeline: warnings as text, unless the operator asked for more
        env.setdefault("IDSTREAM_LOG_FORMAT", "text")
        env.setdefault("IDSTREAM_LOG_LEVEL", "WARNING")
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env)
        port = free_port()
        argv = [sys.executable, "-m", "streams.cli", "serve", "--port", str(port)]  # our own module, our port
        server = subprocess.Popen(argv, env=env)  # noqa: S603
        # the warehouse (SQLite by default: the demo needs no database server)
        warehouse = subprocess.Popen([sys.executable, "-m", "streams.cli", "warehouse"], env=env)
        processes = [worker, server, warehouse]
        if settings.webhooks:
            processes.append(subprocess.Popen([sys.executable, "-m", "streams.cli", "webhooks"], env=env))
        print(f"kafka={kafka} redis={redis_url} lookup=http://127.0.0.1:{port}", flush=True)
        yield found, worker
    finally:
        # a second Ctrl-C must not cut the cleanup short and leave servers running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for child in reversed(children):
            child.stop()
        forget(settings.state_file)
        shutil.rmtree(workdir, ignore_errors=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or connect to) Kafka and Redis, create topics, run a worker; serve until Ctrl-C."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with _runtime(Settings()) as (_, worker):
            code = worker.wait()
            print(f"worker exited with {code}", file=sys.stderr)
            return code
    except KeyboardInterrupt:
        return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a realistic synthetic touch stream (wire format v1, JSON lines)."""
    stream = generate(args.persons, args.seed)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(args.out).open("w", encoding="utf-8")) if args.out else sys.stdout
        for touch in stream.touches:
            out.write(TouchEvent.from_touch(touch).model_dump_json() + "\n")
    print(
        f"{len(stream.touches)} events for {stream.persons} persons ({stream.redeliveries} redelivered, "
        f"{stream.late} CRM events late, {stream.shared_office_phones} office switchboards)",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`up`, plus a generated stream of persons ingested and a short tour of the result."""
    from kafka import KafkaProducer  # noqa: PLC0415

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    settings = Settings()
    try:
        with _runtime(settings) as (found, worker):
            stream = generate(args.persons, args.seed)
            values = [TouchEvent.from_touch(t).model_dump_json().encode() for t in stream.touches]
            values.insert(len(values) // 2, b'{"event_id": "broken-1", "type": "call"}')
            started = time.monotonic()
            producer = KafkaProducer(bootstrap_servers=found.kafka, linger_ms=5, acks=1)
            for i, value in enumerate(values, 1):
                producer.send(settings.touch_topics[i % len(settings.touch_topics)], value)
            producer.flush()
            producer.close()
            print(f"ingesting {len(values)} events for {stream.persons} generated persons ...", flush=True)
            while _group_lag(found.kafka, settings.app_id, settings.touch_topics) > 0:
                if worker.poll() is not None:
                    return worker.returncode or 1
                time.sleep(0.5)
            _tour(settings, found, events=len(values), seconds=time.monotonic() - started, stream=stream)
            _channels(settings, found, stream, args.seed)
            return worker.wait()
    except KeyboardInterrupt:
        return 0


def _channels(settings: Settings, found: Servers, stream: GeneratedStream, seed: int) -> None:
    """Produce the generated ad spend, wait for the warehouse to catch up, print the channel report."""
    from kafka import KafkaProducer  # noqa: PLC0415

    from sinks.warehouse import connect  # noqa: PLC0415
    from sinks.warehouse.report import render  # noqa: PLC0415
    from streams.generate import ad_spend  # noqa: PLC0415

    producer = KafkaProducer(bootstrap_servers=found.kafka, acks=1)
    for body in ad_spend(stream, seed):
        producer.send(settings.spend_topic, json.dumps(body).encode())
    producer.flush()
    producer.close()
    topics = [*settings.touch_topics, settings.profiles_topic, settings.spend_topic]
    deadline = time.monotonic() + 120
    while _group_lag(found.kafka, f"{settings.app_id}-warehouse", topics) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    report = settings.report_settings().report(connect(settings.warehouse_url), None, None, None)
    print(f"\nthe warehouse ({settings.warehouse_url}), as a BI tool sees it:\n{render(report, 'table')}")
    print("  idstream report channels --model linear --format csv\n  idstream report channels --plot channels.png")


def _tour(settings: Settings, found: Servers, *, events: int, seconds: float, stream: GeneratedStream) -> None:
    generated = stream.persons
    client = redis.Redis.from_url(found.redis)
    store = settings.redis_store(client)
    changes = [json.loads(v) for _, v in read_topic(found.kafka, settings.changes_topic) if v]
    letters = read_topic(found.kafka, settings.dlq_topic)
    kinds = Counter(c["type"] for c in changes)
    best = max(store.profiles(), key=lambda p: (sum(p["touch_counts"].values()), p["profile_id"]))
    phone = (best["identifiers"].get("phone") or ["+70000000000"])[0]
    print(
        f"""
processed {events} events in {seconds:.1f} s, one worker, its consumer-group join included
persons found:        {len(store):>6}   (generated: {generated}; {stream.shared_office_phones} office switchboards
                              glue colleagues together until shared-identifier detection lands)
merges:               {len(store.redirects):>6}   retired profile ids, each redirecting to its survivor
refused merges:       {kinds["conflict"]:>6}   a second CRM contact, too many phones, ... (identity.changes)
rejected identifiers: {kinds["rejected_identifiers"]:>6}   events with junk or invalid values (identity.changes)
dead letters:         {len(letters):>6}   malformed input, with its bytes and the reason ({settings.dlq_topic})

the person with the most touches:
{json.dumps(best, ensure_ascii=False, indent=2)[:2500]}

try, in another terminal:
  idstream lookup phone "{phone}"
  idstream export | head -n 3
  idstream ingest your-events.jsonl --wait
Ctrl-C stops everything.""",
        flush=True,
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
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="up, plus a generated stream ingested and a short tour")
    demo.add_argument("--persons", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="write a realistic synthetic touch stream as JSON lines")
    gen.add_argument("--persons", type=int, default=2000)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--out", help="file to write; default standard output")
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
    ingest.add_argument("--timeout", type=float, default=600.0)
    ingest.set_defaults(func=cmd_ingest)

    crm = sub.add_parser("crm-mirror", help="example subscriber: mirror profiles.updates into SQLite")
    crm.add_argument("--db", default="crm-mirror.sqlite", help="SQLite file (offsets are kept in it too)")
    crm.add_argument("--follow", action="store_true", help="keep consuming instead of stopping when caught up")
    crm.add_argument("--check", action="store_true", help="compare the mirror with `idstream export`")
    crm.set_defaults(func=cmd_crm_mirror)

    export = sub.add_parser("export", help="print every golden profile as JSON lines")
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="serve the lookup API")
    serve.add_argument("--host", help="default: IDSTREAM_API_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: IDSTREAM_API_PORT (8080)")
    serve.set_defaults(func=cmd_serve)

    lookup = sub.add_parser("lookup", help="the golden profile holding an identifier")
    lookup.add_argument("kind")
    lookup.add_argument("value")
    lookup.set_defaults(func=cmd_lookup)

    evaluate = sub.add_parser("evaluate", help="score idstream against the truth of a generated stream or Senzing")
    evaluate.add_argument("--persons", type=int, default=2000)
    evaluate.add_argument("--seed", type=int, default=1)
    evaluate.add_argument("--erase", type=int, default=20, help="persons to erase (then re-send their history)")
    evaluate.add_argument("--senzing", metavar="DIR", help="the Senzing truth-sets folder, not a generated stream")
    evaluate.add_argument(
        "--through",
        choices=["service", "redis", "memory"],
        default="service",
        help="service (default): produce to the running service's topic and read its Redis; redis: apply to the "
        "configured Redis directly (clears the graph first); memory: an in-process graph",
    )
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
