"""The example CRM subscriber: whatever order partitions interleave in, its mirror equals the store."""

from __future__ import annotations

import itertools
import random
import uuid
import zlib
from collections.abc import Callable, Sequence

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ProfileUpdate
from streams.crm_mirror import Mirror
from streams.processor import Inbound, Outbound, Processor
from streams.redis_store import RedisIdentityStore, Snapshot
from tests.conftest import StoreWrapper
from tests.e2e import unique, wire
from tests.test_graph_properties import random_events
from tests.test_processor import event, inbound

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


class MeanwhileBeforeSnapshot(StoreWrapper):
    """The real store, where another worker's batch runs between this worker's apply and its snapshot."""

    def __init__(self, store: RedisIdentityStore, meanwhile: Callable[[], None]) -> None:
        super().__init__(store)
        self.meanwhile = meanwhile

    def snapshot(self, profile_ids: Sequence[str], extra_versions: int = 0) -> Snapshot:
        self.meanwhile()
        return self.store.snapshot(profile_ids, extra_versions)


def test_a_survivor_merged_away_by_another_worker_still_announces_what_it_absorbed(redis_client: redis.Redis) -> None:
    store = RedisIdentityStore(redis_client, prefix=f"mirror-{uuid.uuid4().hex[:10]}")

    def updates(out: list[Outbound]) -> list[Message]:
        return [(o.key, o.value) for o in out if o.topic == "profiles.updates"]

    try:
        a = Processor(store)
        wanda, xenia, yuri = ("email", "wanda@mail.ru"), ("email", "xenia@mail.ru"), ("email", "yuri@mail.ru")
        setup = updates(a.process(inbound([event("w", 0, wanda), event("x", 1, xenia), event("y", 2, yuri)])))
        a_out = updates(a.process(inbound([event("y2", 3, yuri)], 3)))  # worker A updates yuri: still on its way
        y = ProfileUpdate.model_validate_json(a_out[0][1] or b"").profile_id

        def a_merges_xenia_into_wanda() -> None:
            if len(a_out) == 1:
                a_out.extend(updates(a.process(inbound([event("wx", 5, wanda, xenia)], 5))))

        # worker B merges yuri into xenia; between B's apply and B's snapshot, A merges xenia into wanda
        b = Processor(MeanwhileBeforeSnapshot(store, a_merges_xenia_into_wanda))
        b_out = updates(b.process(inbound([event("xy", 4, xenia, yuri)], 4)))
        assert y not in {p["profile_id"] for p in store.profiles()}
        announced = [ProfileUpdate.model_validate_json(value) for _, value in b_out if value is not None]
        assert [y in u.merged_from for u in announced] == [True]  # with a version, not only a tombstone

        # each worker's messages in its own order, the two workers' in any interleaving
        n = len(a_out) + len(b_out)
        for b_at in itertools.combinations(range(n), len(b_out)):
            a_next, b_next = iter(a_out), iter(b_out)
            mirror = Mirror()
            mirror.apply_many(setup)
            mirror.apply_many(next(b_next) if i in b_at else next(a_next) for i in range(n))
            assert mirror.profiles() == list(store.profiles()), b_at
    finally:
        store.clear()
