"""Which values are shared, on the situations of real data: a lead's device, a family computer, an office
switchboard, ``info@``, a home landline, names typed in several forms; and erasure in any arrival order."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity import Identifier, IdentityGraph, ResolutionPolicy, Touch
from identity.explain import EvidenceRecord, explain
from identity.shared import number_type, why_shared
from tests.conftest import touch

MOBILE_A, MOBILE_B, MOBILE_C = "+7 916 111-22-01", "+7 916 111-22-02", "+7 916 111-22-03"
OFFICE = "+7 495 123-45-67"  # a Moscow landline
HOME = "+7 812 555-44-33"  # a St Petersburg landline


def ident(graph: IdentityGraph, kind: str, raw: str) -> Identifier:
    out = graph.normalizer.normalize(kind, raw)
    assert isinstance(out, Identifier)
    return out


def person(graph: IdentityGraph, kind: str, raw: str) -> frozenset[Identifier]:
    pid = graph.lookup(ident(graph, kind, raw))
    assert pid is not None
    return graph.persons()[pid]


def test_number_types_of_russian_numbers() -> None:
    assert number_type("+79161112201") == "mobile"
    assert number_type("+74951234567") == "fixed_line"
    assert number_type("+78125554433") == "fixed_line"
    assert number_type("+78001234567") == "toll_free"


def test_a_lead_who_calls_and_later_sends_an_email_only_form_is_one_person() -> None:
    """The most common cross-channel path: the device seen with a phone and an e-mail is one person's."""
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch("v1", 0, ("ym_client_id", "1700000000001")),
            touch("c1", 5, ("phone", MOBILE_A), ("ym_client_id", "1700000000001"), type="call"),
            touch(
                "f1",
                60,
                ("email", "ivan@mail.ru"),
                ("ym_client_id", "1700000000001"),
                type="form_submit",
                attributes={"name": "Иван"},
            ),
        ]
    )
    assert {i.kind for i in person(graph, "phone", MOBILE_A)} == {"phone", "email", "ym_client_id"}
    assert graph.shared() == frozenset()


def test_a_family_computer_with_two_names_is_shared() -> None:
    graph = IdentityGraph()
    device = ("ym_client_id", "1700000000002")
    graph.apply_many(
        [
            touch("f1", 0, ("email", "anna@mail.ru"), device, type="form_submit", attributes={"name": "Анна Иванова"}),
            touch("f2", 9, ("email", "oleg@mail.ru"), device, type="form_submit", attributes={"name": "Олег Иванов"}),
        ]
    )
    assert graph.lookup(ident(graph, "email", "anna@mail.ru")) != graph.lookup(ident(graph, "email", "oleg@mail.ru"))
    match = graph.match(ident(graph, *device))
    assert match is not None
    assert match.ambiguous


def test_both_cookies_of_a_family_browser_are_shared_and_the_husbands_mobile_stays_his() -> None:
    """A family computer (GA and Metrica ids together): the wife's form from it carries her name to the
    husband's mobile, which he called from it. The browser is out first, so his phone, his CRM record and his
    own phone's browser stay one person, and neither cookie names one of them."""
    ga, ym = ("ga_client_id", "GA1.2.111.1700"), ("ym_client_id", "1700000000009")
    own = ("ga_client_id", "GA1.2.222.1700")
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch("v1", 0, ga, ym),
            touch("f1", 1, ga, ("phone", MOBILE_B), ("email", "darya@mail.ru"), type="form_submit",
                  attributes={"name": "Дарья Смирнова"}),
            touch("c1", 2, ("phone", MOBILE_A), ga, ym, type="call", source="calltouch"),
            touch("c2", 3, ("phone", MOBILE_A), own, type="call", source="calltouch"),
            touch("d1", 4, ("crm_contact_id", "amocrm:77"), ("phone", MOBILE_A), type="crm_stage",
                  source="amocrm", attributes={"name": "Дмитрий Смирнов"}),
        ]
    )  # fmt: skip
    husband = person(graph, "phone", MOBILE_A)
    assert {ident(graph, "crm_contact_id", "amocrm:77"), ident(graph, *own)} <= husband
    assert ident(graph, "phone", MOBILE_B) not in husband
    shared = graph.shared()
    assert {ident(graph, *ga), ident(graph, *ym)} <= shared
    assert ident(graph, "phone", MOBILE_A) not in shared
    for cookie in (ga, ym):
        match = graph.match(ident(graph, *cookie))
        assert match is not None
        assert match.ambiguous
    view = graph.group_view(ident(graph, *ym))
    assert view is not None
    reasons = why_shared([(r.ids, r.mode, r.names) for r in view.records], graph.policy)
    assert reasons[ident(graph, *ym)].rule == "same_device"


