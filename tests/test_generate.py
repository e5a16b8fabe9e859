"""The synthetic stream must contain the mess a real one does, the same way every time."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import phonenumbers
import pytest

from identity import Identifier, IdentityGraph, Normalizer, Touch, TouchType
from schemas import TouchEvent, decode_touch
from streams.generate import (
    DIMINUTIVES,
    HOME_CODES,
    NAME_STYLES,
    OFFICE_CODES,
    ORDINARY,
    SITUATIONS,
    GeneratedStream,
    Situations,
    generate,
    render_name,
)

NORMALIZER = Normalizer()


def test_generation_is_deterministic_and_valid_on_the_wire() -> None:
    a, b = generate(200, seed=7), generate(200, seed=7)
    assert [t.event_id for t in a.touches] == [t.event_id for t in b.touches]
    assert a.situations == b.situations
    assert a.names == b.names
    assert a.erasures == b.erasures
    assert generate(200, seed=8).touches != a.touches
    for touch in a.touches[:300]:
        assert decode_touch(TouchEvent.from_touch(touch).model_dump_json()).to_touch() == touch
    for touch in a.touches:
        if touch.type is TouchType.ERASE_REQUEST:
            assert decode_touch(TouchEvent.from_touch(touch).model_dump_json()).to_touch() == touch


def test_the_stream_has_redeliveries_late_crm_events_shared_phones_and_every_touch_type() -> None:
    stream = generate(600, seed=1)
    ids = Counter(t.event_id for t in stream.touches)
    assert sum(n - 1 for n in ids.values()) == stream.redeliveries > 0
    arrival = [t.key for t in stream.touches if t.type is TouchType.CRM_STAGE]
    assert any(later < earlier for earlier, later in itertools.pairwise(arrival))  # late ones
    assert {t.type for t in stream.touches} == {  # the erasures of erased_then_late are the change
        TouchType.SITE_VISIT,
        TouchType.FORM_SUBMIT,
        TouchType.CALL,
        TouchType.CRM_STAGE,
        TouchType.ERASE_REQUEST,
    }
    office_phones = Counter(
        value for t in stream.touches if t.type is TouchType.CALL for kind, value in t.identifiers if kind == "phone"
    )
    assert stream.shared_office_phones > 0
    ordinary_forms = [
        t for t in stream.touches if t.type is TouchType.FORM_SUBMIT and stream.situation_of(t.event_id) == ORDINARY
    ]
    spellings = {t.identifiers[1][1] for t in ordinary_forms}
    assert any(s.startswith("8 (") for s in spellings)
    assert any(s.startswith("+7 ") for s in spellings)
    assert office_phones


def test_resolving_the_stream_finds_each_ordinary_person_with_a_form_at_most_once() -> None:
    """Every ordinary person left a form with their own phone: none may be split across profiles."""
    stream = generate(300, seed=3)
    graph = IdentityGraph()
    graph.apply_many(stream.touches)
    forms: dict[int, set[str | None]] = {}
    for touch in stream.touches:
        person = stream.truth.get(touch.event_id)
        if person is not None and touch.type is TouchType.FORM_SUBMIT and stream.situations[person] == ORDINARY:
            phone = next(v for k, v in touch.identifiers if k == "phone")
            forms.setdefault(person, set()).add(graph.lookup_raw("phone", phone))
    assert len(forms) == sum(1 for s in stream.situations.values() if s == ORDINARY) > 200
    assert all(len(pids) == 1 and None not in pids for pids in forms.values())


# ----------------------------------------------------------------------------- situations


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    """Every situation several times over (a third of the leads split their contacts, the target stream)."""
    return generate(1200, seed=5, situations=Situations().with_shares(call_then_email_form=1 / 3))


def events_by_person(stream: GeneratedStream) -> dict[int, list[Touch]]:
    """Each person's distinct events, in occurrence order."""
    out: defaultdict[int, dict[str, Touch]] = defaultdict(dict)
    for touch in stream.touches:
        person = stream.truth.get(touch.event_id)
        if person is not None:
            out[person].setdefault(touch.event_id, touch)
    return {p: sorted(events.values(), key=lambda t: t.key) for p, events in out.items()}


