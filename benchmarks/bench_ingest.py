"""Ingest benchmark: one worker resolves a stream already on the touch topic, beside a bare aiokafka consumer.

    python benchmarks/bench_ingest.py [--events 200000] [--partitions 4] [--seed 1]
                                      [--set IDSTREAM_BATCH_SIZE=1000 ...] [--py-spy FILE]

Prints one JSON line; progress goes to stderr. Starts a private broker (the embedded Tansu) and a private
redis-server, generates ``--events`` touches with ``idstream generate``'s model (switchboards, junk values,
redeliveries and late CRM events included), produces them to the touch topic, then:

* **reference** (same run, same topic): a bare ``aiokafka`` consumer, partitions assigned, reads the whole
  topic from the beginning and JSON-parses every value, once with the standard library and once with orjson;
  ``reference_events_per_s`` is the faster of the two (the demanding denominator);
* **worker**: ``idstream worker`` (one process) resolves all of it: Redis updated, profile updates, identity
  changes and dead letters produced, offsets committed. Timed from the first event applied (the worker's
  start-up and group join are not counted) to the group's lag reaching 0, so it includes the last commit.

Also reported: the workers', Redis' and the broker's CPU seconds per 1,000 events (the processes share the
machine's cores); Redis' CPU per event (``redis_us_per_event``: what one primary spends, so
``redis_projected_events_per_s`` is what one primary could serve across workers) and its scripts' own time
(``redis_script_us_per_event``); the profile updates produced; and **memory** after the run: Redis bytes per
identifier of the graph and its index (``graph_bytes_per_identifier``), profile state per person (aggregates
and the profile as served), and the rest. ``--workers N`` starts N worker processes in one group (CPU figures
are their sum). ``--py-spy FILE`` samples the first worker with py-spy while it ingests (raw stacks to
FILE.txt) and adds the functions with the largest inclusive share of samples to the result.

A do-nothing Faust agent (``benchmarks/faust_noop.py``) reads the same topic with the same batching first:
``faust_noop_cpu_s_per_1000`` is Faust's own per-event path, and ``worker_over_faust_us_per_event`` what the
worker spends per event on top of it.

Targets (issue 17): Redis <= 25 us per event; the worker <= 150 us of CPU per event above the Faust agent;
<= 300 bytes of Redis per identifier for graph and index, <= 1,500 per person of profile state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from benchlib import cpu_seconds, deployment, log, machine, py_spy, redis_memory, summarize_profile, wait_for
from kafka import KafkaProducer

from schemas import TouchEvent
from streams.cli import _group_lag
from streams.generate import generate

EVENTS_PER_PERSON = 5.9  # what generate() makes on average


def say(message: str) -> None:
    log("bench_ingest", message)


def make_values(events: int, seed: int) -> tuple[list[bytes], int]:
    touches = generate(int(events / EVENTS_PER_PERSON) + 50, seed).touches
    while len(touches) < events:  # pragma: no cover - the estimate is generous
        touches += generate(1000, seed + len(touches)).touches
    touches = touches[:events]
    values = [TouchEvent.from_touch(t).model_dump_json().encode() for t in touches]
    return values, len({t.event_id for t in touches})


def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024, max_request_size=8 << 20
    )
    start = time.perf_counter()
    for value in values:
        producer.send(topic, value)
    producer.flush()
    producer.close()
    return time.perf_counter() - start


async def bare_consume(bootstrap: str, topic: str, total: int, parse: Any) -> float:
    """Seconds for a bare aiokafka consumer to read and parse the whole topic (from its first record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen, start = 0, None
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if start is None and batches:
                start = time.perf_counter()
            for records in batches.values():
                for record in records:
                    parse(record.value)
                seen += sum(len(r) for r in batches.values())
        return time.perf_counter() - (start or time.perf_counter())
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer  # noqa: PLC0415
    from kafka import TopicPartition as KafkaTP  # noqa: PLC0415

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [KafkaTP(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return int(sum(consumer.end_offsets(parts).values()))
    finally:
        consumer.close()


def per_1000(before: float | None, after: float | None, events: int) -> float | None:
    """CPU seconds per 1,000 events between two readings (None where /proc is not available)."""
    return None if before is None or after is None else round((after - before) / events * 1000, 4)


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _cpu_of(workers: list[Any]) -> float | None:
    """CPU seconds the worker processes used so far, together."""
    readings = [cpu_seconds(w.pid) for w in workers]
    return None if None in readings else sum(r or 0.0 for r in readings)


def _over(worker: float | None, reference: float | None) -> float | None:
    """The worker's CPU per event above the do-nothing Faust agent's, in microseconds (from s per 1,000)."""
    return None if worker is None or reference is None else round((worker - reference) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="IDSTREAM_X=VALUE", help="worker setting")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE", help="profile the (first) worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (resolution runs in them)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    say(f"generating {args.events} events")
    values, distinct = make_values(args.events, args.seed)
    with deployment(args.partitions, overrides) as d:
        settings = d.settings()
        topic = d.touch_topic
        say(f"producing to {topic} ({args.partitions} partitions)")
        produce_s = produce(d.kafka, topic, values)

        say("reference: bare aiokafka consumer")
        ref_json_s = asyncio.run(bare_consume(d.kafka, topic, len(values), json.loads))
        ref_orjson_s = asyncio.run(bare_consume(d.kafka, topic, len(values), orjson.loads))
        ref_s = min(ref_json_s, ref_orjson_s)

        say("reference: a do-nothing Faust agent on the same topic")
        count_file = d.tmp / "faust-noop.count"
        noop = d.start_faust_noop(count_file)
        wait_for(lambda: _count(count_file) > 0, 120, "the Faust reference's first batch", every=0.01)
        noop_start, noop_cpu0 = time.perf_counter(), cpu_seconds(noop.pid)
        wait_for(lambda: _count(count_file) >= len(values), args.timeout, "the Faust reference", every=0.05)
        noop_s, noop_cpu1 = time.perf_counter() - noop_start, cpu_seconds(noop.pid)
        noop_seen = _count(count_file)
        noop.terminate()
        noop.wait(30)

        client = redis.Redis.from_url(d.redis_url)
        applied = settings.redis_store(client)
        client.config_resetstat()
        redis_cpu = client.info("cpu")
        say(f"workers: starting {args.workers}")
        workers = [d.start_worker() for _ in range(args.workers)]
        worker = workers[0]
        wait_for(lambda: applied.applied_events() > 0, 120, "the worker to apply its first batch", every=0.01)
        start = time.perf_counter()
        cpu0, broker0 = _cpu_of(workers), cpu_seconds(d.broker_pid)
        say("worker: ingesting")
        with py_spy(worker.pid, args.py_spy):
            wait_for(lambda: applied.applied_events() >= distinct, args.timeout, "every event applied", every=0.1)
            applied_s = time.perf_counter() - start
            wait_for(lambda: _group_lag(d.kafka, settings.app_id, [topic]) == 0, 120, "the commit", every=0.1)
        worker_s = time.perf_counter() - start
        cpu1, broker1 = _cpu_of(workers), cpu_seconds(d.broker_pid)
        redis_cpu_after = client.info("cpu")
        commands = client.info("commandstats")
        # scripts' own time (the commands they run are counted inside it, and again under their own names)
        script_usec = sum(float(commands.get(name, {}).get("usec", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))
        for i, each in enumerate(workers):
            if each.poll() is not None:
                raise SystemExit(f"a worker died:\n{d.worker_log(i)[-2000:]}")
        updates = end_offsets(d.kafka, settings.profiles_topic)
        dead = end_offsets(d.kafka, settings.dlq_topic)
        mem = {**redis_memory(client, settings.redis_prefix), "used_memory_bytes": client.info("memory")["used_memory"]}

    events = len(values)
    eps = events / worker_s
    ref_eps = events / ref_s
    redis_cpu_s = sum(float(redis_cpu_after[k]) - float(redis_cpu[k]) for k in ("used_cpu_user", "used_cpu_sys"))
    result: dict[str, Any] = {
        "bench": "ingest",
        "events": events,
        "distinct_event_ids": distinct,
        "partitions": args.partitions,
        "workers": args.workers,
        "settings": overrides,
        "worker_events_per_s": round(eps),
        "worker_applied_events_per_s": round(events / applied_s),
        "reference_events_per_s": round(ref_eps),
        "reference_json_events_per_s": round(events / ref_json_s),
        "reference_orjson_events_per_s": round(events / ref_orjson_s),
        "worker_to_reference": round(eps / ref_eps, 4),
        "produce_events_per_s": round(events / produce_s),
        "profile_updates": updates,
        "dead_letters": dead,
        "worker_cpu_s_per_1000": per_1000(cpu0, cpu1, events),
        "redis_cpu_s_per_1000": round(redis_cpu_s / events * 1000, 4),
        "broker_cpu_s_per_1000": per_1000(broker0, broker1, events),
        "redis_us_per_event": round(redis_cpu_s / events * 1e6, 1),
        "redis_script_us_per_event": round(script_usec / events, 1),
        "redis_projected_events_per_s": round(events / redis_cpu_s) if redis_cpu_s else None,
        "faust_noop_events_per_s": round(noop_seen / noop_s),
        "faust_noop_cpu_s_per_1000": per_1000(noop_cpu0, noop_cpu1, noop_seen),
        "worker_over_faust_us_per_event": _over(
            per_1000(cpu0, cpu1, events), per_1000(noop_cpu0, noop_cpu1, noop_seen)
        ),
        **mem,
        "targets": {
            "redis_us_per_event": 25,
            "worker_over_faust_us_per_event": 150,
            "graph_bytes_per_identifier": 300,
            "profile_bytes_per_person": 1500,
        },
        **machine(),
    }
    if args.py_spy is not None:
        result["profile_inclusive"] = summarize_profile(args.py_spy.with_suffix(".txt"))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
