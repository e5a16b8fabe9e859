"""The ``idstream`` command."""

from __future__ import annotations

import argparse
import json
import os
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

from identity import Identifier, IdstreamError
from schemas import InvalidMessage, decode_touch, export_schemas
from streams.runtime import tune_gc
from streams.runtime_state import Servers, forget, remember, servers
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
    return settings.redis_store(redis.Redis.from_url(servers(settings).redis))


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one Faust worker against the configured (or `up`) servers until stopped."""
    import faust  # noqa: PLC0415 - heavy; only this command needs it

    from streams.app import create_app, ensure_topics  # noqa: PLC0415

    settings = Settings()
    found = servers(settings)
    ensure_topics(settings, found.kafka)
    tune_gc()
    app = create_app(settings, found.kafka, found.redis)
    faust.Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    return 0


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def _group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(partitions)
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


def cmd_lookup(args: argparse.Namespace) -> int:
    """The golden profile holding KIND VALUE (normalized as in the stream)."""
    store = _store(Settings())
    pid = store.lookup_raw(args.kind, args.value)
    if pid is None:
        _dump({"status": "not_found", "kind": args.kind, "value": args.value}, sys.stdout)
        return 1
    _dump({"status": "found", "profile_id": pid, "profile": store.profile(pid)}, sys.stdout)
    return 0


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or connect to) Kafka and Redis, create topics, run a worker; serve until Ctrl-C."""
    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.embedded import ChildServer, start_broker, start_redis  # noqa: PLC0415

    settings = Settings()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    children: list[ChildServer] = []
    worker: subprocess.Popen[bytes] | None = None
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
        remember(settings.state_file, Servers(kafka, redis_url, os.getpid()))
        env = {**os.environ, "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka, "IDSTREAM_REDIS_URL": redis_url}
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env)
        print(f"kafka={kafka} redis={redis_url} worker_pid={worker.pid}", flush=True)
        code = worker.wait()
        print(f"worker exited with {code}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        for child in reversed(children):
            child.stop()
        forget(settings.state_file)


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

    worker = sub.add_parser("worker", help="run a Faust worker")
    worker.add_argument("--loglevel", default="warning")
    worker.set_defaults(func=cmd_worker)

    ingest = sub.add_parser("ingest", help="produce a JSON-lines file of touch events")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--topic", help="default: the first touch topic")
    ingest.add_argument("--wait", action="store_true", help="return once the workers processed everything")
    ingest.add_argument("--timeout", type=float, default=600.0)
    ingest.set_defaults(func=cmd_ingest)

    export = sub.add_parser("export", help="print every golden profile as JSON lines")
    export.set_defaults(func=cmd_export)

    lookup = sub.add_parser("lookup", help="the golden profile holding an identifier")
    lookup.add_argument("kind")
    lookup.add_argument("value")
    lookup.set_defaults(func=cmd_lookup)
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
