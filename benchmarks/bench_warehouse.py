"""Warehouse sink benchmark: messages/s through WarehouseWriter into SQLite and PostgreSQL.

    python benchmarks/bench_warehouse.py [--persons 2000] [--batch 500] [--seed 1] [--postgres URL]

Prints one JSON line. The stream is `idstream generate`'s, resolved first by the real processor on a
private redis-server, so the warehouse sees the touch messages and the `profiles.updates` messages a
deployment produces (merges, splits, tombstones), interleaved batch by batch as they were produced.
PostgreSQL: a scratch database is created on the given server (default 127.0.0.1:5432) and dropped;
skipped when none answers.

Reference measured in the same run, per database: the same touch rows written with one plain
executemany INSERT per batch into a bare table: the floor of any sink that stores a row per touch.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import Column, Engine, MetaData, String, Table, insert

from identity import Normalizer, ResolutionPolicy
from identity.graph import DEFAULT_ERASURE_KEY
from identity.triggers import TriggerRules
from schemas import TouchEvent
from sinks.warehouse import Message, WarehouseWriter, connect, migrate
from streams.embedded import start_redis
from streams.generate import generate
from streams.processor import Inbound, OutputTopics, Processor
from streams.redis_store import RedisIdentityStore


def resolved(persons: int, seed: int, batch: int) -> list[list[Message]]:
    """Batches of warehouse input: each resolver batch's touches, then the profile messages it produced."""
    touches = generate(persons, seed).touches
    out: list[list[Message]] = []
    with start_redis() as server:
        store = RedisIdentityStore(redis.Redis.from_url(server.url), prefix=f"bench-{uuid.uuid4().hex[:8]}")
        processor = Processor(store, OutputTopics(), TriggerRules(enabled=frozenset()))
        offset = 0
        for i in range(0, len(touches), batch):
            inbound = []
            for touch in touches[i : i + batch]:
                offset += 1
                inbound.append(
                    Inbound(TouchEvent.from_touch(touch).model_dump_json().encode(), "touches.site", 0, offset)
                )
            messages = [Message(m.topic, 0, m.offset, None, m.value) for m in inbound]
            for o in processor.process(inbound):
                if o.topic == "profiles.updates":
                    offset += 1
                    messages.append(Message(o.topic, 0, offset, o.key, o.value))
            out.append(messages)
    return out


def measure(engine: Engine, batches: list[list[Message]]) -> dict[str, Any]:
    migrate(engine)
    writer = WarehouseWriter(engine, ResolutionPolicy(), Normalizer(), DEFAULT_ERASURE_KEY)
    bare = Table("bench_reference", MetaData(), Column("event_id", String(128), primary_key=True),
                 Column("body", String))  # fmt: skip
    bare.create(engine)
    touch_rows = [[{"event_id": f"{m.offset}", "body": (m.value or b"").decode()[:200]} for m in b
                   if m.topic != "profiles.updates"] for b in batches]  # fmt: skip
    start = time.perf_counter()
    for rows in touch_rows:
        with engine.begin() as conn:
            conn.execute(insert(bare), rows)
    reference = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        writer.write(batch)
    sink = time.perf_counter() - start
    messages = sum(len(b) for b in batches)
    touches = sum(len(r) for r in touch_rows)
    return {
        "messages": messages,
        "touches": touches,
        "sink_messages_per_s": round(messages / sink),
        "sink_touches_per_s": round(touches / sink),
        "reference_insert_rows_per_s": round(touches / reference),
        "sink_to_reference": round(reference / sink, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    batches = resolved(args.persons, args.seed, args.batch)
    result: dict[str, Any] = {"bench": "warehouse", "persons": args.persons, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        engine = connect(f"sqlite:///{Path(tmp) / 'bench.db'}")
        result["sqlite"] = measure(engine, batches)
        engine.dispose()
    try:
        name = f"idstream_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            engine = connect(args.postgres.rsplit("/", 1)[0] + f"/{name}")
            result["postgresql"] = measure(engine, batches)
            engine.dispose()
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.OperationalError as exc:
        result["postgresql"] = f"skipped: {exc}".strip()
    result["python"] = platform.python_version()
    result["cpu"] = platform.machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
