"""The warehouse sink and the channel report, against a real SQLite file and a real PostgreSQL.

The touches go through the real resolver (Redis store and processor) first, so the warehouse sees
exactly the ``profiles.updates`` messages a deployment produces: merges, splits, tombstones, erasures.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select, text

from identity import CrmInfo, Identifier, Normalizer, ResolutionPolicy, Touch, Utm
from identity.graph import DEFAULT_ERASURE_KEY, erasure_hash
from identity.triggers import TriggerRules
from schemas import TouchEvent
from sinks.warehouse import Message, WarehouseWriter, connect, head_revision, migrate, revision
from sinks.warehouse import tables as t
from sinks.warehouse.report import channel_report, plot, render
from streams.processor import Inbound, OutputTopics, Processor
from streams.redis_store import RedisIdentityStore
from tests.conftest import T0, touch

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL of the development machines, or a skip that says what is missing."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL reachable at 127.0.0.1:5432 (trust auth, user postgres): {exc}".strip())
    return PG_ADMIN


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty, migrated warehouse: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        engine = connect(f"sqlite:///{tmp_path / 'warehouse.db'}")
        migrate(engine)
        yield engine
        engine.dispose()
        return
    import psycopg

    admin_url = request.getfixturevalue("postgres_server")
    name = f"idstream_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Pipeline:
    """The resolver (real Redis store and processor) feeding the warehouse writer."""

    def __init__(self, client: redis.Redis, engine: Engine, policy: ResolutionPolicy | None = None) -> None:
        self.policy = policy or ResolutionPolicy()
        self.store = RedisIdentityStore(client, self.policy, prefix=f"wh-{uuid.uuid4().hex[:12]}")
        self.processor = Processor(self.store, OutputTopics(), TriggerRules(enabled=frozenset()))
        self.writer = WarehouseWriter(engine, self.policy, Normalizer(), DEFAULT_ERASURE_KEY)
        self.offset = 0
        self.log: list[Message] = []  # every message the warehouse was given, in order

    def resolve(self, touches: Sequence[Touch]) -> tuple[list[Message], list[Message]]:
        """Resolve touches one batch each; returns the raw touch messages and the profile messages."""
        raw, profiles = [], []
        for item in touches:
            self.offset += 1
            value = TouchEvent.from_touch(item).model_dump_json().encode()
            topic = "touches.crm" if item.type.value == "crm_stage" else "touches.site"
            raw.append(Message(topic, 0, self.offset, None, value))
            for out in self.processor.process([Inbound(value, topic, 0, self.offset)]):
                if out.topic == "profiles.updates":
                    self.offset += 1
                    profiles.append(Message(out.topic, 0, self.offset, out.key, out.value))
        return raw, profiles

    def write(self, messages: Sequence[Message]) -> Any:
        self.log.extend(messages)
        return self.writer.write(messages)

    def feed(self, touches: Sequence[Touch]) -> None:
        raw, profiles = self.resolve(touches)
        for item in raw:  # touch by touch, each followed by what the resolver said about it
            self.write([item])
        self.write(profiles)


@pytest.fixture
def pipeline(redis_client: redis.Redis, warehouse: Engine) -> Pipeline:
    return Pipeline(redis_client, warehouse)


def rows(engine: Engine, table: Any, *skip: str) -> list[tuple[Any, ...]]:
    """Every row of a table, sorted, without the named columns (e.g. wall-clock times)."""
    columns = [c for c in table.c if c.name not in skip]
    with engine.connect() as conn:  # times compare as UTC: SQLite keeps no offset, PostgreSQL answers in its zone
        found = [tuple(_utc(v) if isinstance(v, datetime) else v for v in r) for r in conn.execute(select(*columns))]
    return sorted(found)


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table.name: rows(engine, table, "updated_at")
        for table in (t.touches, t.persons, t.person_identifiers, t.deal_stages, t.deals, t.attribution,
                      t.assists, t.ad_spend)
    }  # fmt: skip


def owners(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(t.touches.c.event_id, t.touches.c.profile_id)).all())


GA_PHONE = ("ga_client_id", "GA1.2.100.1700000000")
GA_LAPTOP = ("ga_client_id", "GA1.2.200.1700000000")
PHONE = ("phone", "+7 916 100-20-30")
CRM = ("crm_contact_id", "amo-100")


def ivan() -> list[Touch]:
    """Two devices known apart until the call carries both; then a deal, won."""
    return [
        touch("v1", 0, GA_PHONE, utm=Utm("yandex", "cpc", "brand")),
        touch("v2", 60, GA_LAPTOP, utm=Utm("google", "organic")),
        touch("f1", 70, GA_LAPTOP, PHONE, type="form_submit"),
        touch("c1", 120, PHONE, GA_PHONE, type="call", source="calltouch", utm=Utm("yandex", "cpc", "brand")),
        touch("d1", 180, PHONE, CRM, type="crm_stage", source="amocrm", crm=CrmInfo("deal-1", "new", None, "sales")),
        touch("d2", 600, CRM, type="crm_stage", source="amocrm",
              crm=CrmInfo("deal-1", "won", "new", "sales", 250_000.0)),
    ]  # fmt: skip


def test_history_rows_follow_merges_to_the_surviving_person(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    pipeline.feed(ivan()[:2])
    before = owners(engine)
    assert before["v1"] != before["v2"]  # two devices, two persons so far
    pipeline.feed(ivan()[2:])
    live = pipeline.store.lookup_raw(*PHONE)
    assert live is not None
    assert owners(engine) == dict.fromkeys(["v1", "v2", "f1", "c1"], live)
    with engine.connect() as conn:
        persons = conn.execute(select(t.persons.c.profile_id, t.persons.c.identifiers)).all()
        deal = conn.execute(select(t.deals)).one()
        stages = conn.execute(select(t.deal_stages.c.event_id, t.deal_stages.c.profile_id)).all()
    assert [p for p, _ in persons] == [live]  # the retired ids are gone
    assert json.loads(persons[0][1])["crm_contact_id"] == ["amo-100"]
    assert sorted(stages) == [("d1", live), ("d2", live)]
    assert (deal.profile_id, deal.stage, deal.status, deal.amount) == (live, "won", "won", 250_000.0)
    assert _utc(deal.created_at) == T0 + timedelta(minutes=180)
    assert _utc(deal.won_at) == T0 + timedelta(minutes=600)


def credits(engine: Engine, conversion: str, model: str) -> dict[str, float]:
    at = t.attribution
    with engine.connect() as conn:
        query = select(at.c.source, at.c.credit).where(at.c.conversion == conversion, at.c.model == model)
        return {s: round(c, 4) for s, c in conn.execute(query).all()}


def test_attribution_rows_are_the_models_credits_of_each_conversion(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    pipeline.feed(ivan())
    # lead: the form at minute 70, after v1 (yandex), v2 (google) and the form itself (direct)
    assert credits(engine, "lead", "first") == {"yandex": 1.0}
    assert credits(engine, "lead", "last") == {"(direct)": 1.0}
    assert credits(engine, "lead", "last_non_direct") == {"google": 1.0}
    assert credits(engine, "lead", "linear") == {"yandex": 0.3333, "google": 0.3333, "(direct)": 0.3333}
    assert credits(engine, "lead", "position") == {"yandex": 0.4, "google": 0.2, "(direct)": 0.4}
    # the deal: created at minute 180, after the call (yandex) too
    assert credits(engine, "deal", "last") == {"yandex": 1.0}
    assert credits(engine, "deal", "position") == {"yandex": 0.4 + 0.4, "google": 0.1, "(direct)": 0.1}
    with engine.connect() as conn:
        assisted = conn.execute(select(t.assists.c.source)).scalars().all()
    assert sorted(assisted) == ["(direct)", "google", "yandex"]  # yandex also assisted: v1 came before the end
    # the golden profile says the same
    profile = pipeline.store.profile(pipeline.store.lookup_raw(*PHONE) or "")
    assert profile is not None
    lead_view = {r["source"]: round(r["credit"], 4) for r in profile["attribution"]["models"]["position"]}
    assert lead_view == credits(engine, "lead", "position")


def test_a_split_rehomes_the_rows_of_the_identifiers_that_moved(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    pipeline.feed(ivan()[:5])  # the CRM contact claims the phone: one person
    merged = pipeline.store.lookup_raw(*PHONE)
    assert set(owners(engine).values()) == {merged}
    pipeline.feed([touch("u1", 200, GA_PHONE, PHONE, type="identity_unlink", source="operator")])
    phone_person, device_person = pipeline.store.lookup_raw(*PHONE), pipeline.store.lookup_raw(*GA_PHONE)
    assert phone_person != device_person
    assert pipeline.store.lookup_raw(*GA_LAPTOP) == phone_person
    # v1 was recorded under the phone's device id; the form and the call under the phone number
    assert owners(engine) == {"v1": device_person, "v2": phone_person, "f1": phone_person, "c1": phone_person}
    with engine.connect() as conn:
        persons = set(conn.scalars(select(t.persons.c.profile_id)))
        deal_owner = conn.scalar(select(t.deals.c.profile_id))
    assert persons == {phone_person, device_person}
    assert deal_owner == phone_person
    assert set(credits(engine, "deal", "first")) == {"google"}  # the device's yandex visit left the path


def test_redelivery_and_either_stream_first_give_the_same_tables(
    redis_client: redis.Redis, warehouse: Engine, tmp_path: Path
) -> None:
    first = Pipeline(redis_client, warehouse)
    raw, profiles = first.resolve([*ivan(), touch("u1", 700, GA_PHONE, PHONE, type="identity_unlink")])
    first.write(raw)
    first.write(profiles)
    expected = dump(warehouse)
    assert expected["touches"]
    assert expected["attribution"]
    assert expected["deals"]
    first.write(raw[:3])
    first.write(profiles[2:])  # a redelivery of part of the stream, mid-way
    first.write(profiles)
    assert dump(warehouse) == expected
    other = connect(f"sqlite:///{tmp_path / 'other.db'}")
    migrate(other)
    writer = WarehouseWriter(other, first.policy, Normalizer(), DEFAULT_ERASURE_KEY)
    for message in profiles:  # the profiles stream entirely first, one message at a time
        writer.write([message])
    for message in raw:
        writer.write([message])
    got = dump(other)
    assert {k: v for k, v in got.items() if k != "persons"} == {k: v for k, v in expected.items() if k != "persons"}
    assert [r[0] for r in got["persons"]] == [r[0] for r in expected["persons"]]


def test_an_erased_person_leaves_no_rows(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    pipeline.feed(ivan())
    other = touch("m1", 30, ("ga_client_id", "GA1.2.900.1700000000"), utm=Utm("vk", "cpc"))
    pipeline.feed([other, touch("x1", 700, PHONE, type="erase_request", source="dpo")])
    survivors = rows(engine, t.touches)
    assert [r[0] for r in survivors] == ["m1"]
    for table in (t.deal_stages, t.deals, t.attribution, t.assists):
        assert rows(engine, table) == [], table.name
    with engine.connect() as conn:
        persons = conn.execute(select(t.persons.c.profile_id, t.persons.c.identifiers)).all()
    assert len(persons) == 1
    assert "100-20-30" not in persons[0][1]
    assert "79161002030" not in persons[0][1]


# ----------------------------------------------------------------------------- erasure holds against old events

STRANGER = ("ga_client_id", "GA1.2.900.1700000000")


def normalized(pair: tuple[str, str]) -> Identifier:
    out = Normalizer().normalize(*pair)
    assert isinstance(out, Identifier)
    return out


def resent(items: Sequence[Touch], suffix: str) -> list[Touch]:
    """The same events re-sent by their producer under new event ids (their times unchanged)."""
    return [replace(item, event_id=item.event_id + suffix) for item in items]


def erase_ivan(pipeline: Pipeline) -> tuple[list[Message], list[Message]]:
    """Ivan's history and a stranger's visit, then Ivan erased at minute 700; returns Ivan's messages."""
    raw, profiles = pipeline.resolve(ivan())
    for item in raw:
        pipeline.write([item])
    pipeline.write(profiles)
    pipeline.feed([touch("m1", 30, STRANGER, utm=Utm("vk", "cpc")),
                   touch("x1", 700, PHONE, type="erase_request", source="dpo")])  # fmt: skip
    assert pipeline.store.lookup_raw(*PHONE) is None
    return raw, profiles


