"""The worker's pipeline core against a real Redis store: what each output topic receives."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from identity import ApplyResult, Touch
from schemas import DeadLetter, IdentityChange, ProfileUpdate
from streams.processor import Inbound, Outbound, Processor
from streams.redis_store import RedisIdentityStore
from tests.conftest import StoreWrapper


def event(eid: str, minute: int, *ids: tuple[str, str], type: str = "site_visit", **extra: Any) -> bytes:
    body = {
        "event_id": eid,
        "type": type,
        "occurred_at": f"2026-11-01T10:{minute:02d}:00+03:00",
        "source": "site",
        "identifiers": [{"kind": k, "value": v} for k, v in ids],
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def inbound(values: list[bytes], start: int = 0) -> list[Inbound]:
    return [Inbound(v, "touches.site", 0, start + i) for i, v in enumerate(values)]


def on(out: list[Outbound], topic: str) -> list[Outbound]:
    return [o for o in out if o.topic == topic]


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisIdentityStore:
    return RedisIdentityStore(redis_client, prefix=f"proc-{uuid.uuid4().hex[:12]}")


def test_touches_become_versioned_profile_updates(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    out = processor.process(
        inbound(
            [
                event("a", 0, ("ga_client_id", "1.1")),
                event("b", 1, ("phone", "8 916 123-45-67"), type="form_submit", attributes={"name": "Иван"}),
            ]
        )
    )
    updates = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(out, "profiles.updates")]
    assert {u.kind for u in updates} == {"created"}
    assert sorted(u.event_ids[0] for u in updates) == ["a", "b"]
    assert len({u.version for u in updates}) == 2
    assert all(o.key == u.profile_id.encode() for o, u in zip(on(out, "profiles.updates"), updates, strict=True))
    ivan = next(u for u in updates if u.event_ids == ["b"])
    assert ivan.profile is not None
    assert ivan.profile["display_name"] == "Иван"

    merge = processor.process(inbound([event("c", 2, ("ga_client_id", "1.1"), ("phone", "+79161234567"))], 2))
    merged = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(merge, "profiles.updates") if o.value]
    tombstones = [o.key for o in on(merge, "profiles.updates") if o.value is None]
    assert [m.kind for m in merged] == ["merged"]
    assert merged[0].version > max(u.version for u in updates)
    assert tombstones == [m.encode() for m in merged[0].merged_from]
    changes = [IdentityChange.model_validate_json(o.value or b"") for o in on(merge, "identity.changes")]
    assert [(c.type, c.merged_from) for c in changes] == [("merged", merged[0].merged_from)]


def test_bad_input_goes_to_the_dead_letter_topic_with_its_bytes_and_the_reason(store: RedisIdentityStore) -> None:
    values = [
        b"not json",
        b"\xff\xfe\x00",
        event("u", 0, ("phone", "89161234567"), type="identity_unlink"),  # an unlink needs two identifiers
        event("ok", 1, ("ga_client_id", "1.2")),
    ]
    out = Processor(store).process(inbound(values, 100))
    letters = [DeadLetter.model_validate_json(o.value or b"") for o in on(out, "touches.dlq")]
    assert [(d.offset, d.error["code"]) for d in letters] == [
        (100, "invalid_message"),
        (101, "invalid_message"),
        (102, "invalid_message"),
    ]
    assert letters[0].value_utf8 == "not json"
    assert letters[1].value_base64 == "//4A"
    assert letters[0].error["errors"][0]["code"] == "json_invalid"
    assert [ProfileUpdate.model_validate_json(o.value or b"").event_ids for o in on(out, "profiles.updates")] == [
        ["ok"]
    ]


def test_conflicts_and_rejected_identifiers_are_reported(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    processor.process(
        inbound(
            [
                event(
                    "a",
                    0,
                    ("crm_contact_id", "1"),
                    ("email", "ivan@mail.ru"),
                    type="crm_stage",
                    crm={"deal_id": "d1", "stage": "new"},
                )
            ]
        )
    )
    out = processor.process(
        inbound([event("b", 1, ("crm_contact_id", "2"), ("email", "ivan@mail.ru"), ("email", "test@test.ru"))], 1)
    )
    changes = [IdentityChange.model_validate_json(o.value or b"") for o in on(out, "identity.changes")]
    assert sorted(c.type for c in changes) == ["conflict", "rejected_identifiers"]
    conflict = next(c for c in changes if c.type == "conflict")
    assert conflict.conflict is not None
    assert conflict.conflict["kind"] == "crm_contact_id"
    rejected = next(c for c in changes if c.type == "rejected_identifiers")
    assert rejected.rejected[0]["reason"] == "placeholder_mailbox"


def test_a_redelivered_batch_changes_nothing_but_re_emits_current_profiles(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    batch = inbound([event("a", 0, ("ga_client_id", "1.1")), event("b", 1, ("ga_client_id", "1.1"))])
    first = processor.process(batch)
    again = processor.process(batch)
    p1 = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(first, "profiles.updates")]
    p2 = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(again, "profiles.updates")]
    assert [u.profile_id for u in p2] == [u.profile_id for u in p1]
    assert p2[0].profile == p1[0].profile
    assert p2[0].version > p1[0].version
    assert on(again, "identity.changes") == []


class FailsOn(StoreWrapper):
    """The real store, with one event that makes the store fail (fault injection, not a fake)."""

    def __init__(self, store: RedisIdentityStore, poison: str) -> None:
        super().__init__(store)
        self.poison = poison

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        if any(t.event_id == self.poison for t in touches):
            raise redis.ResponseError("script failed")
        return self.store.apply_batch(touches)


def test_a_poison_event_is_dead_lettered_and_the_rest_of_its_batch_applies(store: RedisIdentityStore) -> None:
    out = Processor(FailsOn(store, "bad")).process(
        inbound(
            [
                event("x", 0, ("ga_client_id", "1.1")),
                event("bad", 1, ("ga_client_id", "2.2")),
                event("y", 2, ("ga_client_id", "3.3")),
            ]
        )
    )
    letters = [DeadLetter.model_validate_json(o.value or b"") for o in on(out, "touches.dlq")]
    assert [(d.offset, d.error["code"]) for d in letters] == [(1, "store_error")]
    assert sorted(
        ProfileUpdate.model_validate_json(o.value or b"").event_ids[0] for o in on(out, "profiles.updates")
    ) == [
        "x",
        "y",
    ]
    assert store.lookup_raw("ga_client_id", "2.2") is None


def test_an_erasure_sends_erased_then_a_tombstone_and_no_personal_data(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    first = processor.process(inbound([event("a", 0, ("phone", "89161234567"), ("email", "ivan@mail.ru"))]))
    created = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(first, "profiles.updates")]
    pid = created[0].profile_id
    out = processor.process(inbound([event("x", 5, ("email", "ivan@mail.ru"), type="erase_request")], 1))
    messages = on(out, "profiles.updates")
    assert [o.key for o in messages] == [pid.encode(), pid.encode()]
    erased = ProfileUpdate.model_validate_json(messages[0].value or b"")
    assert (erased.kind, erased.profile, erased.profile_id) == ("erased", None, pid)
    assert erased.version > created[0].version
    assert erased.evidence[0]["rule"] == "erasure"
    assert messages[1].value is None  # the tombstone: compaction forgets the key
    assert b"ivan" not in (messages[0].value or b"")
    assert b"9161234567" not in (messages[0].value or b"")
    changes = [IdentityChange.model_validate_json(o.value or b"") for o in on(out, "identity.changes")]
    assert [(c.type, c.profile_id) for c in changes] == [("erased", pid)]


def test_a_split_names_what_moved_and_why(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    office = ("phone", "8 495 777 00 11")
    processor.process(
        inbound(
            [
                event("c1", 0, office, ("ga_client_id", "1.1"), type="call"),
                event("f1", 1, ("ga_client_id", "1.1"), ("email", "anna@mail.ru"), ("phone", "89161110000")),
            ]
        )
    )
    # a second person's identifiers seen with the switchboard: it is shared, the glue comes apart
    out = processor.process(
        inbound(
            [
                event("c2", 2, office, ("ga_client_id", "2.2"), type="call"),
                event("f2", 3, ("ga_client_id", "2.2"), ("email", "boris@mail.ru"), ("phone", "89162220000")),
            ],
            2,
        )
    )
    updates = [ProfileUpdate.model_validate_json(o.value or b"") for o in on(out, "profiles.updates") if o.value]
    splits = [u for u in updates if u.kind == "split"]
    assert splits
    assert any(e["rule"] == "shared_identifier" for u in splits for e in u.evidence)
    assert any(e.get("shared") == [{"kind": "phone", "value": "+74957770011"}] for u in splits for e in u.evidence)
    changes = [IdentityChange.model_validate_json(o.value or b"") for o in on(out, "identity.changes")]
    split_changes = [c for c in changes if c.type == "split"]
    assert split_changes
    assert all(c.evidence and c.evidence["rule"] == "shared_identifier" for c in split_changes)
    # the console's review lists contested values: the switchboard is announced as shared, once
    shared = [c for c in changes if c.type == "shared"]
    assert [c.shared for c in shared] == [[{"kind": "phone", "value": "+74957770011"}]]


def test_a_merge_chain_in_one_batch_names_every_retired_id_in_the_survivors_update(store: RedisIdentityStore) -> None:
    processor = Processor(store)
    yuri, xenia, quinn = ("email", "yuri@mail.ru"), ("email", "xenia@mail.ru"), ("email", "quinn@mail.ru")
    processor.process(inbound([event("y", 0, yuri), event("x", 1, xenia), event("q", 2, quinn)]))
    # xenia absorbs quinn, then yuri absorbs xenia: quinn must be named with a version too (a bare
    # tombstone would let an older update of quinn from another worker bring it back in a subscriber)
    out = processor.process(inbound([event("xq", 3, xenia, quinn), event("yx", 4, yuri, xenia)], 3))
    updates = [ProfileUpdate.model_validate_json(o.value) for o in on(out, "profiles.updates") if o.value]
    tombstones = sorted((o.key or b"").decode() for o in on(out, "profiles.updates") if o.value is None)
    assert [u.kind for u in updates] == ["merged"]
    assert len(tombstones) == 2
    assert updates[0].merged_from == tombstones
    assert sorted(updates[0].event_ids) == ["xq", "yx"]
