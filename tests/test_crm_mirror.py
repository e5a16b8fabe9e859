"""The example CRM subscriber: whatever order partitions interleave in, its mirror equals the store."""

from __future__ import annotations

import random
import uuid
import zlib

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ProfileUpdate
from streams.crm_mirror import Mirror
from streams.processor import Inbound, Processor
from streams.redis_store import RedisIdentityStore
from tests.test_graph_properties import random_events
from tests.test_stream_e2e import unique, wire

Message = tuple[bytes | None, bytes | None]


def produced(store: RedisIdentityStore, seed: int, partitions: int = 4) -> list[list[Message]]:
    """Run a random stream through the real processor; return profiles.updates split by partition."""
    rng = random.Random(seed)
    touches = unique([t for _ in range(6) for t in random_events(rng, 8)])
    rng.shuffle(touches)  # late events: reorders, splits, merges
    processor = Processor(store)
    by_partition: list[list[Message]] = [[] for _ in range(partitions)]
    values = wire(touches)
    for start in range(0, len(values), 7):
        batch = [Inbound(v, "touches", 0, start + i) for i, v in enumerate(values[start : start + 7])]
        for out in processor.process(batch):
            if out.topic == "profiles.updates":
                assert out.key is not None
                by_partition[zlib.crc32(out.key) % partitions].append((out.key, out.value))
    return by_partition


def interleave(parts: list[list[Message]], rng: random.Random) -> list[Message]:
    """Any merge of the partitions that keeps each partition's order (what a consumer may see)."""
    queues = [list(p) for p in parts]
    out = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), order=st.integers(0, 2**16))
def test_the_mirror_equals_the_store_whatever_the_interleaving(
    redis_client: redis.Redis, seed: int, order: int
) -> None:
    store = RedisIdentityStore(redis_client, prefix=f"mirror-{uuid.uuid4().hex[:10]}")
    try:
        parts = produced(store, seed)
        mirror = Mirror()
        mirror.apply_many(interleave(parts, random.Random(order)))
        assert mirror.profiles() == list(store.profiles())
        for deal_id, pid in mirror.deals().items():  # re-homed to live persons
            assert any(deal_id in p["deals"] for p in store.profiles() if p["profile_id"] == pid)
    finally:
        store.clear()


def test_a_merge_re_homes_deals_and_a_late_update_of_a_retired_id_is_ignored() -> None:
    def update(kind: str, pid: str, version: int, deals: list[str], merged_from: list[str] | None = None) -> bytes:
        profile = {"profile_id": pid, "deals": {d: {"deal_id": d} for d in deals}}
        return (
            ProfileUpdate(
                kind=kind,
                profile_id=pid,
                version=version,
                event_ids=["e"],
                merged_from=merged_from or [],
                profile=profile,
            )
            .model_dump_json()
            .encode()
        )

    mirror = Mirror()
    mirror.apply_many([(b"p_old", update("created", "p_old", 1, ["deal-1"]))])
    mirror.apply_many([(b"p_new", update("merged", "p_new", 5, ["deal-2"], ["p_old"]))])
    assert mirror.deals() == {"deal-1": "p_new", "deal-2": "p_new"}
    mirror.apply_many([(b"p_old", update("updated", "p_old", 3, ["deal-1"])), (b"p_old", None)])  # late, then tombstone
    assert [p["profile_id"] for p in mirror.profiles()] == ["p_new"]
    assert mirror.survivor("p_old") == "p_new"
    mirror.apply_many([(b"p_old", update("split", "p_old", 9, ["deal-1"]))])  # a split gives the id back
    assert [p["profile_id"] for p in mirror.profiles()] == ["p_new", "p_old"]
    assert mirror.deals()["deal-1"] == "p_old"