def groups_of(stream: GeneratedStream, situation: str) -> list[list[int]]:
    members: defaultdict[int, list[int]] = defaultdict(list)
    for person, group in stream.groups.items():
        if stream.situations[person] == situation:
            members[group].append(person)
    return [sorted(m) for _, m in sorted(members.items())]


def values(touch: Touch, kind: str) -> list[str]:
    """The touch's normalized values of a kind."""
    out = []
    for k, raw in touch.identifiers:
        if k == kind:
            ident = NORMALIZER.normalize(k, raw)
            if isinstance(ident, Identifier):  # junk (test@test.ru) is no value
                out.append(ident.value)
    return out


def personal_kinds(touches: list[Touch]) -> set[str]:
    return {k for t in touches for k, _ in t.identifiers if k in ("phone", "email", "crm_contact_id", "messenger_id")}


def test_shares_make_the_situations(stream: GeneratedStream) -> None:
    lived = Counter(stream.situations.values())
    assert set(lived) == {ORDINARY, *SITUATIONS}
    assert sum(lived.values()) == stream.persons == 1200
    assert lived["call_then_email_form"] == 400  # a third of the leads
    assert lived["erased_then_late"] == 12
    assert lived["crm_migration"] == 36
    assert set(stream.truth.values()) == set(range(1200))
    plain = generate(100, seed=5, situations=Situations.none())
    assert set(plain.situations.values()) == {ORDINARY}
    assert not plain.erasures
    with pytest.raises(ValueError, match="add up"):
        Situations(call_then_email_form=0.7, family_computer=0.5)
    with pytest.raises(ValueError, match="unknown"):
        Situations().with_shares(everything=0.1)


