"""CRM ids carry their system, messenger ids their platform: the policy's counting classes and the graph's use.

``ResolutionPolicy.limit_key`` / ``limit`` are tested directly. The graph tests say what the engine must do now
that it counts per class instead of per kind (``identity/graph.py``, ``identity/explain.py``): the first group
failed while the graph counted per kind (they were written as ``xfail(strict=True)`` and flipped when the wiring
landed); the second group held before the wiring and must keep holding after it (what must not change).
"""

from __future__ import annotations

import dataclasses

import pytest

from identity import ConfigurationError, CrmInfo, Identifier, IdentityGraph, Normalizer, ResolutionPolicy, Touch
from identity.normalize import DEFAULT_CRM_SYSTEMS, NormalizerConfig
from tests.conftest import touch

PHONE = ("phone", "8 (916) 123-45-67")
E164 = Identifier("phone", "+79161234567")
EMAIL = ("email", "ivan.petrov@mail.ru")


def no_sharing(limits: dict[str, int] | None = None) -> ResolutionPolicy:
    """Shared-identifier detection off: three CRM contacts on one phone would make the phone *shared* (it then
    links nothing and nothing is refused), which is not what the limit tests are about."""
    if limits is None:
        return ResolutionPolicy(shared_persons={}, shared_clusters={})
    return ResolutionPolicy(limits=limits, shared_persons={}, shared_clusters={})


def crm(system_id: str) -> Identifier:
    return Identifier("crm_contact_id", system_id)


def messenger(value: str) -> Identifier:
    return Identifier("messenger_id", value)


# ----------------------------------------------------------------------------- the policy's counting classes


@pytest.mark.parametrize(
    ("ident", "key"),
    [
        (crm("501"), "crm_contact_id"),
        (crm("CUST-1"), "crm_contact_id"),
        (crm("amocrm:501"), "crm_contact_id:amocrm"),
        (crm("dynamics:9"), "crm_contact_id:dynamics"),
        (crm("1c:000123"), "crm_contact_id:1c"),
        (crm("amocrm:ext:42"), "crm_contact_id:amocrm"),
        (crm("amo:501"), "crm_contact_id"),  # not a system: an id of the unnamed system, as before
        (crm("AmoCRM:501"), "crm_contact_id"),  # a value stored before prefixes existed keeps its class
        (crm("amocrm"), "crm_contact_id"),
        (crm(":501"), "crm_contact_id"),
        (messenger("telegram:ivan"), "messenger_id"),
        (messenger("vk:ivan"), "messenger_id"),
        (E164, "phone"),
        (Identifier("loyalty_card", "amocrm:1"), "loyalty_card"),
    ],
)
def test_limit_key_is_the_counting_class(ident: Identifier, key: str) -> None:
    policy = ResolutionPolicy()
    assert policy.limit_key(ident) == key
    assert policy.limit_key(ident) == key  # and again, from the memo


def test_limit_falls_back_to_the_kind() -> None:
    policy = ResolutionPolicy()
    assert policy.limit("crm_contact_id") == 1
    assert policy.limit("crm_contact_id:amocrm") == 1
    assert policy.limit("phone") == 5
    assert policy.limit("loyalty_card") is None
    assert policy.limit("loyalty_card:x") is None
    own = ResolutionPolicy(limits={"crm_contact_id": 1, "crm_contact_id:bitrix24": 3, "phone": 2})
    assert own.limit("crm_contact_id:bitrix24") == 3
    assert own.limit("crm_contact_id:amocrm") == 1
    assert own.limit("crm_contact_id") == 1
    assert own.limit("email") is None  # not listed: unlimited, as before
    unlimited = ResolutionPolicy(limits={})
    assert unlimited.limit(unlimited.limit_key(crm("amocrm:1"))) is None


def test_limit_key_and_limit_follow_the_configured_systems() -> None:
    policy = ResolutionPolicy(
        crm_systems=frozenset({"amo", "sbis"}), limits={"crm_contact_id": 1, "crm_contact_id:sbis": 2}
    )
    assert policy.limit_key(crm("amo:501")) == "crm_contact_id:amo"
    assert policy.limit_key(crm("amocrm:501")) == "crm_contact_id"  # not configured here
    assert policy.limit("crm_contact_id:sbis") == 2
    assert policy.crm_systems == frozenset({"amo", "sbis"})
    assert ResolutionPolicy().crm_systems == DEFAULT_CRM_SYSTEMS


@pytest.mark.parametrize(
    "limits",
    [
        {"crm_contact_id:amo": 2},  # not a configured system
        {"phone:mobile": 2},  # only CRM ids count per system
        {"crm_contact_id:amocrm": 0},
    ],
)
def test_bad_per_system_limits_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(limits))):
        ResolutionPolicy(limits=limits)


def test_bad_crm_system_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="CRM system"):
        ResolutionPolicy(crm_systems=frozenset({"Amo CRM"}))


