"""Growth benchmark: does an event cost more as history grows around hot shared values?

    python benchmarks/bench_growth.py [--events 300000] [--batch 500] [--every 20] [--seed 1]

Prints one JSON line; progress goes to stderr. Starts a private redis-server and runs the worker's own
processing path (:class:`streams.processor.Processor` over :class:`streams.redis_store.RedisIdentityStore`:
decode, resolve with :mod:`identity`, commit, render the outputs; no broker, so that what is measured is the
engine and Redis alone) over a stream of ``--events`` touches: ``idstream generate``'s ordinary persons (in
cohorts of 1,000, one month after another, so that ordinary traffic is alike in every tenth), and
every ``--every``-th event a hot shared value seen with a new visitor: a call from one office switchboard
from a new visitor's session, or a form with one ``info@`` mailbox and a new visitor's phone.

Reported per tenth of the stream: the process' CPU microseconds per event (the worker's share) and Redis'
CPU microseconds per event (INFO cpu: scripts, networking and all); the ratio of the last tenth to the first
(the reference is the same run's first tenth), with the bytes sent to and from Redis per event (the work
asked of it, free of the machine's noise); and the longest single Redis call (LATENCY LATEST, "command"
events, and the slow log) over the whole run. Then the same ordinary events without the hot ones, into a fresh
Redis, as the reference (``reference``): what a store of that size costs anyway, so that the growth due to hot
values is the difference. Targets: last/first <= 1.2 for both; longest call <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import redis
from benchlib import log, machine, redis_memory

from identity import Identifier, Touch, TouchType
from schemas import TouchEvent
from streams.embedded import start_redis
from streams.generate import generate
from streams.processor import Inbound, Processor
from streams.redis_store import RedisIdentityStore, node_of
from streams.runtime import tune_gc

SWITCHBOARD = ("phone", "+7 495 777-00-11")
MAILBOX = ("email", "info@romashka-stroy.ru")


def say(message: str) -> None:
    log("bench_growth", message)


#: Ordinary persons come in cohorts of this many, each over its own month, one after another: the ordinary
#: traffic is the same in every tenth (new and returning people alike), and only the hot values' history grows.
COHORT = 1000


def ordinary(events: int, seed: int) -> list[Touch]:
    cohorts: list[list[Touch]] = []
    while sum(map(len, cohorts)) < events:
        cohorts.append(generate(COHORT, seed * 1000 + len(cohorts)).touches)
    out: list[Touch] = []
    for k, cohort in enumerate(cohorts):  # month after month, the last ending when generate's does (not ahead)
        shift = timedelta(days=31 * (len(cohorts) - 1 - k))
        out += [
            replace(t, event_id=f"c{k}-{t.event_id}", occurred_at=t.occurred_at - shift, identifiers=_own(t, k))
            for t in cohort
        ]
    return out[:events]


def _own(t: Touch, k: int) -> tuple[tuple[str, str], ...]:
    """A cohort's identifiers made its own: generate() derives client ids, CRM ids and e-mail logins from a
    person's index, which would make person i of every cohort one person (not what this benchmark studies)."""
    out = []
    for kind, raw in t.identifiers:
        value = raw
        if kind == "ym_client_id" and raw.isdigit():
            value = str(int(raw) + k * 10**12)
        elif kind == "crm_contact_id":
            value = f"{raw}-{k}"
        elif kind == "email":
            value = raw.replace("@", f"{k:03d}@", 1)
        out.append((kind, value))
    return tuple(out)