def test_an_office_line_goes_before_the_browser_of_a_colleague_who_called_it() -> None:
    """Two colleagues with different names called the office line, each from their own browser: the line is
    shared, and each colleague's browser stays theirs."""
    graph = IdentityGraph()
    stream = []
    for n, (name, mobile) in enumerate([("Андрей Волков", MOBILE_A), ("Алексей Голубев", MOBILE_B)]):
        ga = ("ga_client_id", f"GA1.2.{n + 1}00.1700")
        stream += [
            touch(f"f{n}", n, ga, ("phone", mobile), type="form_submit", attributes={"name": name}),
            touch(f"c{n}", 10 + n, ("phone", OFFICE), ga, type="call", source="calltouch"),
        ]
    graph.apply_many(stream)
    assert graph.shared() == {ident(graph, "phone", OFFICE)}
    assert ident(graph, "ga_client_id", "GA1.2.100.1700") in person(graph, "phone", MOBILE_A)
    assert ident(graph, "ga_client_id", "GA1.2.200.1700") in person(graph, "phone", MOBILE_B)


def test_one_person_with_two_phones_on_one_device_and_one_name_stays_one() -> None:
    """Different phones are evidence of sharing only when the names do not say it is one person."""
    graph = IdentityGraph()
    device = ("ym_client_id", "1700000000003")
    graph.apply_many(
        [
            touch("c1", 0, ("phone", MOBILE_A), device, type="form_submit", attributes={"name": "Саша Петров"}),
            touch("c2", 9, ("phone", MOBILE_B), device, type="form_submit", attributes={"name": "Aleksandr Petrov"}),
        ]
    )
    assert ident(graph, "phone", MOBILE_B) in person(graph, "phone", MOBILE_A)
    assert graph.shared() == frozenset()


def test_two_phones_on_one_device_without_names_are_two_people() -> None:
    graph = IdentityGraph()
    device = ("ym_client_id", "1700000000004")
    graph.apply_many(
        [
            touch("c1", 0, ("phone", MOBILE_A), device, type="call"),
            touch("c2", 9, ("phone", MOBILE_B), device, type="call"),
        ]
    )
    assert ident(graph, "phone", MOBILE_B) not in person(graph, "phone", MOBILE_A)
    assert ident(graph, *device) in graph.shared()


def switchboard_stream(phone: str, colleagues: int) -> list[Touch]:
    """A company contact in the CRM with the office number, and colleagues who call from it through call
    tracking and otherwise only browse."""
    out = [
        touch(
            "crm",
            0,
            ("crm_contact_id", "amocrm:77"),
            ("phone", phone),
            ("email", "boss@firm.ru"),
            type="crm_stage",
            attributes={"name": "Пётр Сидоров"},
        )
    ]
    for n in range(colleagues):
        device = ("ym_client_id", f"17000000001{n:02d}")
        out.append(touch(f"v{n}", 10 + n, device))
        out.append(touch(f"c{n}", 20 + n, ("phone", phone), device, type="call", source="calltouch"))
    return out


def test_a_claimed_office_switchboard_with_browsing_colleagues_is_shared() -> None:
    """Colleagues who never gave a personal identifier: the landline's type weighs their devices."""
    graph = IdentityGraph()
    graph.apply_many(switchboard_stream(OFFICE, 3))
    office = ident(graph, "phone", OFFICE)
    assert office in graph.shared()
    assert not any(i.kind == "ym_client_id" for i in person(graph, "email", "boss@firm.ru"))
    reason = why_shared([(ev.ids, ev.mode, ev.names) for ev in _records(graph, office)], graph.policy)[office]
    assert (reason.rule, reason.number_type) == ("devices", "fixed_line")