def test_memo_is_not_part_of_the_policy_value() -> None:
    used, fresh = ResolutionPolicy(), ResolutionPolicy()
    for n in range(100):
        used.limit_key(crm(f"amocrm:{n}"))
        used.limit(f"crm_contact_id:{sorted(DEFAULT_CRM_SYSTEMS)[n % 8]}")
    assert used == fresh
    assert repr(used) == repr(fresh)
    with pytest.raises(dataclasses.FrozenInstanceError):
        used.crm_systems = frozenset()  # type: ignore[misc]
    other = dataclasses.replace(used, crm_systems=frozenset({"amo"}))
    assert other != used
    assert other.limit_key(crm("amocrm:1")) == "crm_contact_id"  # a new policy, a new memo
    assert other.limit_key(crm("amo:1")) == "crm_contact_id:amo"


def test_memo_stays_bounded() -> None:
    policy = ResolutionPolicy()
    for n in range(70_000):
        assert policy.limit_key(crm(f"amocrm:{n}")) == "crm_contact_id:amocrm"
    assert len(policy._value_keys) <= 1 << 16


# ----------------------------------------------------------------------------- the graph: what wiring must give


def crm_event(event_id: str, minute: float, contact: str, *others: tuple[str, str], source: str) -> Touch:
    return touch(
        event_id,
        minute,
        ("crm_contact_id", contact),
        *others,
        type="crm_stage",
        source=source,
        crm=CrmInfo(f"deal-{event_id}", "new"),
    )


def migration() -> list[Touch]:
    """The same client in the old CRM (Dynamics) and, after the migration, in amoCRM: one phone."""
    return [
        crm_event("dyn-1", 0, "dynamics:9", PHONE, source="dynamics"),
        touch("call-1", 30, PHONE, type="call", source="calltouch"),
        crm_event("amo-1", 60, "AmoCRM: 9", PHONE, source="amocrm"),
    ]


def test_a_crm_migration_keeps_one_person() -> None:
    graph = IdentityGraph()
    results = graph.apply_many(migration())
    assert all(not r.conflicts for r in results)
    person = graph.lookup(E164)
    assert person is not None
    assert graph.lookup(crm("dynamics:9")) == person
    assert graph.lookup(crm("amocrm:9")) == person
    assert len(graph) == 1
    profile = graph.profile(person)
    assert profile is not None
    assert sorted(profile["identifiers"]["crm_contact_id"]) == ["amocrm:9", "dynamics:9"]


def test_a_crm_migration_keeps_one_person_in_any_arrival_order() -> None:
    graph = IdentityGraph()
    graph.apply_many(reversed(migration()))
    person = graph.lookup(E164)
    assert person is not None
    assert graph.lookup(crm("dynamics:9")) == graph.lookup(crm("amocrm:9")) == person
    assert len(graph) == 1


def test_persons_of_two_crms_merge_when_an_event_joins_them() -> None:
    """Each CRM knows the client by another contact: the merge is not refused for holding two CRM ids."""
    graph = IdentityGraph()
    graph.apply(crm_event("dyn-1", 0, "dynamics:9", PHONE, source="dynamics"))
    graph.apply(crm_event("amo-1", 10, "amocrm:9", EMAIL, source="amocrm"))
    assert len(graph) == 2
    result = graph.apply(touch("form-1", 20, PHONE, EMAIL, type="form_submit"))
    assert not result.conflicts
    assert len(graph) == 1
    assert graph.lookup(crm("dynamics:9")) == graph.lookup(crm("amocrm:9")) == graph.lookup(E164)


def test_an_unprefixed_id_and_a_system_id_are_held_together() -> None:
    graph = IdentityGraph()
    graph.apply(crm_event("old-1", 0, "501", PHONE, source="crm"))
    result = graph.apply(crm_event("amo-1", 10, "amocrm:501", PHONE, source="amocrm"))
    assert not result.conflicts
    assert graph.lookup(crm("501")) == graph.lookup(crm("amocrm:501")) == graph.lookup(E164)


def test_a_per_system_limit_is_used() -> None:
    """``limits["crm_contact_id:bitrix24"] = 2``: Bitrix24 may hold two contacts of one client."""
    policy = no_sharing({"crm_contact_id": 1, "crm_contact_id:bitrix24": 2, "phone": 5})
    graph = IdentityGraph(policy)
    graph.apply(crm_event("b-1", 0, "bitrix24:1", PHONE, source="bitrix24"))
    second = graph.apply(crm_event("b-2", 10, "bitrix24:2", PHONE, source="bitrix24"))
    assert not second.conflicts
    third = graph.apply(crm_event("b-3", 20, "bitrix24:3", PHONE, source="bitrix24"))
    assert [c.identifier for c in third.conflicts] == [crm("bitrix24:3")]
    assert graph.lookup(crm("bitrix24:1")) == graph.lookup(crm("bitrix24:2")) != graph.lookup(crm("bitrix24:3"))