def stream(events: int, every: int, seed: int) -> list[Touch]:
    """Ordinary persons with a hot shared value seen beside a new visitor every ``every``-th event."""
    base_events = ordinary(events - events // every, seed)
    out: list[Touch] = []
    n = 0
    for i, base in enumerate(base_events):
        out.append(base)
        if (i + 1) % (every - 1) == 0 and len(out) < events:
            moment = base.occurred_at + timedelta(microseconds=1)
            if n % 2 == 0:
                ids: tuple[tuple[str, str], ...] = (SWITCHBOARD, ("ym_client_id", f"{1_700_000_000_000 + n}"))
                kind, source = TouchType.CALL, "calltouch"
            else:
                ids = (MAILBOX, ("phone", f"+7 916 {n // 10_000 % 1000:03d}-{n // 100 % 100:02d}-{n % 100:02d}"))
                kind, source = TouchType.FORM_SUBMIT, "tilda"
            out.append(Touch(f"hot-{n}", kind, moment, source, ids))
            n += 1
    return out[:events]


def redis_bytes(client: redis.Redis) -> tuple[int, int]:
    """Bytes Redis received and sent so far: the work asked of it, free of the machine's noise."""
    stats = client.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def redis_usec(client: redis.Redis) -> float:
    """Redis' CPU time so far (user and system), in microseconds: all it did for the worker, networking included."""
    cpu = client.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def run(values: list[bytes], batch_size: int, label: str) -> dict[str, Any]:
    """Process a stream through the worker's path into a fresh Redis; figures per tenth and the longest call."""
    tenth = len(values) // 10
    with start_redis() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("latency-monitor-threshold", 1)  # ms: every call at least this long is recorded
        client.config_set("slowlog-log-slower-than", 5000)  # µs
        client.config_set("slowlog-max-len", 1024)
        store = RedisIdentityStore(client, prefix=f"growth-{uuid.uuid4().hex[:8]}")
        processor = Processor(store)
        client.config_resetstat()
        tune_gc()  # as `idstream worker` does
        tenths: list[dict[str, Any]] = []
        longest_batch_s = 0.0
        for part in range(10):
            chunk = values[part * tenth : (part + 1) * tenth if part < 9 else len(values)]
            usec0, cpu0, wall0, io0 = redis_usec(client), time.process_time(), time.perf_counter(), redis_bytes(client)
            for start in range(0, len(chunk), batch_size):
                batch = [
                    Inbound(v, "touches.growth", 0, part * tenth + start + j)
                    for j, v in enumerate(chunk[start : start + batch_size])
                ]
                began = time.perf_counter()
                processor.process(batch)
                longest_batch_s = max(longest_batch_s, time.perf_counter() - began)
            usec1, cpu1, wall1, io1 = redis_usec(client), time.process_time(), time.perf_counter(), redis_bytes(client)
            tenths.append(
                {
                    "events": len(chunk),
                    "worker_cpu_us_per_event": round((cpu1 - cpu0) / len(chunk) * 1e6, 1),
                    "redis_us_per_event": round((usec1 - usec0) / len(chunk), 1),
                    "events_per_s": round(len(chunk) / (wall1 - wall0)),
                    "redis_bytes_in_per_event": round((io1[0] - io0[0]) / len(chunk)),
                    "redis_bytes_out_per_event": round((io1[1] - io0[1]) / len(chunk)),
                }
            )
            say(f"{label} tenth {part + 1}: {tenths[-1]}")
        latest = client.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
        longest_ms = max((int(row[3]) for row in latest), default=0)
        slow = client.slowlog_get(1024)
        longest_slowlog_ms = max((entry["duration"] for entry in slow), default=0) / 1000
        mem = redis_memory(client, store.prefix)
        hub_entries = {
            name: len(client.hget(f"{{{store.prefix}}}:idx", node) or b"")
            for name, node in (("switchboard", _node(store, SWITCHBOARD)), ("mailbox", _node(store, MAILBOX)))
        }
        client.close()
    first, last = tenths[0], tenths[-1]
    return {
        "tenths": tenths,
        "worker_last_to_first": round(last["worker_cpu_us_per_event"] / first["worker_cpu_us_per_event"], 3),
        "redis_last_to_first": round(last["redis_us_per_event"] / first["redis_us_per_event"], 3),
        "redis_bytes_last_to_first": round(
            (last["redis_bytes_in_per_event"] + last["redis_bytes_out_per_event"])
            / (first["redis_bytes_in_per_event"] + first["redis_bytes_out_per_event"]),
            3,
        ),
        "longest_redis_call_ms": max(longest_ms, longest_slowlog_ms),
        "longest_batch_ms": round(longest_batch_s * 1000, 1),
        "hub_index_entry_bytes": hub_entries,
        "identifiers": mem["identifiers"],
        "persons": mem["persons"],
        "graph_bytes_per_identifier": mem["graph_bytes_per_identifier"],
        "profile_bytes_per_person": mem["profile_bytes_per_person"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    say(f"generating {args.events} events")
    touches = stream(args.events, args.every, args.seed)
    values = [TouchEvent.from_touch(t).model_dump_json().encode() for t in touches]
    plain = [v for t, v in zip(touches, values, strict=True) if not t.event_id.startswith("hot-")]
    hot = run(values, args.batch, "hot")
    reference = run(plain, args.batch, "reference")
    result = {
        "bench": "growth",
        "events": len(values),
        "hot_every": args.every,
        "batch": args.batch,
        **hot,
        "reference": {"events": len(plain), **{k: v for k, v in reference.items() if k != "hub_index_entry_bytes"}},
        "targets": {"last_to_first": 1.2, "longest_redis_call_ms": 20},
        **machine(),
    }
    print(json.dumps(result, ensure_ascii=False))


def _node(store: RedisIdentityStore, raw: tuple[str, str]) -> str:
    ident = store.normalizer.normalize(*raw)
    return node_of(ident) if isinstance(ident, Identifier) else ""


if __name__ == "__main__":
    main()
