"""The identity stores on concrete stories: what a user of the golden profile must see.

Every test here runs against the in-memory reference graph and the Redis store (the ``make_store``
fixture), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from datetime import UTC, timedelta

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity import (
    ConfigurationError,
    CrmInfo,
    Identifier,
    IdentityGraph,
    InvalidInput,
    Match,
    ResolutionPolicy,
    Touch,
    TouchType,
    Utm,
)
from identity.explain import explain
from streams.redis_store import RedisIdentityStore
from tests.conftest import T0, StoreFactory, touch
from tests.test_graph_properties import POLICIES, POOL, TYPES, events, matches, random_events

PHONE = ("phone", "8 (916) 123-45-67")
PHONE_2 = ("phone", "+7 916 123-45-01")
E164 = Identifier("phone", "+79161234567")


def story() -> list[Touch]:
    """Ivan: phone visit, laptop visit, a form, a call, a CRM deal. Maria: one visit and a call."""
    return [
        touch("v1", 0, ("ym_client_id", "1700000000111"), ("ga_client_id", "GA1.2.111.1700000000"),
              utm=Utm("yandex", "cpc", "brand"), attributes={"project": "Северный", "page": "/sever"}),
        touch("v2", 60, ("ga_client_id", "GA1.2.222.1700000100"),
              utm=Utm("google", "organic"), attributes={"project": "Северный", "page": "/sever/plans"}),
        touch("f1", 65, ("ga_client_id", "222.1700000100"), ("phone", "8 (916) 123-45-67"),
              ("email", "Ivan.Petrov@gmail.com"), type="form_submit", attributes={"name": "Иван"}),
        touch("c1", 120, ("phone", "+7 916 123 45 67"), ("ga_client_id", "111.1700000000"),
              type="call", source="calltouch", attributes={"duration_s": 184, "name": "Ваня"}),
        touch("d1", 300, ("crm_contact_id", "amo-501"), ("phone", "79161234567"), ("email", "ivanpetrov@gmail.com"),
              type="crm_stage", source="amocrm", attributes={"name": "Иван Петров"},
              crm=CrmInfo("deal-9", "qualified", "new", "sales", 12_500_000.0)),
        touch("m1", 10, ("ga_client_id", "GA1.2.333.1700000200"), attributes={"project": "Южный"}),
        touch("m2", 30, ("phone", "8 (903) 765-43-21"), ("ga_client_id", "333.1700000200"), type="call",
              source="calltouch"),
    ]  # fmt: skip


def test_every_touch_of_a_person_joins_one_golden_profile(make_store: StoreFactory) -> None:
    graph = make_store()
    results = graph.apply_many(story())
    assert [r.status for r in results] == ["applied"] * 7
    assert len(graph) == 2
    ivan = graph.lookup(E164)
    assert ivan is not None
    assert graph.lookup_raw("ga_client_id", "GA1.2.111.1700000000") == ivan
    assert graph.lookup_raw("email", "ivan.petrov+crm@googlemail.com") == ivan
    assert graph.lookup_raw("crm_contact_id", "amo-501") == ivan
    assert graph.lookup_raw("phone", "8 903 765 43 21") not in (None, ivan)

    profile = graph.profile(ivan)
    assert profile is not None
    assert profile["identifiers"] == {
        "crm_contact_id": ["amo-501"],
        "email": ["ivanpetrov@gmail.com"],
        "phone": ["+79161234567"],
        "ym_client_id": ["1700000000111"],
        "ga_client_id": ["111.1700000000", "222.1700000100"],
    }
    assert profile["display_name"] == "Иван Петров"  # the CRM beats the form and the call
    assert profile["interests"]["projects"] == {"Северный": 2}
    assert profile["interests"]["pages"] == {"/sever": 1, "/sever/plans": 1}
    assert profile["touch_counts"] == {"call": 1, "crm_stage": 1, "form_submit": 1, "site_visit": 2}
    assert profile["first_touch"]["event_id"] == "v1"
    assert profile["first_touch"]["utm"] == {"source": "yandex", "medium": "cpc", "campaign": "brand"}
    assert profile["last_touch"]["event_id"] == "d1"
    assert [t["event_id"] for t in profile["recent_touches"]] == ["d1", "c1", "f1", "v2", "v1"]
    assert profile["deals"]["deal-9"]["stage"] == "qualified"
    assert profile["deals"]["deal-9"]["amount"] == 12_500_000.0
    assert profile["attributes"]["duration_s"]["value"] == 184


def test_merging_two_known_persons_retires_the_younger_id(make_store: StoreFactory) -> None:
    graph = make_store()
    older = graph.apply(touch("a", 0, ("ga_client_id", "1.1"))).profile_id
    younger = graph.apply(touch("b", 5, ("phone", "8 916 123 45 67"))).profile_id
    result = graph.apply(touch("c", 10, ("ga_client_id", "1.1"), PHONE, type="form_submit"))
    assert older
    assert younger
    assert older != younger
    assert result.profile_id == older
    assert [(c.kind, c.profile_id, c.merged_from) for c in result.changes] == [("merged", older, (younger,))]
    assert graph.resolve(younger or "") == older
    assert graph.profile(younger) == graph.profile(older)
    assert len(graph) == 1


def test_crm_contact_id_anchors_the_survivor(make_store: StoreFactory) -> None:
    graph = make_store()
    visitor = graph.apply(touch("a", 0, ("ga_client_id", "1.1"))).profile_id
    contact = graph.apply(touch("b", 5, ("crm_contact_id", "42"), PHONE, type="crm_stage",
                                crm=CrmInfo("d", "new"))).profile_id  # fmt: skip
    result = graph.apply(touch("c", 10, ("ga_client_id", "1.1"), PHONE, type="call"))
    assert result.profile_id == contact != visitor
    assert graph.resolve(visitor or "") == contact


def test_without_anchor_the_older_profile_survives(make_store: StoreFactory) -> None:
    graph = make_store(ResolutionPolicy(anchor_kinds=frozenset()))
    visitor = graph.apply(touch("a", 0, ("ga_client_id", "1.1"))).profile_id
    graph.apply(touch("b", 5, ("crm_contact_id", "42"), PHONE, type="crm_stage", crm=CrmInfo("d", "new")))
    assert graph.apply(touch("c", 10, ("ga_client_id", "1.1"), PHONE)).profile_id == visitor


#: Shared-identifier detection off: the limits alone decide (the stories below are about limits).
NO_SHARING = ResolutionPolicy(shared_persons={}, shared_clusters={})


def test_a_second_crm_contact_is_a_conflict_not_a_merge(make_store: StoreFactory) -> None:
    graph = make_store(NO_SHARING)
    first = graph.apply(touch("a", 0, ("crm_contact_id", "1"), PHONE, type="crm_stage", crm=CrmInfo("d1", "new")))
    second = graph.apply(touch("b", 5, ("crm_contact_id", "2"), ("email", "xenia@mail.ru"), type="crm_stage",
                               crm=CrmInfo("d2", "new")))  # fmt: skip
    bridge = graph.apply(touch("c", 10, PHONE, ("email", "xenia@mail.ru"), type="form_submit"))
    assert len(graph) == 2
    # the e-mail is the stronger identifier, so the phone's person is the one refused
    assert [(c.kind, c.limit, c.identifier) for c in bridge.conflicts] == [("crm_contact_id", 1, E164)]
    assert bridge.profile_id == second.profile_id
    conflict = bridge.conflicts[0]
    assert {conflict.profile_id, conflict.other_profile_id} == {first.profile_id, second.profile_id}
    assert conflict.to_dict()["reason"] == "limit_exceeded"


def test_a_new_identifier_over_the_limit_becomes_its_own_person(make_store: StoreFactory) -> None:
    graph = make_store(ResolutionPolicy(limits={"phone": 2}, shared_persons={}, shared_clusters={}))
    owner = graph.apply(touch("a", 0, ("email", "ivan@mail.ru"), ("phone", "89161234501"))).profile_id
    graph.apply(touch("b", 1, ("email", "ivan@mail.ru"), ("phone", "89162345602")))
    third = graph.apply(touch("c", 2, ("email", "ivan@mail.ru"), ("phone", "89163456703")))
    assert third.profile_id == owner
    assert len(third.conflicts) == 1
    assert third.conflicts[0].identifier == Identifier("phone", "+79163456703")
    loner = graph.lookup(Identifier("phone", "+79163456703"))
    assert loner is not None
    assert loner != owner
    assert [c.kind for c in third.changes if c.profile_id == loner] == ["created"]


def test_identity_link_beats_the_limits(make_store: StoreFactory) -> None:
    graph = make_store()
    graph.apply(touch("a", 0, ("crm_contact_id", "1"), PHONE, type="crm_stage", crm=CrmInfo("d1", "new")))
    graph.apply(touch("b", 1, ("crm_contact_id", "2"), type="crm_stage", crm=CrmInfo("d2", "new")))
    link = graph.apply(touch("c", 2, ("crm_contact_id", "1"), ("crm_contact_id", "2"), type="identity_link",
                             source="amocrm"))  # fmt: skip
    assert link.conflicts == ()
    assert len(graph) == 1
    profile = graph.profile(graph.lookup(E164) or "")
    assert profile is not None
    assert profile["identifiers"]["crm_contact_id"] == ["1", "2"]
    assert "identity_link" not in profile["touch_counts"]  # a correction is not a contact


def test_junk_values_link_nothing(make_store: StoreFactory) -> None:
    graph = make_store()
    a = graph.apply(touch("a", 0, ("email", "test@test.ru"), ("phone", "89161234501"), type="form_submit"))
    b = graph.apply(touch("b", 1, ("email", "test@test.ru"), ("phone", "89162345602"), type="form_submit"))
    c = graph.apply(touch("c", 2, ("phone", "+7 (999) 999-99-99"), ("phone", "89163456703"), type="form_submit"))
    assert len({a.profile_id, b.profile_id, c.profile_id}) == 3
    assert [r.reason for r in a.rejected] == ["placeholder_mailbox"]
    assert [r.reason for r in c.rejected] == ["repeated_digits"]
    assert graph.lookup_raw("email", "test@test.ru") is None


def test_an_event_with_no_usable_identifier_is_unresolved(make_store: StoreFactory) -> None:
    graph = make_store()
    result = graph.apply(touch("a", 0, ("phone", "12"), ("email", "no@mail.ru"), type="form_submit"))
    assert result.status == "unresolved"
    assert result.profile_id is None
    assert {r.reason for r in result.rejected} == {"invalid_number", "blocklisted"}
    assert len(graph) == 0
    assert graph.apply(touch("a", 0, ("phone", "12"))).status == "duplicate"


def test_redelivery_changes_nothing(make_store: StoreFactory) -> None:
    graph = make_store()
    events = story()
    graph.apply_many(events)
    before = list(graph.profiles())
    again = graph.apply_many(events)
    assert {r.status for r in again} == {"duplicate"}
    assert all(r.changes == () for r in again)
    assert [r.profile_id for r in again] == [graph.lookup_raw(*e.identifiers[0]) for e in events]
    assert list(graph.profiles()) == before


def test_a_late_event_gives_the_same_persons_as_in_order(make_store: StoreFactory) -> None:
    events = story()
    in_order = make_store()
    in_order.apply_many(events)
    late = make_store()
    late.apply_many(events[1:])
    result = late.apply(events[0])  # the first visit arrives last
    assert result.status == "reordered"
    assert late.reorders == 1
    assert late.persons() == in_order.persons()
    assert list(late.profiles()) == list(in_order.profiles())


def test_a_late_older_event_retires_the_younger_id_with_a_redirect(make_store: StoreFactory) -> None:
    graph = make_store()
    young = graph.apply(touch("b", 10, ("ga_client_id", "1.1"))).profile_id
    result = graph.apply(touch("a", 0, ("ga_client_id", "1.1"), ("email", "ivan@mail.ru")))
    assert result.status == "reordered"
    assert result.profile_id != young
    assert [(c.kind, c.merged_from) for c in result.changes] == [("merged", (young,))]
    assert graph.resolve(young or "") == result.profile_id


def test_a_late_event_can_refuse_a_merge_that_happened_and_reports_a_split(make_store: StoreFactory) -> None:
    """CRM 1 <- phone (t=0); later phone <- email <- CRM 2 in order would merge; a late t=1 event changes who wins."""
    graph = make_store(NO_SHARING)
    graph.apply(touch("a", 0, ("crm_contact_id", "1"), ("email", "anna@mail.ru"), type="crm_stage",
                      crm=CrmInfo("d1", "new")))  # fmt: skip
    graph.apply(touch("c", 10, ("phone", "89161234501"), ("email", "boris@mail.ru")))
    graph.apply(touch("d", 20, ("crm_contact_id", "2"), ("email", "boris@mail.ru"), type="crm_stage",
                      crm=CrmInfo("d2", "new")))  # fmt: skip
    crm2 = graph.lookup(Identifier("crm_contact_id", "2"))
    assert graph.lookup(Identifier("phone", "+79161234501")) == crm2
    # a late event at t=5 says the phone belonged to CRM 1's person before CRM 2 ever appeared
    late = graph.apply(touch("b", 5, ("phone", "89161234501"), ("email", "anna@mail.ru")))
    assert late.status == "reordered"
    crm1 = graph.lookup(Identifier("crm_contact_id", "1"))
    assert crm1 is not None
    assert graph.lookup(Identifier("phone", "+79161234501")) == crm1
    assert graph.lookup(Identifier("email", "boris@mail.ru")) == crm1
    assert graph.lookup(Identifier("crm_contact_id", "2")) != crm1
    kinds = {c.profile_id: c.kind for c in late.changes}
    assert kinds[crm1] in ("split", "merged")
    assert "split" in kinds.values()
    reference = make_store(NO_SHARING)
    reference.apply_many(sorted([touch("a", 0, ("crm_contact_id", "1"), ("email", "anna@mail.ru"), type="crm_stage",
                                       crm=CrmInfo("d1", "new")),
                                 touch("c", 10, ("phone", "89161234501"), ("email", "boris@mail.ru")),
                                 touch("d", 20, ("crm_contact_id", "2"), ("email", "boris@mail.ru"), type="crm_stage",
                                       crm=CrmInfo("d2", "new")),
                                 touch("b", 5, ("phone", "89161234501"), ("email", "anna@mail.ru"))],
                                key=lambda t: t.key))  # fmt: skip
    assert graph.persons() == reference.persons()


def test_attribute_survivorship_trust_then_recency(make_store: StoreFactory) -> None:
    graph = make_store()
    graph.apply(touch("a", 0, PHONE, type="form_submit", attributes={"name": "Иван", "city": "Москва"}))
    graph.apply(touch("b", 5, PHONE, type="call", attributes={"name": "Ваня"}))
    graph.apply(touch("c", 9, PHONE, type="form_submit", attributes={"city": "Химки", "name": None}))
    profile = graph.profile(graph.lookup(E164) or "")
    assert profile is not None
    assert profile["display_name"] == "Иван"  # a form beats a later call; null says nothing
    assert profile["attributes"]["city"]["value"] == "Химки"  # same trust: the newer wins
    assert profile["attributes"]["city"]["event_id"] == "c"

    by_source = make_store(ResolutionPolicy(source_trust={"calltouch": 99}))
    by_source.apply(touch("a", 0, PHONE, type="form_submit", attributes={"name": "Иван"}))
    by_source.apply(touch("b", 5, PHONE, type="call", source="calltouch", attributes={"name": "Ваня"}))
    assert (by_source.profile(by_source.lookup(E164) or "") or {})["display_name"] == "Ваня"


def test_recent_touches_are_bounded_and_newest_first(make_store: StoreFactory) -> None:
    graph = make_store(ResolutionPolicy(recent_touches=3))
    for i in (5, 1, 9, 3, 7):
        graph.apply(touch(f"e{i}", i, PHONE))
    profile = graph.profile(graph.lookup(E164) or "")
    assert profile is not None
    assert [t["event_id"] for t in profile["recent_touches"]] == ["e9", "e7", "e5"]
    assert profile["touch_counts"] == {"site_visit": 5}
    assert profile["first_touch"]["event_id"] == "e1"


def test_deal_keeps_its_latest_stage_whatever_the_arrival_order(make_store: StoreFactory) -> None:
    graph = make_store()

    def stage(eid: str, minute: int, name: str) -> Touch:
        return touch(
            eid, minute, ("crm_contact_id", "7"), type="crm_stage", source="amocrm", crm=CrmInfo("deal-1", name)
        )

    graph.apply(stage("s3", 30, "won"))
    graph.apply(stage("s1", 10, "new"))
    graph.apply(stage("s2", 20, "meeting"))
    profile = graph.profile(graph.lookup(Identifier("crm_contact_id", "7")) or "")
    assert profile is not None
    assert profile["deals"]["deal-1"]["stage"] == "won"


def test_a_switchboard_two_crm_contacts_share_is_contested_not_claimed(make_store: StoreFactory) -> None:
    """Two CRM contacts call from one office phone: the phone names both persons, each contact only its own.

    (With shared detection off: the limit on CRM ids alone keeps them apart and the phone stays with the
    first; ``test_a_switchboard_is_shared_...`` below is the same story with detection on.)
    """
    graph = make_store(NO_SHARING)
    office = ("phone", "8 (495) 123-45-67")
    graph.apply(touch("a", 0, ("crm_contact_id", "anna"), office, ("email", "anna@romashka.ru"), type="crm_stage",
                      crm=CrmInfo("d-anna", "new")))  # fmt: skip
    graph.apply(touch("b", 5, ("crm_contact_id", "boris"), office, type="crm_stage", crm=CrmInfo("d-boris", "new")))
    graph.apply(touch("c", 9, office, type="call", source="calltouch"))
    anna = graph.lookup(Identifier("crm_contact_id", "anna"))
    boris = graph.lookup(Identifier("crm_contact_id", "boris"))
    assert anna is not None
    assert boris is not None
    assert anna != boris
    switchboard = graph.match(Identifier("phone", "+74951234567"))
    assert switchboard is not None
    assert switchboard.ambiguous
    assert switchboard.profile_id == anna  # who holds it: the first to show it
    assert set(switchboard.candidates) == {anna, boris}
    assert graph.match(Identifier("crm_contact_id", "boris")) == Match(boris, (boris,))
    assert graph.match(Identifier("email", "anna@romashka.ru")) == Match(anna, (anna,))
    assert graph.match(Identifier("phone", "+74950000000")) is None


def test_a_personal_phone_seen_only_with_its_person_is_not_contested(make_store: StoreFactory) -> None:
    graph = make_store()
    graph.apply_many(story())
    ivan = graph.match(E164)
    assert ivan is not None
    assert not ivan.ambiguous
    assert ivan.candidates == (ivan.profile_id,)


def test_lead_score_sums_points_per_action_and_deals_say_if_open(make_store: StoreFactory) -> None:
    policy = ResolutionPolicy(
        lead_points={"site_visit": 1, "site_visit:project": 4, "call": 20, "form_submit:page=/prices": 50},
        won_stages=frozenset({"contract"}),
    )
    graph = make_store(policy)
    graph.apply_many([
        touch("v1", 0, PHONE, attributes={"project": "Северный"}),  # 1 + 4
        touch("v2", 1, PHONE, attributes={"project": ""}),  # 1: an empty project is no project page
        touch("c1", 2, PHONE, type="call"),  # 20
        touch("f1", 3, PHONE, type="form_submit", attributes={"page": "/prices"}),  # 50
        touch("f2", 4, PHONE, type="form_submit", attributes={"page": "/about"}),  # 0
        touch("d1", 5, PHONE, type="crm_stage", crm=CrmInfo("deal-1", "contract", "meeting")),
        touch("d2", 6, PHONE, type="crm_stage", crm=CrmInfo("deal-2", "meeting", "new")),
    ])  # fmt: skip
    graph.apply(touch("c1", 2, PHONE, type="call"))  # a redelivery scores nothing
    profile = graph.profile(graph.lookup(E164) or "")
    assert profile is not None
    assert profile["lead_score"] == 76
    assert {d: deal["status"] for d, deal in profile["deals"].items()} == {"deal-1": "won", "deal-2": "open"}


def test_lead_score_rules_are_checked_when_configured() -> None:
    with pytest.raises(ConfigurationError, match="visit"):
        ResolutionPolicy(lead_points={"visit": 1})
    with pytest.raises(ConfigurationError, match="both won and lost"):
        ResolutionPolicy(won_stages=frozenset({"done"}), lost_stages=frozenset({"done"}))


# ----------------------------------------------------------------------------- Redis against the reference


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    evs=events(types=[*TYPES, "erase_request"]),
    policy=st.sampled_from(POLICIES),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_redis_store_gives_the_reference_results_batch_by_batch(
    redis_client: redis.Redis, evs: list[Touch], policy: ResolutionPolicy, batch: int, seed: int
) -> None:
    """Every outcome, person, profile and redirect of the Redis store equals the in-memory reference."""
    random.Random(seed).shuffle(evs)
    reference = IdentityGraph(policy)
    expected = reference.apply_many(evs)
    store = RedisIdentityStore(redis_client, policy, prefix=f"prop-{uuid.uuid4().hex[:12]}")
    got = [r for i in range(0, len(evs), batch) for r in store.apply_batch(evs[i : i + batch])]
    assert got == expected
    assert store.persons() == reference.persons()
    assert list(store.profiles()) == list(reference.profiles())
    assert store.redirects == reference.redirects
    assert matches(store) == matches(reference)
    assert store.shared() == reference.shared()
    pool = {i for k, v in POOL if isinstance(i := reference.normalizer.normalize(k, v), Identifier)}
    assert {i for i in pool if store.is_erased(i)} == {i for i in pool if reference.is_erased(i)}
    store.clear()


def test_two_writers_at_once_lose_and_double_nothing(redis_url: str) -> None:
    """Two workers apply interleaved batches of one stream concurrently: the graph is the canonical one."""
    rng = random.Random(42)
    evs = [e for _ in range(40) for e in random_events(rng, 12)]
    evs = [dataclasses.replace(e, event_id=f"{i}-{e.event_id}") for i, e in enumerate(evs)]
    reference = IdentityGraph()
    reference.apply_many(evs)
    prefix = f"race-{uuid.uuid4().hex[:12]}"

    def writer(part: list[Touch]) -> None:
        client = redis.Redis.from_url(redis_url)
        store = RedisIdentityStore(client, prefix=prefix)
        for i in range(0, len(part), 7):
            store.apply_batch(part[i : i + 7])
            store.apply_batch(part[max(0, i - 3) : i + 2])  # redeliveries overlap the other writer's work
        client.close()

    threads = [threading.Thread(target=writer, args=(evs[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    store = RedisIdentityStore(redis.Redis.from_url(redis_url), prefix=prefix)
    assert store.persons() == reference.persons()
    assert list(store.profiles()) == list(reference.profiles())
    store.clear()


def test_a_hot_person_contended_by_four_writers_takes_the_serial_path_and_loses_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch of four writers touches one person (a hot unit): compare-and-set rounds are lost, batches that
    keep losing take the serial lease instead of retrying forever, and the graph is the canonical one."""
    from streams import redis_store

    monkeypatch.setattr(redis_store, "OPTIMISTIC_ATTEMPTS", 1)  # one lost round and a batch goes serial
    evs = [
        touch(f"hot-{w}-{i}", i + w / 10, PHONE, ("email", "hot@mail.ru"), ("ga_client_id", f"GA1.2.{i % 20}.17000"))
        for w in range(4)
        for i in range(60)
    ]
    reference = IdentityGraph()
    reference.apply_many(sorted(evs, key=lambda t: t.key))
    prefix = f"hot-{uuid.uuid4().hex[:12]}"
    stores: list[RedisIdentityStore] = []

    def writer(part: list[Touch]) -> None:
        store = RedisIdentityStore(redis.Redis.from_url(redis_url), prefix=prefix)
        stores.append(store)
        for i in range(0, len(part), 3):
            store.apply_batch(part[i : i + 3])

    threads = [threading.Thread(target=writer, args=(evs[w * 60 : (w + 1) * 60],)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(s.conflicts for s in stores) > 0  # the unit was contended
    assert sum(s.serial_batches for s in stores) > 0  # and the serial path resolved it
    store = RedisIdentityStore(redis.Redis.from_url(redis_url), prefix=prefix)
    assert store.applied_events() == len(evs)
    assert store.persons() == reference.persons()
    assert list(store.profiles()) == list(reference.profiles())
    assert not store.client.exists(f"{{{prefix}}}:lease")  # released
    store.clear()


def test_a_conflict_names_live_profiles_once_per_refused_person(make_store: StoreFactory) -> None:
    """A merge later in the same event may retire the id a refusal saw; the outcome names the survivor."""
    store = make_store(ResolutionPolicy(limits={"email": 1}))
    store.apply(touch("c", 0, ("phone", "89161234501")))
    anna = store.apply(touch("a", 1, ("email", "anna@mail.ru"))).profile_id
    store.apply(touch("b", 2, ("email", "boris@mail.ru")))
    result = store.apply(touch("x", 3, ("email", "anna@mail.ru"), ("email", "boris@mail.ru"), PHONE_2))
    persons = store.persons()
    assert anna is not None
    assert len(result.conflicts) == 1
    for conflict in result.conflicts:
        assert conflict.profile_id in persons
        assert conflict.other_profile_id in persons


def test_touches_before_1970_or_without_an_offset_are_refused() -> None:
    from datetime import datetime

    with pytest.raises(InvalidInput):
        Touch("old", TouchType.CALL, datetime(1969, 12, 31, tzinfo=UTC), "s", (("phone", "89161234567"),))
    with pytest.raises(InvalidInput):
        Touch("naive", TouchType.CALL, datetime(2026, 1, 1), "s", (("phone", "89161234567"),))  # noqa: DTZ001


# ----------------------------------------------------------------------------- shared identifiers, corrections, erasure

OFFICE = ("phone", "8 (495) 777-00-11")
OFFICE_E164 = Identifier("phone", "+74957770011")


def colleagues(*, named: bool = True) -> list[Touch]:
    """Three colleagues call from one switchboard, each from the browser session of their own visit."""
    out = []
    for n, name in enumerate(["anna", "boris", "vera"]):
        ga = ("ga_client_id", f"GA1.2.{n + 1}00.1700000000")
        out += [
            touch(f"call-{name}", n, OFFICE, ga, type="call", source="calltouch"),
            touch(f"form-{name}", 10 + n, ga, ("phone", f"8 916 {n + 1}11 22 3{n}"), ("email", f"{name}@mail.ru"),
                  type="form_submit", attributes={"name": name} if named else {}),
        ]  # fmt: skip
    return out


def test_a_switchboard_shared_by_colleagues_never_glues_them(make_store: StoreFactory) -> None:
    """Even when the switchboard calls arrive before anything else is known about the colleagues."""
    graph = make_store()
    graph.apply_many(colleagues())
    people = [graph.lookup(Identifier("email", f"{name}@mail.ru")) for name in ("anna", "boris", "vera")]
    assert None not in people
    assert len(set(people)) == 3
    assert OFFICE_E164 in graph.shared()
    switchboard = graph.match(OFFICE_E164)
    assert switchboard is not None
    assert switchboard.ambiguous
    assert switchboard.shared
    assert set(switchboard.candidates) == set(people)
    for pid in people:  # nobody's golden profile claims the switchboard
        profile = graph.profile(pid or "")
        assert profile is not None
        assert profile["identifiers"]["phone"] != [OFFICE_E164.value]
        assert OFFICE_E164.value not in profile["identifiers"]["phone"]


def test_a_glued_blob_is_split_back_and_the_split_says_what_moved(make_store: StoreFactory) -> None:
    """A phone needs three people here: two colleagues are glued first, the third shows it is shared.
    (Without names and without the landline's weight, which would keep even the first two apart.)"""
    graph = make_store(ResolutionPolicy(shared_persons={"phone": 2}, shared_clusters={}, shared_devices={}))
    stream = [
        dataclasses.replace(t, occurred_at=T0 + timedelta(minutes=i)) for i, t in enumerate(colleagues(named=False))
    ]
    results = graph.apply_many(stream[:-1])
    glued = graph.lookup(Identifier("email", "anna@mail.ru"))
    assert glued is not None
    assert graph.lookup(Identifier("email", "boris@mail.ru")) == glued
    last = graph.apply(stream[-1])
    assert not any(r.shared for r in results)
    assert last.shared == (OFFICE_E164,)
    splits = [c for c in last.changes if c.kind == "split"]
    assert splits
    moved = {i for c in splits for i in c.moved}
    assert moved  # the identifiers that changed person are named
    owners = {graph.lookup(i) for i in moved}
    assert None not in owners
    people = {graph.lookup(Identifier("email", f"{name}@mail.ru")) for name in ("anna", "boris", "vera")}
    assert len(people) == 3
    assert glued in people or graph.resolve(glued) in people  # the survivor keeps its id


def test_shared_detection_gives_the_same_persons_in_any_arrival_order(make_store: StoreFactory) -> None:
    stream = colleagues()
    reference = IdentityGraph()
    reference.apply_many(sorted(stream, key=lambda t: t.key))
    rng = random.Random(7)
    for _ in range(5):
        shuffled = stream[:]
        rng.shuffle(shuffled)
        graph = make_store()
        graph.apply_many(shuffled)
        assert graph.persons() == reference.persons()
        assert graph.shared() == reference.shared()


def test_unlink_splits_a_person_and_keeps_the_two_apart_until_a_newer_link(make_store: StoreFactory) -> None:
    graph = make_store()
    wife = ("phone", "8 903 111 22 33")
    graph.apply(touch("f", 0, ("email", "ivan@mail.ru"), wife, type="form_submit"))
    graph.apply(touch("c", 1, ("email", "olga@mail.ru"), ("crm_contact_id", "77"), type="crm_stage",
                      crm=CrmInfo("d", "new")))  # fmt: skip
    ivan = graph.lookup(Identifier("email", "ivan@mail.ru"))
    assert graph.lookup(Identifier("phone", "+79031112233")) == ivan
    unlink = graph.apply(touch("u", 5, ("email", "ivan@mail.ru"), wife, type="identity_unlink", source="amocrm"))
    assert unlink.status == "applied"
    assert graph.lookup(Identifier("phone", "+79031112233")) not in (None, ivan)
    assert any(c.kind == "split" for c in unlink.changes)
    # the same pair seen together again is refused, and says why
    again = graph.apply(touch("f2", 6, ("email", "ivan@mail.ru"), wife, ("ga_client_id", "5.1700000000"),
                              type="form_submit"))  # fmt: skip
    assert graph.lookup(Identifier("phone", "+79031112233")) != graph.lookup(Identifier("email", "ivan@mail.ru"))
    assert [c.reason for c in again.conflicts] == ["unlinked"]
    # a manager's newer statement that they are one person wins
    graph.apply(touch("l", 9, ("email", "ivan@mail.ru"), wife, type="identity_link", source="amocrm"))
    assert graph.lookup(Identifier("phone", "+79031112233")) == graph.lookup(Identifier("email", "ivan@mail.ru"))


def test_identity_link_beats_shared_detection(make_store: StoreFactory) -> None:
    """The client called from his wife's phone, which the whole family uses: a manager links it anyway."""
    graph = make_store()
    graph.apply_many(colleagues())
    link = graph.apply(touch("l", 30, ("email", "anna@mail.ru"), OFFICE, type="identity_link", source="amocrm"))
    assert link.profile_id == graph.lookup(Identifier("email", "anna@mail.ru"))
    assert graph.lookup(OFFICE_E164) == link.profile_id
    assert len({graph.lookup(Identifier("email", f"{n}@mail.ru")) for n in ("anna", "boris", "vera")}) == 3


def test_erasure_deletes_the_person_and_survives_a_full_replay(make_store: StoreFactory) -> None:
    graph = make_store()
    stream = story()
    graph.apply_many(stream)
    ivan = graph.lookup(E164)
    maria = graph.lookup_raw("phone", "8 (903) 765-43-21")
    assert ivan is not None
    erase = graph.apply(touch("x", 400, ("phone", "+7 916 123 45 67"), type="erase_request", source="amocrm"))
    assert [(c.kind, c.profile_id) for c in erase.changes] == [("erased", ivan)]
    assert graph.profile(ivan) is None
    for raw in [("phone", "+79161234567"), ("email", "ivanpetrov@gmail.com"), ("crm_contact_id", "amo-501"),
                ("ga_client_id", "111.1700000000"), ("ym_client_id", "1700000000111")]:  # fmt: skip
        ident = graph.normalizer.normalize(*raw)
        assert isinstance(ident, Identifier)
        assert graph.lookup(ident) is None
        assert graph.is_erased(ident)
    assert graph.lookup_raw("phone", "8 (903) 765-43-21") == maria  # nobody else was touched
    # the whole topic again, under new event ids (a rebuild, or a source re-sending history)
    replayed = [dataclasses.replace(t, event_id=f"again-{t.event_id}") for t in stream]
    graph.apply_many(replayed)
    assert graph.lookup(E164) is None
    assert graph.lookup_raw("crm_contact_id", "amo-501") is None
    assert graph.lookup_raw("email", "ivan.petrov@gmail.com") is None
    assert maria is not None
    assert graph.lookup_raw("phone", "8 (903) 765-43-21") == graph.lookup_raw("ga_client_id", "333.1700000200")
    # and the topic itself replayed, erasure included, into an empty store ends the same way
    rebuilt = make_store()
    rebuilt.apply_many([*stream, touch("x", 400, ("phone", "+7 916 123 45 67"), type="erase_request")])
    assert rebuilt.lookup(E164) is None
    assert rebuilt.lookup_raw("phone", "8 (903) 765-43-21") == maria
    # a genuinely new touch after the erasure may start a new person
    fresh = graph.apply(touch("new", 500, ("phone", "+7 916 123 45 67"), type="call", source="calltouch"))
    assert fresh.profile_id not in (None, ivan)
    assert graph.lookup(E164) == fresh.profile_id
    assert not graph.is_erased(E164)


def test_explanations_show_the_evidence_path_and_why_a_link_was_not_followed(make_store: StoreFactory) -> None:
    graph = make_store()
    graph.apply_many(colleagues())
    anna, boris = Identifier("email", "anna@mail.ru"), Identifier("email", "boris@mail.ru")
    answer = explain(graph, graph.policy, a=anna, b=boris)
    assert answer is not None
    assert answer["same_person"] is False
    steps = answer["path"]
    assert [s["linked"] for s in steps] == [True, False, False, True]  # email-ga, ga-office, office-ga, ga-email
    assert steps[1]["reason"] == "shared_identifier"
    assert steps[1]["identifier"] == {"kind": "phone", "value": "+74957770011"}
    assert {s["event_id"] for s in steps} == {"form-anna", "call-anna", "call-boris", "form-boris"}
    own = explain(graph, graph.policy, a=anna, b=Identifier("phone", "+79161112230"))
    assert own is not None
    assert own["same_person"] is True
    assert [(s["event_id"], s["rule"], s["linked"]) for s in own["path"]] == [("form-anna", "co_occurrence", True)]
    person = explain(graph, graph.policy, profile_id=graph.lookup(anna))
    assert person is not None
    assert {"kind": "phone", "value": "+74957770011"} in person["shared_seen"]
    assert [link["event_id"] for link in person["links"]] == ["form-anna"]
    assert any(k["reason"] == "shared_identifier" for k in person["kept_apart"])
    reference = IdentityGraph()
    reference.apply_many(colleagues())
    assert person == explain(reference, reference.policy, profile_id=reference.lookup(anna))
    assert explain(graph, graph.policy, a=Identifier("email", "nobody@mail.ru")) is None


# ---------------------------------------------------------------------------------------------- hubs

HUB_POLICY = ResolutionPolicy(hub_group_size=8)


def switchboard_day(start: int, visitors: int) -> list[Touch]:
    """The office switchboard calls in from new visitors' sessions, one after another (calltracking)."""
    return [
        touch(f"sb-{i}", i, OFFICE, ("ym_client_id", f"17000{i:08d}"), type="call", source="calltouch")
        for i in range(start, start + visitors)
    ]


def test_a_switchboard_past_the_hub_bound_leaves_every_visitors_group(make_store: StoreFactory) -> None:
    """Past ``hub_group_size`` the switchboard is a hub: no visitor's evidence group holds it any more, so an
    event's cost depends on its own person, and it still glues nobody and names the newest visitors."""
    graph = make_store(HUB_POLICY)
    graph.apply_many(switchboard_day(0, 40))
    visitors = [graph.lookup(Identifier("ym_client_id", f"17000{i:08d}")) for i in range(40)]
    assert None not in visitors
    assert len(set(visitors)) == 40  # nobody glued
    assert OFFICE_E164 in graph.shared()
    for i in (0, 20, 39):  # before and after it became a hub: each visitor's group is the visitor alone
        view = graph.group_view(Identifier("ym_client_id", f"17000{i:08d}"))
        assert view is not None
        assert set(view.owner) == {Identifier("ym_client_id", f"17000{i:08d}")}
    hub = graph.group_view(OFFICE_E164)
    assert hub is not None
    assert set(hub.owner) == {OFFICE_E164}
    assert hub.shared == {OFFICE_E164}
    switchboard = graph.match(OFFICE_E164)
    assert switchboard is not None
    assert switchboard.shared
    assert switchboard.ambiguous
    assert set(switchboard.candidates) == set(visitors)  # fewer than HUB_SAMPLE: everyone is named
    # a call from the switchboard alone is its own touch; a visitor who leaves a form is a person of their own
    alone = graph.apply(touch("sb-alone", 100, OFFICE, type="call", source="calltouch"))
    assert alone.profile_id == switchboard.profile_id
    form = graph.apply(touch("sb-form", 101, OFFICE, ("ym_client_id", "1700000000003"), ("email", "lead@ya.ru"),
                            type="form_submit"))  # fmt: skip
    assert form.profile_id == visitors[3]
    assert graph.lookup_raw("email", "lead@ya.ru") == visitors[3]
    assert graph.lookup(OFFICE_E164) == switchboard.profile_id
    hub_profile = graph.profile(switchboard.profile_id)
    assert hub_profile is not None
    assert hub_profile["identifiers"] == {"phone": [OFFICE_E164.value]}
    assert sum(hub_profile["touch_counts"].values()) >= 1


def test_a_hub_names_the_newest_persons_and_forgets_an_erased_one(make_store: StoreFactory) -> None:
    from identity.graph import HUB_SAMPLE

    graph = make_store(HUB_POLICY)
    graph.apply_many(switchboard_day(0, HUB_SAMPLE + 30))
    newest = {graph.lookup(Identifier("ym_client_id", f"17000{i:08d}")) for i in range(30, HUB_SAMPLE + 30)}
    switchboard = graph.match(OFFICE_E164)
    assert switchboard is not None
    assert set(switchboard.candidates) == newest
    gone = Identifier("ym_client_id", f"17000{HUB_SAMPLE + 29:08d}")
    erased_pid = graph.lookup(gone)
    graph.apply(touch("erase-1", 10_000, ("ym_client_id", gone.value), type="erase_request", source="dpo"))
    after = graph.match(OFFICE_E164)
    assert after is not None
    assert erased_pid not in after.candidates
    assert set(after.candidates) == newest - {erased_pid}


def test_a_hub_keeps_its_state_bounded_in_redis(redis_client: redis.Redis) -> None:
    """What Redis keeps for a hub (its unit and index entry) stops growing with its sightings."""
    from streams.redis_store import node_of

    store = RedisIdentityStore(redis_client, HUB_POLICY, prefix=f"test-{uuid.uuid4().hex[:12]}")
    sizes = []
    for part in range(4):
        stream = switchboard_day(part * 150, 150)
        for start in range(0, len(stream), 50):
            store.apply_batch(stream[start : start + 50])
        entry: bytes | None = redis_client.hget(f"{{{store.prefix}}}:idx", node_of(OFFICE_E164))  # type: ignore[assignment]
        assert entry is not None
        unit: bytes | None = redis_client.hget(f"{{{store.prefix}}}:unit", entry.split(b"\x1e")[0])  # type: ignore[assignment]
        assert unit is not None
        sizes.append((len(entry), len(unit)))
    found = store.read_identifier(OFFICE_E164)
    assert found is not None
    assert found.shared
    assert found.total == 600  # every visitor counted, the newest named
    assert len(found.candidates) == 100
    (entry_early, unit_early), (entry_late, unit_late) = sizes[1], sizes[-1]
    assert entry_late <= entry_early * 1.05, sizes
    assert unit_late <= unit_early * 1.05, sizes
    store.clear()