def test_the_same_pattern_on_a_mobile_is_one_persons_devices() -> None:
    """A mobile seen with three separate browsers is its owner's phone and browsers: no blanket rule."""
    graph = IdentityGraph()
    graph.apply_many(switchboard_stream(MOBILE_C, 3))
    assert graph.shared() == frozenset()
    assert sum(i.kind == "ym_client_id" for i in person(graph, "phone", MOBILE_C)) == 3


def test_the_device_bound_and_weights_are_policy() -> None:
    graph = IdentityGraph(ResolutionPolicy(number_type_weights={}))
    graph.apply_many(switchboard_stream(OFFICE, 3))
    assert graph.shared() == frozenset()
    graph = IdentityGraph(ResolutionPolicy(shared_devices={"phone": 3}))
    graph.apply_many(switchboard_stream(MOBILE_C, 3))
    assert ident(graph, "phone", MOBILE_C) in graph.shared()


def _records(graph: IdentityGraph, x: Identifier) -> list[EvidenceRecord]:
    view = graph.group_view(x)
    assert view is not None
    return list(view.records)


def test_two_colleagues_on_info_with_different_names_are_kept_apart_and_explained() -> None:
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch(
                "f1",
                0,
                ("email", "info@firm.ru"),
                ("ym_client_id", "1700000000201"),
                type="form_submit",
                attributes={"name": "Иван Петров"},
            ),
            touch(
                "f2",
                5,
                ("email", "info@firm.ru"),
                ("ym_client_id", "1700000000202"),
                type="form_submit",
                attributes={"name": "Ольга Смирнова"},
            ),
        ]
    )
    info = ident(graph, "email", "info@firm.ru")
    a, b = ident(graph, "ym_client_id", "1700000000201"), ident(graph, "ym_client_id", "1700000000202")
    assert graph.lookup(a) != graph.lookup(b)
    match = graph.match(info)
    assert match is not None
    assert match.ambiguous
    answer = explain(graph, graph.policy, a=a, b=b)
    assert answer is not None
    assert answer["same_person"] is False
    crossing = [step for step in answer["path"] if not step["linked"]]
    assert crossing
    assert crossing[0]["reason"] == "shared_identifier"
    assert crossing[0]["shared_by"]["rule"] == "names_differ"


def test_one_phone_with_one_persons_names_in_several_forms_stays_linked() -> None:
    graph = IdentityGraph()
    forms = ["Саша Петров", "Aleksandr Petrov", "Петров Александр Сергеевич", "александр петров"]
    graph.apply_many(
        touch(f"f{n}", n, ("phone", MOBILE_A), ("email", f"a{n}@mail.ru"), type="form_submit", attributes={"name": x})
        for n, x in enumerate(forms)
    )
    assert sum(i.kind == "email" for i in person(graph, "phone", MOBILE_A)) == 4
    assert graph.shared() == frozenset()


def test_a_couple_on_a_home_landline_with_their_names_is_two_people() -> None:
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch("f1", 0, ("phone", HOME), ("email", "oleg@ya.ru"), type="form_submit", attributes={"name": "Олег"}),
            touch("f2", 3, ("phone", HOME), ("email", "anna@ya.ru"), type="form_submit", attributes={"name": "Анна"}),
        ]
    )
    assert graph.lookup(ident(graph, "email", "oleg@ya.ru")) != graph.lookup(ident(graph, "email", "anna@ya.ru"))
    match = graph.match(ident(graph, "phone", HOME))
    assert match is not None
    assert match.ambiguous
    assert len(match.candidates) >= 2


