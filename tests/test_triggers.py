"""Marketing-automation triggers through the real pipeline core and Redis: each cause fires once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from identity import ConfigurationError
from identity.triggers import TriggerRules
from schemas import Trigger
from streams.processor import Inbound, Outbound, Processor
from streams.redis_store import RedisIdentityStore

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
PHONE = ("phone", "8 (916) 123-45-67")
CRM = ("crm_contact_id", "amo-7")


def event(eid: str, at: datetime, *ids: tuple[str, str], type: str = "site_visit", **extra: Any) -> bytes:
    body = {
        "event_id": eid,
        "type": type,
        "occurred_at": at.isoformat(),
        "source": "amocrm" if type == "crm_stage" else "site",
        "identifiers": [{"kind": k, "value": v} for k, v in ids],
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def stage(eid: str, at: datetime, to: str, previous: str | None, deal: str = "deal-1") -> bytes:
    crm = {"deal_id": deal, "stage": to, "previous_stage": previous, "pipeline": "sales", "amount": 9e6}
    return event(eid, at, CRM, PHONE, type="crm_stage", crm=crm)


class Pipeline:
    def __init__(self, store: RedisIdentityStore, rules: TriggerRules | None = None) -> None:
        self.processor = Processor(store, rules=rules or TriggerRules(), clock=lambda: NOW)
        self.offset = 0

    def run(self, *values: bytes, confirm: bool = True) -> list[Trigger]:
        batch = [Inbound(v, "touches.crm", 0, self.offset + i) for i, v in enumerate(values)]
        self.offset += len(values)
        out = self.processor.process(batch)
        if confirm:
            self.processor.confirm(out)
        return triggers(out)


def triggers(out: list[Outbound]) -> list[Trigger]:
    found = [Trigger.model_validate_json(o.value or b"") for o in out if o.topic == "triggers"]
    for o, t in zip([o for o in out if o.topic == "triggers"], found, strict=True):
        assert o.trigger_id == t.trigger_id
        assert o.key == t.profile_id.encode()
    return found


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisIdentityStore:
    return RedisIdentityStore(redis_client, prefix=f"trig-{uuid.uuid4().hex[:10]}")


def at(hours: float) -> datetime:
    return NOW - timedelta(hours=20) + timedelta(hours=hours)


def test_a_stage_change_fires_once_with_from_to_deal_and_a_profile_snapshot(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store)
    fired = pipe.run(stage("s1", at(0), "qualified", "new"))
    assert [t.rule for t in fired] == ["stage_changed"]
    t = fired[0]
    assert t.data["from"] == "new"
    assert t.data["to"] == "qualified"
    assert t.data["deal_id"] == "deal-1"
    assert t.data["status"] == "open"
    assert t.event_id == "s1"
    assert t.profile["phones"] == ["+79161234567"]
    assert t.profile["open_deals"][0]["stage"] == "qualified"
    assert pipe.run(stage("s1", at(0), "qualified", "new")) == []  # redelivered: never twice
    assert pipe.run(stage("s2", at(1), "qualified", "qualified")) == []  # not a move


def test_a_crash_before_confirming_re_fires_the_same_trigger_and_then_never_again(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store)
    lost = pipe.run(stage("s1", at(0), "qualified", "new"), confirm=False)  # produced, worker died before recording
    again = pipe.run(stage("s1", at(0), "qualified", "new"))  # redelivery: the event is a duplicate now
    assert [t.trigger_id for t in again] == [t.trigger_id for t in lost]
    assert pipe.run(stage("s1", at(0), "qualified", "new")) == []


def test_a_visit_or_call_with_an_open_deal_is_a_return_once_per_deal_and_window(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store)
    assert [t.rule for t in pipe.run(event("v0", at(0), PHONE))] == []  # no deal yet
    pipe.run(stage("s1", at(1), "meeting", "new"))
    first = pipe.run(event("v1", at(2), PHONE, attributes={"page": "/sever"}))
    assert [(t.rule, t.data["deal_id"], t.data["stage"]) for t in first] == [
        ("returning_with_open_deal", "deal-1", "meeting")
    ]
    assert pipe.run(event("v2", at(2.5), PHONE), event("c1", at(3), PHONE, type="call")) != []  # the call: inquiry
    rules = [t.rule for t in pipe.run(event("v3", at(3.5), PHONE))]
    assert "returning_with_open_deal" not in rules  # same deal, same window: one signal, not one per page view


def test_a_won_deal_is_not_open(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store)
    pipe.run(stage("s1", at(0), "meeting", "new"))
    pipe.run(stage("s2", at(1), "won", "meeting"))
    assert [t.rule for t in pipe.run(event("v1", at(2), PHONE), event("f1", at(3), PHONE, type="form_submit"))] == []


def test_a_new_form_or_call_from_a_person_with_an_active_deal_is_a_repeat_inquiry(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store, TriggerRules(enabled=frozenset({"repeat_inquiry"})))
    pipe.run(stage("s1", at(0), "meeting", "new"))
    form = pipe.run(event("f1", at(1), PHONE, ("email", "ivan@romashka.ru"), type="form_submit"))
    call = pipe.run(event("c1", at(2), PHONE, type="call"))
    assert [(t.rule, t.event_id, t.data["deal_id"]) for t in form + call] == [
        ("repeat_inquiry", "f1", "deal-1"),
        ("repeat_inquiry", "c1", "deal-1"),
    ]
    assert pipe.run(event("v1", at(3), PHONE)) == []  # a visit is not an inquiry
    assert pipe.run(event("f1", at(1), PHONE, ("email", "ivan@romashka.ru"), type="form_submit")) == []


def test_lead_score_crossing_fires_once_per_threshold_and_survives_merges(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store, TriggerRules(enabled=frozenset({"lead_score_crossed"}), lead_thresholds=(50, 100)))
    email = ("email", "anna@romashka.ru")
    assert pipe.run(event("f1", at(0), PHONE, type="form_submit")) == []  # 30
    crossed = pipe.run(event("c1", at(1), PHONE, type="call"))  # 50
    assert [(t.data["threshold"], t.data["lead_score"]) for t in crossed] == [(50, 50)]
    assert pipe.run(event("v1", at(2), PHONE)) == []  # 51: crossed already
    # another person reaches 60 on her own, then turns out to be the same one: 111 crosses 100 only
    pipe.run(event("f2", at(3), email, type="form_submit"), event("f3", at(4), email, type="form_submit"))
    merged = pipe.run(event("f4", at(5), email, PHONE, type="form_submit"))
    assert [t.data["threshold"] for t in merged] == [100]
    assert pipe.run(event("v2", at(6), PHONE)) == []


def test_old_touches_fire_nothing_so_replays_stay_quiet(store: RedisIdentityStore) -> None:
    pipe = Pipeline(store)
    long_ago = NOW - timedelta(days=30)
    assert pipe.run(stage("s1", long_ago, "meeting", "new"), event("c1", long_ago, PHONE, type="call")) == []
    assert [t.rule for t in pipe.run(stage("s2", at(0), "contract", "meeting"))] == ["stage_changed"]


def test_trigger_rules_are_checked_when_configured() -> None:
    with pytest.raises(ConfigurationError, match="unknown trigger rules"):
        TriggerRules(enabled=frozenset({"birthday"}))
    with pytest.raises(ConfigurationError, match="positive"):
        TriggerRules(lead_thresholds=(0,))
