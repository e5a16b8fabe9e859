"""Latency benchmark: from a touch produced to its profile update consumed, at a steady rate.

    python benchmarks/bench_latency.py [--rate 1000] [--seconds 30] [--partitions 4] [--set IDSTREAM_X=VALUE ...]

Prints one JSON line; progress goes to stderr. Starts a private broker and redis-server and one
``idstream worker``, waits until the worker answers (a warm-up event's update comes back), then:

* **reference** (same run): the broker round trip alone: the same rate of the same events produced to a
  plain topic and consumed back by the same consumer code, so ``reference_ms`` is the floor that any
  Kafka-in, Kafka-out service has on this machine;
* **latency**: ``--rate`` touches per second on an open-loop schedule for ``--seconds`` (after a 3 s warm-up
  at the same rate); each event's latency runs from its *scheduled* send time (a stalled producer or worker
  is charged for what queued behind it) to the moment the consumer reads the first ``profiles.updates``
  message naming the event id.

One process drives both sides with aiokafka on one event loop (producer linger 0, consumer partitions
assigned, no group). ``missing`` counts events whose update never came (must be 0; the stream's touches
with only junk identifiers produce no profile and are left out before sending).

Target (2-core machine, broker and Redis on the same machine): p99 <= 50 ms at 1,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from benchlib import cpu_seconds, deployment, log, machine, percentiles, py_spy, summarize_profile

from identity import Normalizer
from schemas import TouchEvent
from streams.generate import generate

WARMUP_S = 3.0


def say(message: str) -> None:
    log("bench_latency", message)


def make_values(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(event id, wire value) of distinct resolvable events, in stream order."""
    normalizer = Normalizer()
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    persons = 200
    while len(out) < count:
        for t in generate(persons, seed).touches:
            if t.event_id in seen or not normalizer.normalize_many(t.identifiers)[0]:
                continue  # redeliveries and all-junk touches have no update of their own to wait for
            seen.add(t.event_id)
            out.append((t.event_id, TouchEvent.from_touch(t).model_dump_json().encode()))
        persons, seed = persons * 2, seed + 1
    return out[:count]


async def run_phase(
    bootstrap: str, topics: tuple[str, str], values: list[tuple[str, bytes]], rate: float, read_ids: Any
) -> tuple[dict[str, float], list[float], int]:
    """Send to ``topics[0]`` on an open-loop schedule, read ``topics[1]``; latencies of the events after warm-up."""
    send_topic, read_topic = topics
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                fetch_max_wait_ms=5)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(read_topic, p) for p in sorted(consumer.partitions_for_topic(read_topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        scheduled: dict[str, float] = {}
        latency: dict[str, float] = {}
        done = asyncio.Event()

        async def read() -> None:
            while not done.is_set() or len(latency) < len(scheduled):
                batches = await consumer.getmany(timeout_ms=50)
                now = time.perf_counter()
                for records in batches.values():
                    for record in records:
                        for eid in read_ids(record.value):
                            if eid in scheduled and eid not in latency:
                                latency[eid] = now - scheduled[eid]

        reader = asyncio.create_task(read())
        start = time.perf_counter() + 0.1
        for i, (eid, value) in enumerate(values):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            scheduled[eid] = due
            await producer.send(send_topic, value)
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, timeout=30)
        warm = int(WARMUP_S * rate)
        measured = [eid for eid, _ in values[warm:]]
        lat = [latency[eid] for eid in measured if eid in latency]
        return percentiles(lat), lat, len(measured) - len(lat)
    finally:
        await producer.stop()
        await consumer.stop()


def update_ids(value: bytes | None) -> list[str]:
    if not value:
        return []
    ids = orjson.loads(value).get("event_ids")
    return ids if isinstance(ids, list) else []


def echo_ids(value: bytes | None) -> list[str]:
    return [str(orjson.loads(value)["event_id"])] if value else []


async def wait_ready(bootstrap: str, topics: tuple[str, str], value: tuple[str, bytes], read_ids: Any) -> None:
    """Send one event until its answer comes back (the worker has joined, the topics' metadata is known)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        _, _, missing = await run_phase(bootstrap, topics, [value], 1.0, read_ids)
        if missing == 0:
            return
        await asyncio.sleep(1)
    raise TimeoutError(f"no answer on {topics[1]} within 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="IDSTREAM_X=VALUE", help="worker setting")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE", help="profile the worker")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    count = int(args.rate * (args.seconds + WARMUP_S))
    say(f"generating {count + 1} events")
    values = make_values(count + 1, args.seed)
    with deployment(args.partitions, overrides) as d:
        settings = d.settings()
        from streams.app import ensure_topics  # noqa: PLC0415

        echo = "latency.echo"
        ensure_topics(settings.model_copy(update={"touch_topics": [*settings.touch_topics, echo]}), d.kafka)
        say("reference: the broker round trip alone")
        asyncio.run(wait_ready(d.kafka, (echo, echo), values[0], echo_ids))
        ref, _, ref_missing = asyncio.run(run_phase(d.kafka, (echo, echo), values[1:], args.rate, echo_ids))
        say("starting the worker")
        worker = d.start_worker()
        asyncio.run(wait_ready(d.kafka, (d.touch_topic, settings.profiles_topic), values[0], update_ids))
        say(f"measuring {args.seconds:.0f} s at {args.rate:.0f} events/s")
        cpu0 = cpu_seconds(worker.pid)
        wall0 = time.perf_counter()
        with py_spy(worker.pid, args.py_spy):
            lat, _, missing = asyncio.run(
                run_phase(d.kafka, (d.touch_topic, settings.profiles_topic), values[1:], args.rate, update_ids)
            )
        cpu1 = cpu_seconds(worker.pid)
        busy = (cpu1 - cpu0) / (time.perf_counter() - wall0) if cpu0 is not None and cpu1 is not None else None
    result: dict[str, Any] = {
        "bench": "latency",
        "rate": args.rate,
        "seconds": args.seconds,
        "partitions": args.partitions,
        "settings": overrides,
        "events_measured": count - int(WARMUP_S * args.rate),
        "latency_ms": lat,
        "missing": missing,
        "reference_ms": ref,
        "reference_missing": ref_missing,
        "worker_busy_cores": round(busy, 3) if busy is not None else None,
        "target_p99_ms": 50,
        **machine(),
    }
    if args.py_spy is not None:
        result["profile_inclusive"] = summarize_profile(args.py_spy.with_suffix(".txt"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
