"""Marketing-automation triggers through the real pipeline core and Redis: each cause fires once."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from identity import ConfigurationError
from identity.triggers import TriggerRules
from schemas import Trigger
from streams.processor import Inbound, Outbound, Processor
from streams.redis_store import RedisIdentityStore
from tests.e2e import Deployment, wait_for

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


# ----------------------------------------------------------------------------- missed calls


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def call(eid: str, minutes: float, status: str, phone: tuple[str, str] = PHONE) -> bytes:
    return event(eid, NOW + timedelta(minutes=minutes), phone, type="call", call={"status": status, "wait_s": 40})


def due(processor: Processor) -> list[Trigger]:
    out, decided = processor.due()
    processor.settle(out, decided)
    return triggers(out)


def test_a_missed_call_nobody_returned_fires_once_its_window_has_passed(store: RedisIdentityStore) -> None:
    clock = Clock(NOW)
    processor = Processor(store, rules=TriggerRules(missed_call_window_s=30 * 60), clock=clock)
    processor.process([Inbound(call("m1", 0, "missed"), "touches.calls", 0, 0)])
    clock.now = NOW + timedelta(minutes=29)
    assert due(processor) == []  # the window is still open
    clock.now = NOW + timedelta(minutes=31)
    (fired,) = due(processor)
    assert (fired.rule, fired.event_id) == ("missed_call_not_returned", "m1")
    assert fired.data["within_minutes"] == 30
    assert fired.data["wait_s"] == 40
    assert fired.profile["profile_id"] == fired.profile_id  # the screen-pop card, for the call-back
    assert due(processor) == []  # decided: never again
    # a redelivered batch adds the call again; its trigger has fired, so nothing more
    processor.process([Inbound(call("m1", 0, "missed"), "touches.calls", 0, 0)])
    assert due(processor) == []


def test_a_missed_call_answered_back_in_time_fires_nothing(store: RedisIdentityStore) -> None:
    clock = Clock(NOW)
    processor = Processor(store, rules=TriggerRules(missed_call_window_s=30 * 60), clock=clock)
    processor.process([Inbound(call("m1", 0, "missed"), "touches.calls", 0, 0)])
    processor.process([Inbound(call("a1", 12, "answered"), "touches.calls", 0, 1)])  # the call center called back
    processor.process([Inbound(call("m2", 5, "missed", ("phone", "+7 916 000-11-22")), "touches.calls", 0, 2)])
    processor.process([Inbound(call("a2", 50, "answered", ("phone", "+7 916 000-11-22")), "touches.calls", 0, 3)])
    clock.now = NOW + timedelta(hours=2)
    fired = due(processor)
    assert [t.event_id for t in fired] == ["m2"]  # returned after 45 minutes: too late for a 30-minute promise


def test_the_missed_call_trigger_can_be_turned_off(store: RedisIdentityStore) -> None:
    clock = Clock(NOW)
    rules = TriggerRules(enabled=frozenset({"stage_changed"}))
    processor = Processor(store, rules=rules, clock=clock)
    processor.process([Inbound(call("m1", 0, "missed"), "touches.calls", 0, 0)])
    clock.now = NOW + timedelta(hours=2)
    assert processor.due() == ([], [])


def test_a_worker_fires_for_a_missed_call_once_its_window_has_passed(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    """Through a real worker: the call happened two minutes ago, the window is one minute, the check runs each
    second; the trigger comes out on the topic once."""
    deployment = Deployment(kafka, redis_url, tmp_path, partitions=1)
    try:
        deployment.start_worker(IDSTREAM_MISSED_CALL_MINUTES="1", IDSTREAM_MISSED_CALL_CHECK_S="1")
        moment = datetime.now(UTC) - timedelta(minutes=2)
        deployment.produce([event("late-1", moment, PHONE, type="call", call={"status": "missed"})])
        topic = deployment.settings.triggers_topic
        fired = wait_for(lambda: [Trigger.model_validate_json(v) for _, v in deployment.read(topic) if v], 60,
                         "the missed-call trigger")  # fmt: skip
        assert [(t.rule, t.event_id) for t in fired] == [("missed_call_not_returned", "late-1")]
        time.sleep(3)  # more checks: still once
        assert len([v for _, v in deployment.read(topic) if v]) == 1
    finally:
        deployment.stop()