def test_a_name_arriving_later_on_known_evidence_splits_a_family_phone() -> None:
    """The same identifiers seen again with a new name are new evidence: the result does not depend on
    which of the events carried the name first."""
    first = [
        touch("f1", 0, ("phone", HOME), ("email", "oleg@ya.ru"), type="call"),
        touch("f2", 3, ("phone", HOME), ("email", "anna@ya.ru"), type="call"),
        touch("f3", 6, ("phone", HOME), ("email", "oleg@ya.ru"), type="form_submit", attributes={"name": "Олег"}),
        touch("f4", 9, ("phone", HOME), ("email", "anna@ya.ru"), type="form_submit", attributes={"name": "Анна"}),
    ]
    results = []
    for order in (first, first[::-1], [first[2], first[0], first[3], first[1]]):
        graph = IdentityGraph()
        graph.apply_many(order)
        results.append(graph.persons())
        assert graph.lookup(ident(graph, "email", "oleg@ya.ru")) != graph.lookup(ident(graph, "email", "anna@ya.ru"))
    assert results[0] == results[1] == results[2]


# --------------------------------------------------------------------------- erasure in any arrival order

KINDS = ["phone", "email", "ym_client_id", "ga_client_id"]


def person_ids(n: int) -> list[tuple[str, str]]:
    return [
        ("phone", f"+7 916 300-{n:02d}-01"),
        ("phone", f"+7 926 300-{n:02d}-02"),
        ("email", f"p{n}@mail.ru"),
        ("ym_client_id", f"17000000{n:05d}"),
        ("ga_client_id", f"GA1.2.{n + 100}.1700"),
    ]


#: One real name per generated person: a person's two phones on one device are then that person's, as in life
#: (an unnamed device seen with two phones is judged shared, and erasing one owner leaves the other's).
PERSON_NAMES = ["Иван Петров", "Мария Смирнова", "Олег Кузнецов", "Анна Волкова"]


@st.composite
def erasure_streams(draw: st.DrawFn) -> tuple[list[Touch], set[tuple[str, str]]]:
    """Several persons, each a few events over its own identifiers; some ask to be erased after their last
    event. Events of persons who are not erased may come at any time."""
    persons = draw(st.integers(1, 4))
    out: list[Touch] = []
    erased: set[tuple[str, str]] = set()
    for p in range(persons):
        ids = person_ids(p)
        events = draw(st.integers(1, 5))
        last = 0
        for e in range(events):
            minute = draw(st.integers(0, 50))
            last = max(last, minute)
            chosen = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))
            kind = draw(st.sampled_from(["site_visit", "call", "form_submit"]))
            out.append(touch(f"p{p}e{e}", minute, *chosen, type=kind, attributes={"name": PERSON_NAMES[p]}))
        if draw(st.booleans()):
            linked = {i for t in out if t.event_id.startswith(f"p{p}e") for i in t.identifiers}
            target = draw(st.sampled_from(sorted(linked)))
            out.append(touch(f"p{p}x", last + draw(st.integers(1, 10)), target, type="erase_request"))
            # every identifier joined to the target before the erasure is erased with it
            reach = {target}
            grew = True
            while grew:
                grew = False
                for t in out:
                    if (
                        t.event_id.startswith(f"p{p}e")
                        and reach & set(t.identifiers)
                        and not set(t.identifiers) <= reach
                    ):
                        reach |= set(t.identifiers)
                        grew = True
            erased |= reach
    return out, erased


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=erasure_streams(), seed=st.integers(0, 2**32 - 1))
def test_erasure_gives_the_same_result_in_every_arrival_order(
    stream: tuple[list[Touch], set[tuple[str, str]]], seed: int
) -> None:
    events, erased = stream
    canonical = IdentityGraph()
    canonical.apply_many(sorted(events, key=lambda t: t.key))
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    arrived = IdentityGraph()
    arrived.apply_many(shuffled)
    assert arrived.persons() == canonical.persons()
    assert list(arrived.profiles()) == list(canonical.profiles())
    for kind, raw in erased:
        found = ident(arrived, kind, raw)
        assert arrived.lookup(found) is None, f"{kind} of an erased person found after arrival order {seed}"
        assert arrived.is_erased(found)


