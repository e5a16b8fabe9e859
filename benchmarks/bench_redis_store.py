"""Redis store benchmark: events/s through the Lua script, and Redis memory per identifier and per profile.

    python benchmarks/bench_redis_store.py [--persons 5000] [--batch 500] [--seed 1]

Prints one JSON line. Starts a private redis-server (IDSTREAM_REDIS_URL is not used, so the figures
are not polluted by other data). The stream is `idstream generate`'s. Memory is read per key with
MEMORY USAGE and split into the graph (identifier index, persons, evidence, history forest), the
golden-profile aggregates, and the seen set of event ids.

Reference measured in the same run: the same number of events written as one HSET each, pipelined
in the same batches: the floor of any design that stores something per event.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid

import redis
from benchlib import redis_memory

from streams.embedded import start_redis
from streams.generate import generate
from streams.redis_store import RedisIdentityStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    stream = generate(args.persons, args.seed).touches
    with start_redis() as server:
        client = redis.Redis.from_url(server.url)
        store = RedisIdentityStore(client, prefix=f"bench-{uuid.uuid4().hex[:8]}")
        batches = [stream[i : i + args.batch] for i in range(0, len(stream), args.batch)]

        start = time.perf_counter()
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            for touch in batch:
                pipe.hset("reference", touch.event_id, touch.source)
            pipe.execute()
        ref_s = time.perf_counter() - start

        start = time.perf_counter()
        for batch in batches:
            store.apply_batch(batch)
        store_s = time.perf_counter() - start

        mem = redis_memory(client, store.prefix)
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        print(
            json.dumps(
                {
                    "bench": "redis_store",
                    "events": len(stream),
                    "batch": args.batch,
                    "identifiers": mem["identifiers"],
                    "persons": mem["persons"],
                    "store_events_per_s": round(len(stream) / store_s),
                    "reference_hset_events_per_s": round(len(stream) / ref_s),
                    "store_to_reference": round(ref_s / store_s, 4),
                    "redis_us_per_event": round(stats.get("usec", 0) / len(stream), 1),
                    "graph_bytes_per_identifier": mem["graph_bytes_per_identifier"],
                    "profile_bytes_per_person": mem["profile_bytes_per_person"],
                    "seen_bytes_per_event": round(mem["applied_id_bytes"] / len({t.event_id for t in stream})),
                    "bytes_by_key": mem["bytes_by_key"],
                    "redis": client.info("server")["redis_version"],
                    "python": platform.python_version(),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                }
            )
        )
        client.close()


if __name__ == "__main__":
    main()