def test_an_exported_unit_keeps_counting_per_system() -> None:
    """What the Redis store does: a group exported and loaded again must count per class as it was built."""
    policy = no_sharing()
    graph = IdentityGraph(policy)
    graph.apply_many(migration())
    root = graph.root_of(E164)
    assert root is not None
    copy = IdentityGraph(policy)
    copy.load_unit(graph.export_unit(root))
    assert copy.lookup(crm("dynamics:9")) == copy.lookup(crm("amocrm:9"))
    second = copy.apply(crm_event("amo-2", 90, "amocrm:10", PHONE, source="amocrm"))
    assert [c.identifier for c in second.conflicts] == [crm("amocrm:10")]
    third = copy.apply(crm_event("b24-1", 95, "bitrix24:1", PHONE, source="bitrix24"))
    assert not third.conflicts


# ----------------------------------------------------------------------------- the graph: what must not change


def test_two_ids_of_one_system_on_one_phone_are_still_refused() -> None:
    graph = IdentityGraph()
    graph.apply(crm_event("amo-1", 0, "amocrm:9", PHONE, source="amocrm"))
    result = graph.apply(crm_event("amo-2", 10, "amocrm:10", PHONE, source="amocrm"))
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.identifier == crm("amocrm:10")
    assert conflict.limit == 1
    assert conflict.kind.startswith("crm_contact_id")
    assert len(graph) == 2
    assert graph.lookup(crm("amocrm:9")) == graph.lookup(E164) != graph.lookup(crm("amocrm:10"))


def test_two_persons_of_one_system_are_not_merged() -> None:
    graph = IdentityGraph()
    graph.apply(crm_event("amo-1", 0, "amocrm:9", PHONE, source="amocrm"))
    graph.apply(crm_event("amo-2", 10, "amocrm:10", EMAIL, source="amocrm"))
    result = graph.apply(touch("form-1", 20, PHONE, EMAIL, type="form_submit"))
    assert len(result.conflicts) == 1
    assert len(graph) == 2


def test_two_unprefixed_ids_and_old_aliases_are_still_one_class() -> None:
    """``amo:`` is not a system by default: ``amo:501`` and ``502`` are two ids of the unnamed CRM."""
    graph = IdentityGraph()
    graph.apply(crm_event("a-1", 0, "amo:501", PHONE, source="amocrm"))
    result = graph.apply(crm_event("a-2", 10, "502", PHONE, source="crm"))
    assert [c.identifier for c in result.conflicts] == [crm("502")]


def test_a_system_id_still_anchors_the_survivor() -> None:
    """The anchor kind is ``crm_contact_id``: a person holding only ``amocrm:42`` still holds one."""
    graph = IdentityGraph()
    visitor = graph.apply(touch("v-1", 0, ("ga_client_id", "1.1"))).profile_id
    contact = graph.apply(crm_event("amo-1", 5, "amocrm:42", PHONE, source="amocrm")).profile_id
    result = graph.apply(touch("c-1", 10, ("ga_client_id", "1.1"), PHONE, type="call"))
    assert result.profile_id == contact != visitor
    assert graph.resolve(visitor or "") == contact


def test_telegram_and_vk_handles_are_two_identifiers() -> None:
    graph = IdentityGraph()
    graph.apply(touch("tg-1", 0, ("messenger_id", "telegram:@ivan"), PHONE, type="form_submit"))
    graph.apply(touch("vk-1", 10, ("messenger_id", "vk:ivan"), ("phone", "+7 903 765-43-21"), type="form_submit"))
    telegram, vk = messenger("telegram:ivan"), messenger("vk:ivan")
    assert graph.lookup(telegram) == graph.lookup(E164)
    assert graph.lookup(vk) is not None
    assert graph.lookup(vk) != graph.lookup(telegram)  # one handle, two platforms: not evidence of one person
    assert graph.lookup(messenger("ivan")) is None
    both = IdentityGraph()
    result = both.apply(touch("f-1", 0, ("messenger_id", "telegram:@Ivan"), ("messenger_id", "vk:Ivan")))
    assert not result.conflicts
    profile = both.profile(result.profile_id or "")
    assert profile is not None
    assert sorted(profile["identifiers"]["messenger_id"]) == ["telegram:ivan", "vk:ivan"]


def test_whatsapp_number_spellings_are_one_identifier() -> None:
    graph = IdentityGraph()
    first = graph.apply(touch("w-1", 0, ("messenger_id", "whatsapp:8 (916) 123-45-67"))).profile_id
    again = graph.apply(touch("w-2", 5, ("messenger_id", "WhatsApp: https://wa.me/79161234567"))).profile_id
    assert first == again is not None
    assert graph.lookup(messenger("whatsapp:+79161234567")) == first
    assert graph.lookup(E164) is None  # a WhatsApp number is not the phone kind: nothing links them by itself


def test_a_graph_built_from_one_configuration_agrees_with_itself() -> None:
    """An operator's extra system reaches both halves: the normalizer spells it, the policy counts it."""
    systems = DEFAULT_CRM_SYSTEMS | {"sbis"}
    graph = IdentityGraph(ResolutionPolicy(crm_systems=systems), Normalizer(NormalizerConfig(crm_systems=systems)))
    result = graph.apply(crm_event("s-1", 0, "SBIS: 7", PHONE, source="sbis"))
    assert graph.lookup(crm("sbis:7")) == result.profile_id
    assert graph.policy.limit_key(crm("sbis:7")) == "crm_contact_id:sbis"