def test_a_late_touch_older_than_an_erasure_does_not_bring_the_person_back() -> None:
    graph = IdentityGraph()
    graph.apply(touch("f1", 0, ("email", "gone@mail.ru"), ("phone", MOBILE_A), type="form_submit"))
    graph.apply(touch("x1", 30, ("email", "gone@mail.ru"), type="erase_request"))
    late = graph.apply(touch("c1", 10, ("phone", MOBILE_A), ("ym_client_id", "1700000000777"), type="call"))
    late2 = graph.apply(touch("v1", 5, ("ym_client_id", "1700000000777"), ("ga_client_id", "GA1.2.5.6")))
    for kind, raw in [("phone", MOBILE_A), ("ym_client_id", "1700000000777"), ("ga_client_id", "GA1.2.5.6")]:
        assert graph.lookup(ident(graph, kind, raw)) is None
    assert late.profile_id is None
    assert late2.profile_id is None
    # after the erasure the same phone is a new person's, with only what came after
    graph.apply(touch("c2", 40, ("phone", MOBILE_A), type="call"))
    assert graph.lookup(ident(graph, "phone", MOBILE_A)) is not None


@pytest.mark.parametrize("form_first", [True, False])
def test_an_erasure_naming_a_caller_id_and_an_email_claims_the_caller_id(form_first: bool) -> None:
    """A mobile seen only on calls from two browsers is judged shared (unclaimed); the erase request names it
    beside the person's e-mail, which claims it: its browsers go with it, whether the form that also shows
    it arrives before the erasure or after."""
    calls = [
        touch("v1", 0, ("ga_client_id", "GA1.2.1.1700"), ("ym_client_id", "1700000000001")),
        touch("c1", 1, ("phone", MOBILE_A), ("ga_client_id", "GA1.2.1.1700"), type="call"),
        touch("c2", 2, ("phone", MOBILE_A), ("ga_client_id", "GA1.2.2.1700"), type="call"),
    ]
    form = touch("f1", 3, ("phone", MOBILE_A), ("ga_client_id", "GA1.2.3.1700"), type="form_submit",
                 attributes={"name": "Иван Петров"})  # fmt: skip
    erase = touch("x1", 9, ("phone", MOBILE_A), ("email", "ivan.p@mail.ru"), type="erase_request")
    graph = IdentityGraph()
    graph.apply_many([*calls, form, erase] if form_first else [*calls, erase, form])
    for kind, raw in [("phone", MOBILE_A), ("ga_client_id", "GA1.2.1.1700"), ("ga_client_id", "GA1.2.2.1700"),
                      ("ga_client_id", "GA1.2.3.1700"), ("ym_client_id", "1700000000001")]:  # fmt: skip
        assert graph.match(ident(graph, kind, raw)) is None, (kind, form_first)
    assert graph.persons() == {}


@pytest.mark.parametrize("kind", ["identity_link", "identity_unlink"])
def test_manual_corrections_carry_who_and_why(kind: str) -> None:
    graph = IdentityGraph()
    graph.apply(touch("c1", 0, ("phone", MOBILE_A), ("email", "anna.k@mail.ru"), type="call"))
    graph.apply(
        touch(
            "m1",
            5,
            ("phone", MOBILE_A),
            ("email", "anna.k@mail.ru"),
            type=kind,
            source="console",
            attributes={"actor": "operator.ivanova", "reason": "двое на одном номере" if "un" in kind else "тот же"},
        )
    )
    answer = explain(graph, graph.policy, a=ident(graph, "phone", MOBILE_A), b=ident(graph, "email", "anna.k@mail.ru"))
    assert answer is not None
    graph_view = graph.group_view(ident(graph, "phone", MOBILE_A))
    assert graph_view is not None
    manual = [r for r in graph_view.records if r.event_id == "m1"]
    assert manual
    assert manual[0].note is not None
    assert manual[0].note[0] == "operator.ivanova"
    described = manual[0].describe()
    assert described["actor"] == "operator.ivanova"
    assert described["reason"]
    # the statement survives the store's unit format
    root = graph.root_of(ident(graph, "phone", MOBILE_A))
    assert root is not None
    copy = IdentityGraph()
    copy.load_unit(graph.export_unit(root))
    view = copy.group_view(ident(graph, "phone", MOBILE_A))
    assert view is not None
    assert [r.note for r in view.records if r.event_id == "m1"] == [manual[0].note]
