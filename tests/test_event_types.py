"""Messages, e-mail events, purchases and offline visits: decoded, linked, on the profile and in the reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine

from identity import CrmInfo, IdentityGraph, ResolutionPolicy, TouchType, Utm
from schemas import InvalidMessage, TouchEvent, decode_touch
from sinks.warehouse.report import channel_report
from tests.conftest import touch
from tests.test_warehouse import Pipeline, postgres_server, warehouse  # noqa: F401 - the warehouse fixtures

PHONE, TG = ("phone", "+7 916 555-44-33"), ("messenger_id", "telegram:@anna_s")


def wire(**fields: Any) -> bytes:
    base = {"event_id": "e1", "occurred_at": "2026-11-02T10:15:00+03:00", "source": "1c",
            "identifiers": [{"kind": "phone", "value": "+7 916 555-44-33"}]}  # fmt: skip
    return json.dumps({**base, **fields}, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"type": "purchase"}, "purchase (order_id, amount, currency) is required"),
        ({"type": "call", "purchase": {"order_id": "1", "amount": 5, "currency": "RUB"}}, "for type purchase only"),
        ({"type": "purchase", "purchase": {"order_id": "1", "amount": -5, "currency": "RUB"}}, "purchase.amount"),
        ({"type": "purchase", "purchase": {"order_id": "1", "amount": 5, "currency": "rub"}}, "purchase.currency"),
        ({"type": "email_event", "attributes": {"action": "bounce"}}, "attributes.action"),
    ],
)
def test_each_new_type_says_what_it_needs(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_touch(wire(**fields))
    assert needle in json.dumps(caught.value.to_dict(), ensure_ascii=False)


def test_a_purchase_is_a_won_deal_of_its_own_and_round_trips() -> None:
    purchase = {"order_id": "ЗК-1077", "amount": 12990.5, "currency": "RUB",
                "items": [{"sku": "A-1", "name": "Диван", "quantity": 1, "price": 12990.5}]}  # fmt: skip
    event = decode_touch(wire(type="purchase", purchase=purchase))
    core = event.to_touch()
    assert core.crm == CrmInfo("purchase:ЗК-1077", "won", None, "purchase", 12990.5, "RUB")
    again = TouchEvent.from_touch(core).to_touch()
    assert again == core


def test_messages_link_visits_in_person_are_leads_and_purchases_are_revenue() -> None:
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch("m1", 0, TG, PHONE, type="message", source="wazzup", attributes={"platform": "telegram"},
                  utm=Utm("vk", "cpc", "autumn")),
            touch("o1", 60, PHONE, type="offline_visit", source="showroom"),
            touch("x1", 90, ("email", "anna.s@mail.ru"), PHONE, type="email_event", source="unisender",
                  attributes={"action": "open"}, utm=Utm("email", "newsletter", "nov")),
            touch("p1", 120, PHONE, type="purchase", source="1c",
                  crm=CrmInfo("purchase:77", "won", None, "purchase", 5000.0, "RUB")),
        ]
    )  # fmt: skip
    person = graph.lookup(graph.normalizer.normalize(*PHONE))  # type: ignore[arg-type]
    assert person is not None
    assert graph.lookup(graph.normalizer.normalize(*TG)) == person  # type: ignore[arg-type]
    profile = graph.profile(person)
    assert profile is not None
    assert profile["touch_counts"] == {"email_event": 1, "message": 1, "offline_visit": 1, "purchase": 1}
    assert profile["deals"]["purchase:77"]["status"] == "won"
    assert profile["attribution"]["lead_at"] is not None  # the message was the first inquiry
    steps = profile["attribution"]["models"]["first"]
    # the e-mail was only opened: not a step of the path; the message's campaign is
    assert [(s["source"], s["campaign"]) for s in steps] == [("vk", "autumn")]


def test_the_channel_report_credits_a_purchase(redis_client: redis.Redis, warehouse: Engine) -> None:  # noqa: F811
    Pipeline(redis_client, warehouse).feed(
        [
            touch("v1", 0, ("ga_client_id", "GA1.2.1.1700"), PHONE, type="form_submit",
                  utm=Utm("yandex", "cpc", "brand")),
            touch("p1", 30, PHONE, type="purchase", source="1c",
                  crm=CrmInfo("purchase:77", "won", None, "purchase", 5000.0, "RUB")),
        ]
    )  # fmt: skip
    report = channel_report(warehouse, model="first")
    (row,) = [r for r in report.rows if r.source == "yandex"]
    assert (row.won_deals, row.revenue) == (1.0, 5000.0)
    assert TouchType.PURCHASE.value == "purchase"


# ----------------------------------------------------------------------------- the operator's own types

DECLARED = {
    "webinar": {"marketing": True, "lead": True},
    "loyalty_scan": {"links": False},
    "kiosk_sale": {"conversion": True},
}


def test_declared_types_link_lead_convert_or_only_attach_as_their_flags_say() -> None:
    graph = IdentityGraph(ResolutionPolicy(event_types=DECLARED))
    graph.apply_many(
        [
            touch("w1", 0, PHONE, ("email", "anna.s@mail.ru"), type="webinar", source="webinar_ru",
                  utm=Utm("telegram", "post", "webinar_nov")),
            # a shop's loyalty card scanner saw the card beside a phone someone typed: attach, do not link
            touch("l1", 10, ("email", "anna.s@mail.ru"), ("phone", "+7 916 000-00-99"), type="loyalty_scan"),
            touch("k1", 20, PHONE, type="kiosk_sale", attributes={"amount": 3500, "order_id": "K-5"}),
        ]
    )  # fmt: skip
    person = graph.lookup_raw(*PHONE)
    assert person is not None
    assert graph.lookup_raw("email", "anna.s@mail.ru") == person
    assert graph.lookup_raw("phone", "+7 916 000-00-99") is None  # the scan linked nothing
    profile = graph.profile(person)
    assert profile is not None
    assert profile["touch_counts"] == {"kiosk_sale": 1, "loyalty_scan": 1, "webinar": 1}
    assert profile["attribution"]["lead_at"] is not None
    assert [s["campaign"] for s in profile["attribution"]["models"]["first"]] == ["webinar_nov"]
    deal = profile["deals"]["kiosk_sale:K-5"]
    assert (deal["status"], deal["amount"]) == ("won", 3500.0)


def test_an_undeclared_type_decodes_and_is_a_dead_letter_naming_the_setting(redis_client: redis.Redis) -> None:
    import uuid

    from streams.processor import Inbound, Processor
    from streams.redis_store import RedisIdentityStore

    store = RedisIdentityStore(redis_client, prefix=f"types-{uuid.uuid4().hex[:8]}")
    value = wire(type="webinar", source="webinar_ru")
    assert decode_touch(value).to_touch().type.value == "webinar"
    (letter,) = Processor(store).process([Inbound(value, "touches.site", 0, 0)])
    assert letter.topic == "touches.dlq"
    assert "IDSTREAM_EVENT_TYPES" in json.loads(letter.value or b"{}")["error"]["message"]
    declared = RedisIdentityStore(redis_client, ResolutionPolicy(event_types=DECLARED), prefix=store.prefix)
    out = Processor(declared).process([Inbound(value, "touches.site", 0, 1)])
    assert [o.topic for o in out if o.topic == "touches.dlq"] == []


@pytest.mark.parametrize(
    "types",
    [{"call": {"lead": True}}, {"Webinar": {}}, {"webinar": {"paid": True}}, {"webinar": {"lead": "yes"}}],
)
def test_a_bad_declaration_is_refused_with_its_name(types: dict[str, Any]) -> None:
    from identity import ConfigurationError

    with pytest.raises(ConfigurationError, match="event type"):
        ResolutionPolicy(event_types=types)


def test_a_declared_conversion_reaches_the_warehouse_as_revenue(redis_client: redis.Redis, warehouse: Engine) -> None:  # noqa: F811
    policy = ResolutionPolicy(event_types=DECLARED)
    Pipeline(redis_client, warehouse, policy).feed(
        [
            touch("v1", 0, ("ga_client_id", "GA1.2.1.1700"), PHONE, type="form_submit",
                  utm=Utm("yandex", "cpc", "brand")),
            touch("k1", 30, PHONE, type="kiosk_sale", source="kiosk", attributes={"amount": 3500, "order_id": "K-5"}),
        ]
    )  # fmt: skip
    (row,) = [r for r in channel_report(warehouse, model="first").rows if r.source == "yandex"]
    assert (row.won_deals, row.revenue) == (1.0, 3500.0)