def only_the_stranger_left(engine: Engine) -> None:
    assert [r[0] for r in rows(engine, t.touches)] == ["m1"]
    for table in (t.deal_stages, t.deals, t.attribution, t.assists):
        assert rows(engine, table) == [], table.name
    with engine.connect() as conn:
        persons = conn.execute(select(t.persons.c.profile_id, t.persons.c.identifiers)).all()
        holders = set(conn.scalars(select(t.person_identifiers.c.profile_id)))
    assert [json.loads(i) for _, i in persons] == [{"ga_client_id": [normalized(STRANGER).value]}]
    assert holders == {persons[0][0]}


def test_old_events_of_an_erased_person_never_come_back(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    raw, profiles = erase_ivan(pipeline)
    only_the_stranger_left(engine)
    expected = dump(engine)
    stats, dead = pipeline.write([*raw, *profiles])  # Kafka redelivers the touch topics and the old profile updates
    assert (stats.touches, stats.stages, stats.persons, dead) == (0, 0, 0, [])
    assert stats.refused == len(raw)
    pipeline.feed(ivan())  # the producers send everything again: the same event ids...
    pipeline.feed(resent(ivan(), "-again"))  # ...and new ids with the old times
    assert pipeline.store.lookup_raw(*PHONE) is None  # the resolver refused every one of them
    assert pipeline.store.lookup_raw(*GA_LAPTOP) is None
    assert dump(engine) == expected
    pipeline.write(list(pipeline.log))  # everything the warehouse ever read, again, in one batch
    assert dump(engine) == expected
    only_the_stranger_left(engine)


def test_the_warehouse_remembers_erasures_by_keyed_hash_only(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    erase_ivan(pipeline)
    with engine.connect() as conn:
        remembered = conn.execute(select(t.erasures)).all()
    ivans = [normalized(i) for i in (GA_PHONE, GA_LAPTOP, PHONE, CRM)]
    assert {r.digest for r in remembered if r.subject == "identifier"} == {
        erasure_hash(DEFAULT_ERASURE_KEY, i) for i in ivans
    }
    assert len([r for r in remembered if r.subject == "profile"]) == 1
    stored = repr(remembered)
    for raw_value, value in zip((GA_PHONE, GA_LAPTOP, PHONE, CRM), ivans, strict=True):
        assert raw_value[1] not in stored
        assert value.value not in stored
    # remembered as of the erasure request: Ivan's newest event (the won deal at minute 600) is older
    assert {(_utc(r.through_at), r.through_event_id) for r in remembered} == {(T0 + timedelta(minutes=700), "x1")}


def test_an_event_newer_than_the_erasure_starts_a_new_person(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    erase_ivan(pipeline)
    # at the erasure's time: the event id decides, as in the resolver ("w1" < "x1" < "y1")
    pipeline.feed([touch("w1", 700, PHONE, type="call", source="calltouch", utm=Utm("yandex", "cpc"))])
    assert pipeline.store.lookup_raw(*PHONE) is None
    pipeline.feed([touch("y1", 700, PHONE, type="call", source="calltouch", utm=Utm("yandex", "cpc")),
                   touch("y2", 800, PHONE, CRM, type="crm_stage", source="amocrm",
                         crm=CrmInfo("deal-2", "new", None, "sales"))])  # fmt: skip
    again = pipeline.store.lookup_raw(*PHONE)
    assert again is not None
    assert pipeline.store.lookup_raw(*CRM) == again
    pipeline.feed(resent(ivan(), "-again"))  # the old ones stay out after the new start
    pipeline.write(pipeline.resolve(ivan())[0])
    assert {k: v for k, v in owners(engine).items() if k != "m1"} == {"y1": again}
    with engine.connect() as conn:
        persons = set(conn.scalars(select(t.persons.c.profile_id)))
        deals = conn.execute(select(t.deals.c.deal_id, t.deals.c.profile_id)).all()
        stages = conn.execute(select(t.deal_stages.c.event_id, t.deal_stages.c.profile_id)).all()
    assert again in persons
    assert len(persons) == 2  # the stranger and the new start
    assert [tuple(d) for d in deals] == [("deal-2", again)]
    assert [tuple(s) for s in stages] == [("y2", again)]


def test_an_erasure_spares_what_other_persons_hold(pipeline: Pipeline) -> None:
    """A split and the erasure of one side in one batch: the other side's rows re-home and stay."""
    engine = pipeline.writer.engine
    pipeline.feed(ivan()[:5])
    raw, profiles = pipeline.resolve([touch("u1", 200, GA_PHONE, PHONE, type="identity_unlink", source="operator")])
    requested, erased = pipeline.resolve([touch("x1", 700, PHONE, type="erase_request", source="dpo")])
    pipeline.write([*raw, *requested, *profiles, *erased])
    device = pipeline.store.lookup_raw(*GA_PHONE)
    assert device is not None
    assert pipeline.store.lookup_raw(*PHONE) is None
    assert owners(engine) == {"v1": device}
    assert rows(engine, t.deal_stages) == rows(engine, t.deals) == []
    with engine.connect() as conn:
        assert list(conn.scalars(select(t.persons.c.profile_id))) == [device]
    # re-sent: the erased identifiers are dropped, what is left still counts (the resolver does the same)
    pipeline.feed(resent([i for i in ivan() if i.event_id in {"v1", "c1", "f1"}], "-again"))
    assert pipeline.store.lookup_raw(*GA_LAPTOP) is None  # the form: the laptop went with the phone's person
    assert owners(engine) == {"v1": device, "v1-again": device, "c1-again": device}


def test_a_restarted_sink_still_honours_the_erasure(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    raw, profiles = erase_ivan(pipeline)
    expected = dump(engine)
    restarted = connect(engine.url.render_as_string(hide_password=False))
    try:
        pipeline.writer = WarehouseWriter(restarted, pipeline.policy, Normalizer(), DEFAULT_ERASURE_KEY)
        for item in [*raw, *profiles]:  # one message per batch this time
            stats, _ = pipeline.write([item])
            assert (stats.touches, stats.stages) == (0, 0)
        pipeline.feed(resent(ivan(), "-after-restart"))
        assert dump(restarted) == expected
    finally:
        restarted.dispose()


def test_an_erasure_request_holds_before_the_erased_update_arrives(pipeline: Pipeline) -> None:
    """The warehouse reads the request on the touch topic too: it holds whichever stream comes first."""
    engine = pipeline.writer.engine
    raw, profiles = pipeline.resolve(ivan())
    requested, erased = pipeline.resolve([touch("x1", 700, PHONE, type="erase_request", source="dpo")])
    pipeline.write(raw)  # the touch topics run ahead of profiles.updates
    pipeline.write(requested)
    assert set(owners(engine)) == {"v1", "v2"}  # the form and the call were recorded under the phone number
    stats, _ = pipeline.write(pipeline.resolve([touch("p1", 500, PHONE, type="call", source="calltouch")])[0])
    assert (stats.touches, stats.refused) == (0, 1)
    pipeline.write([*profiles, *erased])  # the profile updates in one batch: Ivan's last one, then his erasure
    for table in (t.touches, t.deal_stages, t.deals, t.persons, t.person_identifiers, t.attribution, t.assists):
        assert rows(engine, table) == [], table.name
    stats, _ = pipeline.write(raw)
    assert (stats.touches, stats.stages, stats.refused) == (0, 0, len(raw))


def spend(day: str, source: str, medium: str, cost: float, reported: str, **extra: Any) -> Message:
    body = {"type": "ad_spend", "date": day, "source": source, "medium": medium, "cost": cost, "currency": "RUB",
            "reported_at": reported, **extra}  # fmt: skip
    return Message("ad.spend", 0, 0, None, json.dumps(body).encode())


def test_ad_spend_keeps_the_newest_report_of_a_day_and_dead_letters_bad_ones(pipeline: Pipeline) -> None:
    engine = pipeline.writer.engine
    newer = spend("2026-11-02", "Yandex", "CPC", 3100.0, "2026-11-04T06:00:00+03:00", campaign="Brand")
    older = spend("2026-11-02", "yandex", "cpc", 3000.0, "2026-11-03T06:00:00+03:00", campaign="brand")
    bad = spend("2026-11-02", "yandex", "cpc", -5, "2026-11-03T06:00:00Z", currency="rubles")
    _, dead = pipeline.write([newer])
    _, dead_too = pipeline.write([older, bad])  # the older report arrives late: it does not win
    assert rows(engine, t.ad_spend, "reported_at") == [(date(2026, 11, 2), "yandex", "cpc", "brand", "", "RUB", 3100.0)]
    assert dead == []
    assert len(dead_too) == 1
    fields = {e["field"] for e in dead_too[0].error["errors"]}
    assert fields == {"cost", "currency"}
    assert dead_too[0].value_utf8 is not None
    assert "rubles" in dead_too[0].value_utf8


def test_the_schema_is_at_the_newest_migration_and_matches_the_tables(warehouse: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert revision(warehouse) == head_revision()
    assert migrate(warehouse) == head_revision()  # migrating again is a no-op
    with warehouse.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.METADATA)
    assert diff == []


# ----------------------------------------------------------------------------- the channel report

DAY = datetime(2026, 11, 2, tzinfo=UTC)


def at(hour: float) -> float:
    """Minutes after T0 (2026-11-01 09:00 UTC) of an hour of 2026-11-02 UTC."""
    return (DAY + timedelta(hours=hour) - T0).total_seconds() / 60


def report_world() -> list[Touch]:
    a, b, c = ("ga_client_id", "GA1.2.1.1"), ("ga_client_id", "GA1.2.2.2"), ("ga_client_id", "GA1.2.3.3")
    phone_a, phone_b = ("phone", "+7 916 000-00-01"), ("phone", "+7 916 000-00-02")
    return [
        touch("a1", at(10), a, utm=Utm("yandex", "cpc", "brand")),
        touch("a2", at(11), a, utm=Utm("google", "organic")),
        touch("a3", at(12), a, phone_a, type="form_submit"),
        touch("ad1", at(13), phone_a, type="crm_stage", source="amocrm", crm=CrmInfo("dA", "new", amount=100_000.0)),
        touch("ad2", at(15), phone_a, type="crm_stage", source="amocrm", crm=CrmInfo("dA", "won", "new")),
        touch("b1", at(10.5), b, utm=Utm("yandex", "cpc", "brand")),
        touch("b2", at(14), b, phone_b, type="call", source="calltouch", utm=Utm("vk", "cpc")),
        touch("bd1", at(14.5), phone_b, type="crm_stage", source="amocrm", crm=CrmInfo("dB", "new", amount=50_000.0)),
        touch("c1", at(11.5), c, utm=Utm("google", "organic")),
    ]  # fmt: skip


@pytest.fixture
def reported(pipeline: Pipeline) -> Engine:
    pipeline.feed(report_world())
    pipeline.write(
        [
            spend("2026-11-02", "yandex", "cpc", 3000.0, "2026-11-03T00:00:00Z", campaign="brand"),
            spend("2026-11-02", "vk", "cpc", 1000.0, "2026-11-03T00:00:00Z"),
            spend("2026-11-02", "vk", "cpc", 10.0, "2026-11-03T00:00:00Z", currency="USD"),
            spend("2026-11-05", "vk", "cpc", 777.0, "2026-11-06T00:00:00Z"),  # outside the period
        ]
    )
    return pipeline.writer.engine


def by_source(report: Any) -> dict[str, Any]:
    return {r.source: r for r in report.rows}


def test_channel_report_first_touch_hand_computed(reported: Engine) -> None:
    report = channel_report(reported, model="first", start=date(2026, 11, 2), end=date(2026, 11, 2),
                            rates={"USD": 90.0})  # fmt: skip
    rows_ = by_source(report)
    yandex, vk, google = rows_["yandex"], rows_["vk"], rows_["google"]
    assert (yandex.campaign, yandex.visits, yandex.persons) == ("brand", 2, 2)
    assert (yandex.leads, yandex.deals, yandex.won_deals, yandex.revenue) == (2, 2, 1, 100_000)
    assert yandex.cost == 3000
    assert yandex.cpl == 1500
    assert yandex.cost_per_deal == 1500
    assert yandex.cost_per_won == 3000
    assert yandex.romi == pytest.approx((100_000 - 3000) / 3000 * 100)
    assert (vk.leads, vk.cost, vk.romi, vk.persons, vk.visits) == (0, 1000 + 10 * 90, -100, 1, 0)
    assert (google.visits, google.persons, google.leads, google.cost, google.assisted) == (2, 2, 0, 0, 1)
    assert yandex.assisted == 1  # dA's path: yandex, google, then the direct form
    assert rows_["(direct)"].assisted == 0
    total = report.total
    assert (total.visits, total.persons, total.leads, total.deals, total.won_deals) == (4, 3, 2, 2, 1)
    assert (total.revenue, total.cost) == (100_000, 4900)
    assert [r.source for r in report.rows][:2] == ["yandex", "vk"]  # by revenue, then cost


def test_channel_report_other_models_hand_computed(reported: Engine) -> None:
    rates = {"USD": 90.0}
    lnd = by_source(channel_report(reported, model="last_non_direct", rates=rates))
    assert (lnd["google"].leads, lnd["google"].won_deals, lnd["google"].revenue) == (1, 1, 100_000)
    # no period: the 5 November spend counts too
    assert (lnd["vk"].leads, lnd["vk"].deals, lnd["vk"].won_deals, lnd["vk"].cpl) == (1, 1, 0, 1000 + 900 + 777)
    assert lnd["yandex"].leads == 0
    assert lnd["yandex"].romi == -100
    linear = by_source(channel_report(reported, model="linear", rates=rates))
    assert linear["yandex"].leads == pytest.approx(1 / 3 + 1 / 2)
    assert linear["vk"].leads == pytest.approx(1 / 2)
    assert linear["(direct)"].revenue == pytest.approx(100_000 / 3)
    assert sum(r.leads for r in linear.values()) == pytest.approx(2)


def test_channel_report_periods_are_days_in_the_report_time_zone(reported: Engine) -> None:
    # 2026-11-02 in Vladivostok (UTC+10) ends at 14:00 UTC: A's lead (12:00) is in, B's call (14:00) is not
    report = channel_report(reported, model="first", start=date(2026, 11, 2), end=date(2026, 11, 2),
                            tz="Asia/Vladivostok", rates={"USD": 90.0})  # fmt: skip
    assert report.total.leads == 1
    assert channel_report(reported, model="first", start=date(2026, 11, 3), end=date(2026, 11, 4)).total.leads == 0


def test_channel_report_refuses_what_it_cannot_compute(reported: Engine) -> None:
    from identity import ConfigurationError, InvalidInput

    with pytest.raises(ConfigurationError, match="ad spend in USD but no rate to RUB"):
        channel_report(reported)
    with pytest.raises(InvalidInput, match="unknown attribution model 'u_shaped'"):
        channel_report(reported, model="u_shaped")
    with pytest.raises(InvalidInput, match="starts"):
        channel_report(reported, start=date(2026, 11, 3), end=date(2026, 11, 2))


def test_channel_report_formats_and_plot(reported: Engine, tmp_path: Path) -> None:
    report = channel_report(
        reported, model="first", start=date(2026, 11, 1), end=date(2026, 11, 2), rates={"USD": 90.0}
    )
    as_json = json.loads(render(report, "json"))
    assert as_json["model"] == "first"
    assert as_json["total"]["cost"] == 4900
    csv_lines = render(report, "csv").splitlines()
    assert csv_lines[0].startswith("source,medium,campaign,visits,persons,leads,deals,won_deals,revenue,cost,cpl")
    assert csv_lines[1].startswith("yandex,cpc,brand,2,2,2.0,2.0,1.0,100000.0,3000.0,1500.0")
    table = render(report, "table")
    assert "ROMI %" in table
    assert "(total)" in table
    assert "3,233.33" in table
    png = plot(report, tmp_path / "channels.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


def test_the_warehouse_is_readable_with_plain_sql(reported: Engine) -> None:
    """What a BI tool does: join touches to persons and sum attribution, no idstream code involved."""
    with reported.connect() as conn:
        revenue = conn.execute(
            text(
                "SELECT a.source, SUM(a.credit * d.amount) FROM attribution a JOIN deals d "
                "ON a.conversion = 'deal' AND d.deal_id = a.conversion_id "
                "WHERE a.model = 'first' AND d.status = 'won' GROUP BY a.source"
            )
        ).all()
        joined = conn.execute(
            text("SELECT COUNT(*) FROM touches tt JOIN persons p ON p.profile_id = tt.profile_id")
        ).scalar()
    assert [tuple(r) for r in revenue] == [("yandex", 100_000.0)]
    assert joined == 6  # every visit, call and form of the three persons


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ----------------------------------------------------------------------------- over HTTP and on the command line


def test_the_report_is_served_over_http_with_a_token(reported: Engine, redis_url: str) -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from schemas.api import ChannelReport, ErrorResponse
    from sinks.warehouse.report import ReportSettings
    from streams.lookup_api import ApiConfig, create_lookup_app

    token = "report-token-for-tests-0123456789"  # noqa: S105 - a test token
    url = reported.url.render_as_string(hide_password=False)
    config = ApiConfig(redis_url, ResolutionPolicy(), Normalizer(), "idstream", (token.encode(),), url,
                       ReportSettings(rates={"USD": 90.0}))  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}

    async def main() -> None:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            denied = await client.get("/v1/reports/channels")
            assert denied.status == 401
            answer = await client.get("/v1/reports/channels?model=first&from=2026-11-02&to=2026-11-02", headers=auth)
            assert answer.status == 200
            body = ChannelReport.model_validate(await answer.json())
            assert body.rows[0].source == "yandex"
            assert (body.rows[0].leads, body.total.cost) == (2, 4900)
            as_csv = await client.get("/v1/reports/channels?format=csv&model=first", headers=auth)
            assert as_csv.content_type == "text/csv"
            assert (await as_csv.text()).startswith("source,medium,campaign,")
            for query, code in (("?model=u_shaped", "invalid_input"), ("?from=yesterday", "invalid_input"),
                                ("?format=xml", "invalid_format")):  # fmt: skip
                bad = await client.get("/v1/reports/channels" + query, headers=auth)
                assert bad.status == 400, query
                assert ErrorResponse.model_validate(await bad.json()).code == code

    asyncio.run(main())


def test_idstream_report_channels_prints_the_report_and_draws_it(
    reported: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("IDSTREAM_WAREHOUSE_URL", reported.url.render_as_string(hide_password=False))
    monkeypatch.setenv("IDSTREAM_CURRENCY_RATES", '{"USD": 90}')
    png = tmp_path / "out" / "channels.png"
    argv = ["report", "channels", "--model", "first", "--from", "2026-11-02", "--to", "2026-11-02"]
    assert main([*argv, "--format", "json", "--plot", str(png)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["total"]["leads"] == 2
    assert printed["rows"][0]["romi"] == pytest.approx((100_000 - 3000) / 3000 * 100)
    assert png.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.delenv("IDSTREAM_CURRENCY_RATES")
    assert main([*argv]) == 2  # a spend currency without a rate: a clear error, not a wrong number
    assert "no rate to RUB" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the deal funnel


def _deal(
    conn: Any, deal_id: str, profile: str, path: list[str], *, status: str, day: int, credits: dict[str, float]
) -> None:
    from sinks.warehouse import tables as t

    start = datetime(2026, 11, day, 10, tzinfo=UTC)
    conn.execute(t.deals.insert().values(deal_id=deal_id, profile_id=profile, pipeline="sales", stage=path[-1],
                                         status=status, amount=1000.0, created_at=start, updated_at=start))  # fmt: skip
    for n, stage in enumerate(path):
        conn.execute(t.deal_stages.insert().values(event_id=f"{deal_id}-{n}", deal_id=deal_id, stage=stage,
                                                   occurred_at=start + timedelta(days=n), system="amocrm",
                                                   profile_id=profile))  # fmt: skip
    for channel, credit in credits.items():
        source, medium = channel.split("/")
        conn.execute(t.attribution.insert().values(conversion="deal", conversion_id=deal_id, model="linear",
                                                   source=source, medium=medium, campaign="(not set)", credit=credit,
                                                   profile_id=profile, converted_at=start))  # fmt: skip


def test_the_funnel_orders_stages_from_the_deals_and_splits_them_by_credit(warehouse: Engine) -> None:
    from identity import InvalidInput
    from sinks.warehouse import tables as t
    from sinks.warehouse.funnel import deal_funnel

    with warehouse.begin() as conn:
        # the pipeline new → qualified → meeting → won is never sent: it is read off the deals
        _deal(
            conn, "d1", "p1", ["new", "qualified", "meeting", "won"], status="won", day=2, credits={"yandex/cpc": 1.0}
        )
        _deal(
            conn, "d2", "p2", ["new", "meeting"], status="open", day=3, credits={"yandex/cpc": 0.5, "vk/social": 0.5}
        )  # skips one
        _deal(conn, "d3", "p3", ["new", "qualified", "lost"], status="lost", day=10, credits={"vk/social": 1.0})
        _deal(conn, "d4", "p4", ["new"], status="open", day=11, credits={})
        _deal(
            conn, "d5", "p5", ["new", "won"], status="won", day=30, credits={"yandex/cpc": 1.0}
        )  # outside the period asked
        visit = datetime(2026, 11, 1, tzinfo=UTC)
        conn.execute(t.touches.insert().values(event_id="v1", type="site_visit", occurred_at=visit,
                                               system="site", source="yandex", medium="cpc", campaign="x",
                                               project="Речной парк", profile_id="p1"))  # fmt: skip
    funnel = deal_funnel(warehouse, model="linear", start=date(2026, 11, 1), end=date(2026, 11, 20), tz="UTC")
    assert funnel.stages == ["new", "qualified", "meeting", "won"]  # 'lost' ends deals: not a step
    total = funnel.total.to_dict()
    # d2 jumped from new to meeting: it passed 'qualified' for the funnel; a won deal reached every step
    assert total["reached"] == [4, 3, 2, 1]
    assert total["conversion"] == [None, 75.0, 66.7, 50.0]
    assert total["overall"] == 25.0
    assert total["lost"] == 1
    groups = {g.name: g.to_dict() for g in funnel.groups}
    assert groups["yandex / cpc"]["reached"] == [1.5, 1.5, 1.5, 1.0]  # half of d2
    assert groups["vk / social"]["reached"] == [1.5, 1.5, 0.5, 0.0]
    assert groups["(no attribution)"]["reached"] == [1, 0, 0, 0]
    weeks = {s.name: s.reached for s in funnel.series}
    assert weeks == {"2026-11-02": [2, 2, 2, 1], "2026-11-09": [2, 1, 0, 0]}  # weeks start on Monday
    by_project = deal_funnel(warehouse, model="linear", by="project", period="month", start=date(2026, 11, 1),
                             end=date(2026, 11, 20))  # fmt: skip
    assert {g.name: g.reached[0] for g in by_project.groups} == {"Речной парк": 1, "(none)": 3}
    assert [s.name for s in by_project.series] == ["2026-11-01"]
    with pytest.raises(InvalidInput, match="by must be"):
        deal_funnel(warehouse, by="region")