def test_call_then_email_form(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    leads = [p for p, s in stream.situations.items() if s == "call_then_email_form"]
    for person in leads:
        events = by_person[person]
        assert not any(t.type is TouchType.CRM_STAGE for t in events)  # never reaches the CRM
        (call,) = [t for t in events if t.type is TouchType.CALL]
        (form,) = [t for t in events if t.type is TouchType.FORM_SUBMIT]
        assert call.occurred_at < form.occurred_at
        assert [k for k, _ in call.identifiers] == ["phone", "ga_client_id", "ym_client_id"]
        assert [k for k, _ in form.identifiers] == ["email", "ga_client_id", "ym_client_id"]  # no phone
        assert call.identifiers[1:] == form.identifiers[1:]  # the same browser session's client ids
        assert form.attributes["name"]
        devices = {v for t in events for v in values(t, "ga_client_id")}
        assert len(devices) == 1


def test_family_computer(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    families = groups_of(stream, "family_computer")
    assert len(families) == 24
    for family in families:
        assert len(family) == 2
        names = [stream.names[p] for p in family]
        firsts, lasts = zip(*(n.split() for n in names), strict=True)
        assert firsts[0] != firsts[1]
        assert lasts[0].removesuffix("а") == lasts[1].removesuffix("а")  # one surname
        contacts = [[t for t in by_person[p] if t.type in (TouchType.FORM_SUBMIT, TouchType.CALL)] for p in family]
        phones = [{v for t in mine for v in values(t, "phone")} for mine in contacts]
        assert len(phones[0]) == len(phones[1]) == 1
        assert phones[0] != phones[1]
        devices = [{v for t in mine for v in values(t, "ga_client_id")} for mine in contacts]
        assert devices[0] & devices[1]  # a form or call of each from the one shared device
        emails = [{v for t in by_person[p] for v in values(t, "email")} for p in family]
        assert not emails[0] & emails[1]


def test_switchboard_browsers(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    offices = groups_of(stream, "switchboard_browsers")
    assert offices
    for colleagues in offices:
        assert 3 <= len(colleagues) <= 6
        assert len({stream.names[p] for p in colleagues}) == len(colleagues)
        switchboards = set()
        browsers = []
        for person in colleagues:
            events = by_person[person]
            calls = [t for t in events if t.type is TouchType.CALL]
            assert calls
            assert all(t.source == "calltouch" for t in calls)
            assert personal_kinds([t for t in events if t.type is not TouchType.CALL]) == set()  # only browse
            assert {k for t in calls for k, _ in t.identifiers} == {"phone", "ga_client_id", "ym_client_id"}
            switchboards |= {v for t in calls for v in values(t, "phone")}
            browsers.append({v for t in events for v in values(t, "ga_client_id")})
        (number,) = switchboards
        assert number[2:5] in OFFICE_CODES
        parsed = phonenumbers.parse(number)
        assert phonenumbers.is_valid_number(parsed)
        assert phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.FIXED_LINE
        assert all(len(b) == 1 for b in browsers)
        assert len(set.union(*browsers)) == len(colleagues)


def test_info_mailbox(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    companies = groups_of(stream, "info_mailbox")
    assert companies
    with_mobile = 0
    for colleagues in companies:
        assert 2 <= len(colleagues) <= 3
        assert len({stream.names[p] for p in colleagues}) == len(colleagues)
        mailboxes = set()
        for person in colleagues:
            forms = [t for t in by_person[person] if t.type is TouchType.FORM_SUBMIT]
            assert forms
            assert all(t.attributes["name"] for t in forms)
            mailboxes |= {v for t in forms for v in values(t, "email")}
            with_mobile += any(values(t, "phone") for t in forms)
        (mailbox,) = mailboxes
        assert mailbox.startswith("info@")
        assert mailbox.endswith(".ru")
    assert 0 < with_mobile < sum(map(len, companies))  # some give their own mobile too


def test_home_landline(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    couples = groups_of(stream, "home_landline")
    assert couples
    for couple in couples:
        assert len(couple) == 2
        firsts, lasts = zip(*(stream.names[p].split() for p in couple), strict=True)
        assert firsts[0] != firsts[1]
        assert lasts[0].removesuffix("а") == lasts[1].removesuffix("а")
        landlines = set()
        for person in couple:
            events = by_person[person]
            assert any(t.type is TouchType.CALL for t in events)
            landlines |= {v for t in events for v in values(t, "phone")}
            named = [t for t in events if t.type in (TouchType.FORM_SUBMIT, TouchType.CRM_STAGE)]
            assert named
            assert all(t.attributes["name"] and values(t, "phone") and values(t, "email") for t in named)
        (home,) = landlines  # every phone of theirs is the one landline
        assert home[2:5] in HOME_CODES
        parsed = phonenumbers.parse(home)
        assert phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.FIXED_LINE
        emails = [{v for t in by_person[p] for v in values(t, "email")} for p in couple]
        assert len(emails[0]) == len(emails[1]) == 1
        assert emails[0] != emails[1]


def test_crm_migration(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    clients = [p for p, s in stream.situations.items() if s == "crm_migration"]
    for person in clients:
        crm = [t for t in by_person[person] if t.type is TouchType.CRM_STAGE]
        old = [t for t in crm if values(t, "crm_contact_id")[0].startswith("dynamics:")]
        new = [t for t in crm if values(t, "crm_contact_id")[0].startswith("amocrm:")]
        assert old
        assert new
        assert len(old) + len(new) == len(crm)
        assert max(t.occurred_at for t in old) < min(t.occurred_at for t in new)
        contacts = [{(k, v) for t in side for k in ("phone", "email") for v in values(t, k)} for side in (old, new)]
        assert contacts[0] == contacts[1]
        assert len(contacts[0]) == 2


def test_erased_then_late(stream: GeneratedStream) -> None:
    position: dict[str, int] = {}
    for n, touch in enumerate(stream.touches):
        position.setdefault(touch.event_id, n)
    requests = {t.event_id: t for t in stream.touches if t.type is TouchType.ERASE_REQUEST}
    assert set(requests) == set(stream.erasures)
    assert {stream.situations[p] for p in stream.erasures.values()} == {"erased_then_late"}
    assert not set(requests) & stream.truth.keys()
    by_person = events_by_person(stream)
    late_persons = set()
    for event_id, person in stream.erasures.items():
        request = requests[event_id]
        mine = {(k, v) for t in by_person[person] for k in ("phone", "email") for v in values(t, k)}
        named = {(k, v) for k in ("phone", "email") for v in values(request, k)}
        assert {kind for kind, _ in named} == {"phone", "email"}
        assert {x for x in named if x[0] == "phone"} <= mine  # their own phone (the e-mail: their real one, even
        # when their form had a junk address)
        assert all(t.occurred_at < request.occurred_at for t in by_person[person])
        for touch in by_person[person]:
            if touch.event_id in stream.late_after_erasure:
                assert position[touch.event_id] > position[event_id]  # delivered after the erasure
                late_persons.add(person)
    assert stream.late_after_erasure
    assert len(late_persons) == len(stream.erasures)
    assert all(stream.truth[e] in stream.erasures.values() for e in stream.late_after_erasure)


def renderings(first: str, last: str) -> set[str]:
    return {render_name(first, last, p, s) for s in NAME_STYLES for p in ("", "X")} | {"", first.replace("ё", "е")}


def test_name_variants(stream: GeneratedStream) -> None:
    by_person = events_by_person(stream)
    persons = [p for p, s in stream.situations.items() if s == "name_variants"]
    for person in persons:
        first, last = stream.names[person].split()
        assert first in DIMINUTIVES
        named = [t for t in by_person[person] if "name" in t.attributes]
        written = [str(t.attributes["name"]) for t in named]
        assert len(set(written)) == len(written) >= 2  # a different way every time
        for name in written:
            plain = name.replace("ё", "е")
            assert any(plain.startswith(r.replace("ё", "е")) for r in renderings(first, last) if r), name
        forms = [t for t in named if t.type is TouchType.FORM_SUBMIT]
        assert [sorted(k for k, _ in t.identifiers) for t in forms] == [
            ["ga_client_id", "phone"],
            ["email", "ga_client_id"],
        ]
        assert len({v for t in forms for v in values(t, "ga_client_id")}) == 1  # one browser
    styles = Counter(str(t.attributes["name"]) for p in persons for t in by_person[p] if "name" in t.attributes)
    assert any(any(c.isascii() and c.isalpha() for c in name) for name in styles)  # transliterated
    assert any(name.islower() for name in styles)


def test_every_form_and_crm_record_carries_a_name_in_a_realistic_form(stream: GeneratedStream) -> None:
    named = [t for t in stream.touches if t.type in (TouchType.FORM_SUBMIT, TouchType.CRM_STAGE)]
    assert all("name" in t.attributes for t in named)
    written = [(str(t.attributes["name"]), stream.names[stream.truth[t.event_id]]) for t in named]
    assert any(name == "" for name, _ in written)  # some leave it blank
    assert any(name and name == given.split()[0] for name, given in written)  # first name only
    assert any(name.split()[:2] == given.split()[::-1] for name, given in written)  # surname first
    assert any(len(name.split()) == 3 for name, _ in written)  # with a patronymic
    assert any(name and name == given.lower() for name, given in written)
    assert any(name in DIMINUTIVES.values() for name, _ in written)
    assert any(name.isascii() and name for name, _ in written)  # Latin letters


def test_render_name() -> None:
    assert render_name("Александр", "Петров", "Иванович", "latin") == "Aleksandr Petrov"
    assert render_name("Александр", "Петров", "Иванович", "diminutive") == "Саша"
    assert render_name("Александр", "Петров", "Иванович", "surname_first") == "Петров Александр"
    assert render_name("Александр", "Петров", "Иванович", "patronymic") == "Петров Александр Иванович"
    assert render_name("Артём", "Семёнов", "Олегович", "yo") == "Артем Семенов"
    assert render_name("Женя", "Иванова", "", "lower") == "женя иванова"
    with pytest.raises(ValueError, match="style"):
        render_name("Иван", "Иванов", "", "nickname")
