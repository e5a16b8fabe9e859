"""A realistic synthetic touch stream, for demos, tests and benchmarks. Seeded: the same call gives the same stream.

Each person has a Russian name (with a patronymic), a mobile phone and an e-mail written in the variants people
and systems produce, one to three devices (GA client ids with a Metrica id), an interest in one or two
residential projects, and a path: site visits from ad channels, a form, calls through call tracking, and for
some a CRM contact (``amocrm:<id>``) with a deal moving through stages. Every form and CRM record carries a name
the way people and managers write one (first name only, surname first, lower case, a diminutive, in Latin
letters, with a patronymic, ``е`` for ``ё``; some forms leave it blank). Colleagues share an office switchboard,
a few people type junk contacts, some events are redelivered and some CRM events arrive late.

Besides these ordinary persons, a share of the persons (:class:`Situations`, one option each) lives one of the
messy situations of real data, and the stream's metadata says which (:attr:`GeneratedStream.situations`):

* ``call_then_email_form``: a lead browses from one browser, calls through call tracking (their phone and the
  session's GA and Metrica ids) and later sends a form with only an e-mail, the same browser's ids and a name;
  never reaches the CRM.
* ``family_computer``: two persons of one household (one surname, different first names, their own phones and
  e-mails) each leave a form or call from one shared device.
* ``switchboard_browsers``: 3-6 colleagues whose calls come from their office switchboard (a Moscow or
  St Petersburg landline) through call tracking with each colleague's own browser; they give no personal
  identifier at all.
* ``info_mailbox``: 2-3 colleagues who each type the company's ``info@`` mailbox in forms, with their own name
  (and some their own mobile).
* ``home_landline``: a couple who both call from their home landline (St Petersburg or regional), each with
  their own name on a form or a CRM record, and their own devices and e-mails.
* ``crm_migration``: a client known in an old CRM (``dynamics:<id>``) and later in the new one
  (``amocrm:<id>``), both records with the same phone and e-mail: one person.
* ``erased_then_late``: a person who asks for erasure (an ``erase_request`` naming their phone, e-mail and CRM
  id) while some of their older touches are delivered after the erasure (they occurred before it).
* ``name_variants``: a person who writes their name differently on every form (``Саша``, ``Aleksandr Petrov``,
  ``Петров Александр``, ``е`` for ``ё``, lower case, with a patronymic), their phone on one form and their
  e-mail on another from one browser.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from identity import CrmInfo, Touch, TouchType, Utm
from identity.touch import AttributeValue

__all__ = ["ORDINARY", "SITUATIONS", "GeneratedStream", "Situations", "ad_spend", "generate", "render_name"]

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
FIRST_M = [
    "Иван", "Алексей", "Сергей", "Дмитрий", "Андрей", "Михаил", "Никита", "Павел", "Артём", "Олег", "Александр",
    "Евгений",
]  # fmt: skip
FIRST_F = [
    "Анна", "Мария", "Екатерина", "Ольга", "Наталья", "Елена", "Татьяна", "Юлия", "Ирина", "Дарья", "Александра",
    "Евгения",
]  # fmt: skip
LAST = [
    "Иванов",
    "Петров",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Соколов",
    "Лебедев",
    "Козлов",
    "Новиков",
    "Морозов",
    "Волков",
    "Зайцев",
    "Павлов",
    "Семёнов",
    "Голубев",
]
LATIN = str.maketrans(
    {
        "а": "a",
        "б": "b",
        "в": "v",
        "г": "g",
        "д": "d",
        "е": "e",
        "ё": "e",
        "ж": "zh",
        "з": "z",
        "и": "i",
        "й": "y",
        "к": "k",
        "л": "l",
        "м": "m",
        "н": "n",
        "о": "o",
        "п": "p",
        "р": "r",
        "с": "s",
        "т": "t",
        "у": "u",
        "ф": "f",
        "х": "h",
        "ц": "ts",
        "ч": "ch",
        "ш": "sh",
        "щ": "sch",
        "ы": "y",
        "э": "e",
        "ю": "yu",
        "я": "ya",
        "ь": "",
        "ъ": "",
    }
)
PROJECTS = ["Северный квартал", "Речной парк", "Лесная поляна", "Центральный"]
CHANNELS = [
    Utm("yandex", "cpc", "brand"),
    Utm("yandex", "cpc", "generic"),
    Utm("google", "organic"),
    Utm("vk", "social", "autumn"),
    Utm("telegram", "cpm", "channels"),
    None,
]
STAGES = ["new", "qualified", "meeting", "contract", "won"]
JUNK_EMAILS = ["test@test.ru", "no@mail.ru", "asd@asd.ru"]


#: Everyday forms of first names (a person types ``Саша`` on one form and ``Александр`` on another).
DIMINUTIVES: Final = {
    "Иван": "Ваня", "Алексей": "Лёша", "Сергей": "Серёжа", "Дмитрий": "Дима", "Андрей": "Андрюша",
    "Михаил": "Миша", "Павел": "Паша", "Артём": "Тёма", "Александр": "Саша", "Евгений": "Женя",
    "Анна": "Аня", "Мария": "Маша", "Екатерина": "Катя", "Ольга": "Оля", "Наталья": "Наташа", "Елена": "Лена",
    "Татьяна": "Таня", "Юлия": "Юля", "Ирина": "Ира", "Дарья": "Даша", "Александра": "Саша", "Евгения": "Женя",
}  # fmt: skip
#: Patronymics, (male, female).
PATRONYMICS: Final = [
    ("Иванович", "Ивановна"), ("Сергеевич", "Сергеевна"), ("Александрович", "Александровна"),
    ("Владимирович", "Владимировна"), ("Николаевич", "Николаевна"), ("Дмитриевич", "Дмитриевна"),
    ("Андреевич", "Андреевна"), ("Михайлович", "Михайловна"), ("Викторович", "Викторовна"), ("Юрьевич", "Юрьевна"),
    ("Евгеньевич", "Евгеньевна"), ("Алексеевич", "Алексеевна"), ("Олегович", "Олеговна"), ("Петрович", "Петровна"),
    ("Фёдорович", "Фёдоровна"),
]  # fmt: skip
#: Area codes of office switchboards (Moscow, St Petersburg) and of home landlines (St Petersburg and regions).
OFFICE_CODES: Final = ("495", "499", "812")
HOME_CODES: Final = ("812", "343", "383", "846", "861", "863", "843", "831")
COMPANIES: Final = ["vektor", "monolit", "stroyalyans", "tehnoprom", "severstroy", "alfa-grupp", "megapolis", "region"]

#: How a name is written: the styles :func:`render_name` knows.
NAME_STYLES: Final = ("first", "full", "surname_first", "patronymic", "diminutive", "latin", "lower", "yo", "blank")
#: A form's name: how often each style is typed (``е`` for ``ё`` is applied on top, half the time).
_FORM_STYLES: Final = {
    "first": 36, "full": 24, "surname_first": 6, "patronymic": 4, "diminutive": 7, "latin": 3, "lower": 12, "blank": 8,
}  # fmt: skip
#: A CRM record's name, as managers write it.
_CRM_STYLES: Final = {"full": 40, "patronymic": 35, "surname_first": 15, "first": 8, "latin": 2}
#: The styles a ``name_variants`` person goes through, one per form or record.
_VARIANT_STYLES: Final = ("diminutive", "latin", "surname_first", "yo", "lower", "patronymic")

ORDINARY: Final = "ordinary"
SITUATIONS: Final = (
    "call_then_email_form",
    "family_computer",
    "switchboard_browsers",
    "info_mailbox",
    "home_landline",
    "crm_migration",
    "erased_then_late",
    "name_variants",
)
#: Persons per group of a situation that happens to several people together (smallest, largest).
_GROUP_SIZES: Final = {"family_computer": (2, 2), "switchboard_browsers": (3, 6), "info_mailbox": (2, 3),
                       "home_landline": (2, 2)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Situations:
    """The share of the generated persons that lives each situation (see the module doc); the rest are ordinary.

    A share of 0.1 of 3,000 persons is 300 persons: 150 households for ``family_computer``, about 67 offices
    for ``switchboard_browsers``. Every person leaves a contact, so a share of persons is a share of leads.
    """

    call_then_email_form: float = 0.10
    family_computer: float = 0.04
    switchboard_browsers: float = 0.04
    info_mailbox: float = 0.02
    home_landline: float = 0.03
    crm_migration: float = 0.03
    erased_then_late: float = 0.01
    name_variants: float = 0.05

    def __post_init__(self) -> None:
        for name, share in self.shares().items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the share of {name} must be 0-1, got {share}")
        if sum(self.shares().values()) > 1.0 + 1e-9:
            raise ValueError(f"the situations' shares add up to more than 1: {sum(self.shares().values()):.3f}")

    @classmethod
    def none(cls) -> Situations:
        """Only ordinary persons."""
        return cls(**dict.fromkeys(SITUATIONS, 0.0))

    def shares(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def with_shares(self, **shares: float) -> Situations:
        """These shares changed (``with_shares(call_then_email_form=1 / 3)``), the others kept."""
        unknown = shares.keys() - set(SITUATIONS)
        if unknown:
            raise ValueError(f"unknown situations {sorted(unknown)}; known: {', '.join(SITUATIONS)}")
        return replace(self, **shares)


@dataclass
class _Person:
    index: int
    first: str
    last: str
    patronymic: str
    female: bool
    phone: str | None  # own mobile, 10 national digits
    email_login: str | None
    email_domain: str
    devices: list[tuple[str, str]]  # (ga client id, ym client id)
    projects: list[str]
    office: str | None = None  # an ordinary person's office switchboard, 10 digits
    crm_id: str | None = None
    situation: str = ORDINARY
    group: int | None = None

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class GeneratedStream:
    touches: list[Touch]  # in arrival order: mostly by time, with redeliveries and late CRM events
    persons: int
    shared_office_phones: int
    redeliveries: int
    late: int
    truth: dict[str, int] = field(default_factory=dict)  # event id -> generated person (erase requests excluded)
    #: person -> its situation (:data:`SITUATIONS`, or :data:`ORDINARY`)
    situations: dict[int, str] = field(default_factory=dict)
    #: person -> its household or company, for persons of a situation that several people share
    groups: dict[int, int] = field(default_factory=dict)
    #: person -> the name they were given, "Имя Фамилия" (the truth for "do these names differ")
    names: dict[int, str] = field(default_factory=dict)
    #: erase request event id -> the person who asked
    erasures: dict[str, int] = field(default_factory=dict)
    #: events delivered after their person's erasure although they occurred before it
    late_after_erasure: set[str] = field(default_factory=set)

    def situation_of(self, event_id: str) -> str | None:
        """The situation of an event's person (an erase request's too), None for an unknown event."""
        person = self.truth.get(event_id, self.erasures.get(event_id))
        return None if person is None else self.situations.get(person, ORDINARY)


def _phone_variant(rng: random.Random, d: str) -> str:
    return rng.choice(
        [
            f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}",
            f"+7 {d[:3]} {d[3:6]} {d[6:8]} {d[8:]}",
            f"7{d}",
            d,
            f"8-{d[:3]}-{d[3:6]}-{d[6:8]}-{d[8:]}",
            f"+7({d[:3]}){d[3:]}",
        ]
    )


def _email_variant(rng: random.Random, p: _Person) -> str:
    login, domain = p.email_login or "", p.email_domain
    if domain == "gmail.com" and rng.random() < 0.3:
        login = login.replace(".", "") + "+site"
    if domain == "yandex.ru" and rng.random() < 0.5:
        domain, login = rng.choice(["ya.ru", "yandex.com", "yandex.ru"]), login.replace(".", "-")
    address = f"{login}@{domain}"
    return rng.choice([address, address.upper(), f" {address} ", f"{p.name} <{address}>"])


def _latin(text: str) -> str:
    return " ".join(word.lower().translate(LATIN).capitalize() for word in text.split())


def render_name(first: str, last: str, patronymic: str, style: str) -> str:
    """A name written in one of :data:`NAME_STYLES` (``yo``: the full name with ``е`` for ``ё``)."""
    if style == "first":
        return first
    if style == "full":
        return f"{first} {last}"
    if style == "surname_first":
        return f"{last} {first}"
    if style == "patronymic":
        return f"{last} {first} {patronymic}"
    if style == "diminutive":
        return DIMINUTIVES.get(first, first)
    if style == "latin":
        return _latin(f"{first} {last}")
    if style == "lower":
        return f"{first} {last}".lower()
    if style == "yo":
        return f"{first} {last}".replace("ё", "е").replace("Ё", "Е")
    if style == "blank":
        return ""
    raise ValueError(f"unknown name style {style!r}")


def _styled(rng: random.Random, p: _Person, weights: Mapping[str, int]) -> str:
    style = rng.choices(list(weights), list(weights.values()))[0]
    name = render_name(p.first, p.last, p.patronymic, style)
    return name.replace("ё", "е") if rng.random() < 0.5 else name  # most people never type ё


def _landline(rng: random.Random, codes: Sequence[str]) -> str:
    return f"{rng.choice(codes)}{rng.randint(2_000_000, 9_999_999)}"


class _Cast:
    """Makes persons: names, contacts and devices, each derived from the person's index where it must be unique."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.people: list[_Person] = []

    def person(
        self,
        situation: str,
        *,
        female: bool | None = None,
        surname: str | None = None,
        taken: Sequence[_Person] = (),
        mobile: bool = True,
        email: bool = True,
        devices: int | None = None,
        diminutive: bool = False,
    ) -> _Person:
        """A new person; ``taken``: persons whose first name (same surname) or full name (else) it must not have."""
        rng, i = self.rng, len(self.people)
        female = rng.random() < 0.5 if female is None else female
        while True:
            pool = FIRST_F if female else FIRST_M
            first = rng.choice([f for f in pool if f in DIMINUTIVES] if diminutive else pool)
            last = (surname or rng.choice(LAST)) + ("а" if female else "")
            if all(first != o.first and (surname or f"{first} {last}" != o.name) for o in taken):
                break
        patronymic = rng.choice(PATRONYMICS)[1 if female else 0]
        login = f"{first.lower().translate(LATIN)}.{last.lower().translate(LATIN)}{i}"
        count = devices if devices is not None else rng.choice([1, 1, 2, 2, 3])
        person = _Person(
            i,
            first,
            last,
            patronymic,
            female,
            f"9{rng.randint(10, 99)}{rng.randint(1_000_000, 9_999_999)}" if mobile else None,
            login if email else None,
            rng.choice(["mail.ru", "yandex.ru", "gmail.com", "bk.ru", "list.ru", "inbox.ru"]),
            [_device(rng, i, d) for d in range(count)],
            rng.sample(PROJECTS, rng.choice([1, 1, 2])),
            situation=situation,
        )
        self.people.append(person)
        return person


def _device(rng: random.Random, i: int, d: int) -> tuple[str, str]:
    """Device ``d`` (0-6) of person ``i``: a GA client id and a Metrica id, unique by (i, d)."""
    return f"GA1.2.{rng.randint(10**8, 10**9 - 1)}.{1_700_000_000 + i * 7 + d}", str(17 * 10**17 + i * 10 + d)


def _casting(rng: random.Random, persons: int, plan: Situations) -> list[tuple[str, int]]:
    """(situation, group size) for every group of persons, situations first, adding up to ``persons``."""
    slots: list[tuple[str, int]] = []
    left = persons
    for name, share in plan.shares().items():
        want = min(left, round(share * persons))
        low, high = _GROUP_SIZES.get(name, (1, 1))
        while want >= low:
            size = min(rng.randint(low, high), want)
            slots.append((name, size))
            want, left = want - size, left - size
    return slots + [(ORDINARY, 1)] * left


class _Writer:
    """Collects touches with their person, in occurrence order once sorted."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.timed: list[tuple[datetime, Touch, int]] = []
        self.serial = 0
        self.erasures: dict[int, Touch] = {}

    def add(
        self,
        person: _Person,
        moment: datetime,
        kind: TouchType,
        ids: list[tuple[str, str]],
        *,
        source: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        utm: Utm | None = None,
        crm: CrmInfo | None = None,
    ) -> Touch:
        self.serial += 1
        touch = Touch(f"{source}-{self.serial}", kind, moment, source, tuple(ids), attributes or {}, utm, crm)
        self.timed.append((moment, touch, person.index))
        return touch

    def visits(self, p: _Person, moment: datetime, devices: Sequence[tuple[str, str]], count: int) -> datetime:
        rng = self.rng
        for _ in range(count):
            ga, ym = rng.choice(devices)
            project = rng.choice(p.projects)
            attributes = {"project": project, "page": f"/{PROJECTS.index(project)}/plans"}
            ids = [("ga_client_id", ga), ("ym_client_id", ym)]
            self.add(
                p, moment, TouchType.SITE_VISIT, ids, source="site", attributes=attributes, utm=rng.choice(CHANNELS)
            )
            moment += timedelta(hours=rng.uniform(1, 72))
        return moment

    def form(self, p: _Person, moment: datetime, ids: list[tuple[str, str]], name: str) -> None:
        attributes = {"name": name, "project": self.rng.choice(p.projects)}
        self.add(p, moment, TouchType.FORM_SUBMIT, ids, source="site", attributes=attributes)

    def call(self, p: _Person, moment: datetime, phone: str, device: tuple[str, str], *, ym: bool = True) -> None:
        """A call through call tracking: the caller id and the client ids of the session it was shown to."""
        rng = self.rng
        ids = [("phone", _phone_variant(rng, phone)), ("ga_client_id", device[0])]
        if ym:
            ids.append(("ym_client_id", device[1]))
        self.add(p, moment, TouchType.CALL, ids, source="calltouch", attributes={"duration_s": rng.randint(10, 900)})

    def crm(
        self, p: _Person, moment: datetime, crm_id: str, contacts: list[tuple[str, str]], *, stages: int
    ) -> datetime:
        """A deal moving through ``stages`` stages, each change a CRM event with the contact's data and name."""
        rng = self.rng
        names = STAGES[:stages]
        if names[-1] == "won" and rng.random() < 0.3:
            names[-1] = "lost"
        system = crm_id.partition(":")[0]
        amount = float(rng.randint(6, 30) * 1_000_000)
        name = _styled(rng, p, _CRM_STYLES)  # a manager types the name once; each stage change repeats it
        for previous, stage in zip([None, *names], names, strict=False):
            moment += timedelta(days=rng.uniform(0.5, 5))
            ids = [("crm_contact_id", crm_id), *contacts]
            crm = CrmInfo(f"deal-{crm_id}", stage, previous, "sales", amount)
            self.add(p, moment, TouchType.CRM_STAGE, ids, source=system, attributes={"name": name}, crm=crm)
        return moment

    def contacts(self, p: _Person, phone: str | None = None) -> list[tuple[str, str]]:
        """A CRM record's phone and e-mail (``phone``: another than the person's mobile), as typed this time."""
        rng = self.rng
        out = []
        if phone or p.phone:
            out.append(("phone", _phone_variant(rng, phone or p.phone or "")))
        if p.email_login:
            out.append(("email", _email_variant(rng, p)))
        return out


def _start(rng: random.Random) -> datetime:
    return T0 + timedelta(minutes=rng.randint(0, 30 * 24 * 60))


def _ordinary(w: _Writer, p: _Person, moment: datetime) -> datetime:
    """Visits, a form with phone and e-mail, calls (some from the office), and for some a deal in the CRM."""
    rng = w.rng
    moment = w.visits(p, moment, p.devices, rng.randint(1, 4))
    ga, _ = rng.choice(p.devices)
    email = rng.choice(JUNK_EMAILS) if rng.random() < 0.04 else _email_variant(rng, p)
    w.form(p, moment, [("ga_client_id", ga), ("phone", _phone_variant(rng, p.phone or "")), ("email", email)],
           _styled(rng, p, _FORM_STYLES))  # fmt: skip
    for _ in range(rng.randint(0, 2)):  # calls, through call tracking: tied to the visit's device
        moment += timedelta(hours=rng.uniform(0.5, 48))
        phone = p.office if p.office and rng.random() < 0.5 else p.phone
        w.call(p, moment, phone or "", rng.choice(p.devices), ym=False)
    if p.crm_id:
        moment = w.crm(p, moment, p.crm_id, w.contacts(p), stages=rng.randint(2, len(STAGES)))
    return moment


def _call_then_email_form(w: _Writer, p: _Person, moment: datetime) -> None:
    rng = w.rng
    browser = p.devices[0]
    moment = w.visits(p, moment, [browser], rng.randint(1, 3))
    w.call(p, moment, p.phone or "", browser)
    moment += timedelta(hours=rng.uniform(2, 96))
    ids = [("email", _email_variant(rng, p)), ("ga_client_id", browser[0]), ("ym_client_id", browser[1])]
    w.form(p, moment, ids, _styled(rng, p, {k: v for k, v in _FORM_STYLES.items() if k != "blank"}))
    if rng.random() < 0.5:
        w.visits(p, moment + timedelta(hours=rng.uniform(1, 72)), [browser], 1)


def _family_computer(w: _Writer, family: list[_Person], moment: datetime) -> None:
    rng = w.rng
    shared = _device(rng, family[0].index, 5)
    for p in family:
        at = moment + timedelta(hours=rng.uniform(0, 240))
        at = w.visits(p, at, p.devices, rng.randint(0, 2))
        at = w.visits(p, at, [shared], rng.randint(1, 2))
        if rng.random() < 0.7:
            ids = [("ga_client_id", shared[0]), ("phone", _phone_variant(rng, p.phone or "")),
                   ("email", _email_variant(rng, p))]  # fmt: skip
            w.form(p, at, ids, _styled(rng, p, {k: v for k, v in _FORM_STYLES.items() if k != "blank"}))
        else:
            w.call(p, at, p.phone or "", shared)
        if rng.random() < 0.5:  # later, from their own phone's browser
            at += timedelta(hours=rng.uniform(1, 72))
            w.call(p, at, p.phone or "", p.devices[0])
        if p.crm_id:
            w.crm(p, at, p.crm_id, w.contacts(p), stages=rng.randint(2, len(STAGES)))


def _switchboard_browsers(w: _Writer, colleagues: list[_Person], moment: datetime) -> None:
    rng = w.rng
    switchboard = _landline(rng, OFFICE_CODES)
    for p in colleagues:
        at = w.visits(p, moment + timedelta(hours=rng.uniform(0, 240)), p.devices, rng.randint(1, 4))
        for _ in range(rng.randint(1, 2)):
            w.call(p, at, switchboard, p.devices[0])
            at += timedelta(hours=rng.uniform(1, 96))
        if rng.random() < 0.5:
            w.visits(p, at, p.devices, 1)


def _info_mailbox(w: _Writer, colleagues: list[_Person], moment: datetime, group: int) -> None:
    rng = w.rng
    mailbox = f"info@{rng.choice(COMPANIES)}{group}.ru"
    for p in colleagues:
        at = w.visits(p, moment + timedelta(hours=rng.uniform(0, 240)), p.devices, rng.randint(1, 3))
        typed = rng.choice([mailbox, mailbox.upper(), f" {mailbox} ", mailbox.capitalize()])
        ids = [("ga_client_id", p.devices[0][0]), ("email", typed)]
        if p.phone:
            ids.append(("phone", _phone_variant(rng, p.phone)))
        w.form(p, at, ids, _styled(rng, p, {k: v for k, v in _FORM_STYLES.items() if k != "blank"}))
        if p.phone and rng.random() < 0.4:
            w.call(p, at + timedelta(hours=rng.uniform(1, 72)), p.phone, p.devices[0])


def _home_landline(w: _Writer, couple: list[_Person], moment: datetime) -> None:
    rng = w.rng
    home = _landline(rng, HOME_CODES)
    for n, p in enumerate(couple):
        at = w.visits(p, moment + timedelta(hours=rng.uniform(0, 240)), p.devices, rng.randint(1, 3))
        w.call(p, at, home, rng.choice(p.devices))
        at += timedelta(hours=rng.uniform(1, 72))
        if n == 0 or rng.random() < 0.5:
            ids = [("ga_client_id", p.devices[0][0]), ("phone", _phone_variant(rng, home)),
                   ("email", _email_variant(rng, p))]  # fmt: skip
            w.form(p, at, ids, _styled(rng, p, {k: v for k, v in _FORM_STYLES.items() if k != "blank"}))
        else:
            w.crm(p, at, f"amocrm:{100_000 + p.index}", w.contacts(p, home), stages=rng.randint(2, len(STAGES)))


def _crm_migration(w: _Writer, p: _Person, moment: datetime) -> None:
    rng = w.rng
    moment = w.crm(p, moment - timedelta(days=10), f"dynamics:{50_000 + p.index}", w.contacts(p), stages=2)
    moment = w.visits(p, moment + timedelta(days=rng.uniform(1, 5)), p.devices, rng.randint(1, 3))
    ga, _ = rng.choice(p.devices)
    ids = [("ga_client_id", ga), ("phone", _phone_variant(rng, p.phone or "")), ("email", _email_variant(rng, p))]
    w.form(p, moment, ids, _styled(rng, p, _FORM_STYLES))
    w.crm(p, moment, f"amocrm:{100_000 + p.index}", w.contacts(p), stages=rng.randint(2, len(STAGES)))


def _erased_then_late(w: _Writer, p: _Person, moment: datetime) -> None:
    rng = w.rng
    moment = _ordinary(w, p, moment) + timedelta(hours=rng.uniform(1, 72))
    ids = [("phone", _phone_variant(rng, p.phone or "")), ("email", _email_variant(rng, p))]
    if p.crm_id:
        ids.insert(0, ("crm_contact_id", p.crm_id))
    w.erasures[p.index] = w.add(p, moment, TouchType.ERASE_REQUEST, ids, source="privacy")


def _name_variants(w: _Writer, p: _Person, moment: datetime) -> None:
    rng = w.rng
    full = f"{p.first} {p.last}"
    styles = [s for s in _VARIANT_STYLES if s != "yo" or "ё" in full]
    chosen = rng.sample(styles, 3)
    browser = p.devices[0]
    moment = w.visits(p, moment, p.devices, rng.randint(1, 3))
    w.form(p, moment, [("ga_client_id", browser[0]), ("phone", _phone_variant(rng, p.phone or ""))],
           render_name(p.first, p.last, p.patronymic, chosen[0]))  # fmt: skip
    moment += timedelta(hours=rng.uniform(2, 120))
    w.form(p, moment, [("ga_client_id", browser[0]), ("email", _email_variant(rng, p))],
           render_name(p.first, p.last, p.patronymic, chosen[1]))  # fmt: skip
    if p.crm_id:
        moment += timedelta(days=rng.uniform(0.5, 5))
        ids = [("crm_contact_id", p.crm_id), *w.contacts(p)]
        crm = CrmInfo(f"deal-{p.crm_id}", "new", None, "sales", float(rng.randint(6, 30) * 1_000_000))
        name = render_name(p.first, p.last, p.patronymic, chosen[2])
        w.add(p, moment, TouchType.CRM_STAGE, ids, source="amocrm", attributes={"name": name}, crm=crm)


def generate(persons: int = 2000, seed: int = 1, situations: Situations | None = None) -> GeneratedStream:
    """About 6 touches per person over a month, as a touch stream would deliver them.

    ``situations``: the share of persons living each messy situation (default :class:`Situations`'s realistic
    shares; :meth:`Situations.none` for ordinary persons only).
    """
    rng = random.Random(seed)
    plan = situations if situations is not None else Situations()
    cast, w = _Cast(rng), _Writer(rng)
    offices = [f"495{rng.randint(1_000_000, 9_999_999)}" for _ in range(max(1, persons // 60))]
    for number, (situation, size) in enumerate(_casting(rng, persons, plan)):
        moment = _start(rng)
        if situation == ORDINARY:
            p = cast.person(situation)
            p.office = rng.choice(offices) if rng.random() < 0.15 else None
            p.crm_id = f"amocrm:{100_000 + p.index}" if rng.random() < 0.4 else None
            _ordinary(w, p, moment)
        elif situation in ("family_computer", "home_landline"):
            surname, members = rng.choice(LAST), list[_Person]()
            for k in range(size):
                female = k == 1 if rng.random() < 0.8 else None  # mostly a couple, else a parent and a grown child
                members.append(cast.person(situation, female=female, surname=surname, taken=members))
            for p in members:
                p.group = number
                if situation == "home_landline":
                    p.phone = None  # they call from home
                elif rng.random() < 0.3:
                    p.crm_id = f"amocrm:{100_000 + p.index}"
            if situation == "family_computer":
                _family_computer(w, members, moment)
            else:
                _home_landline(w, members, moment)
        elif situation in ("switchboard_browsers", "info_mailbox"):
            members = []
            for _ in range(size):
                if situation == "switchboard_browsers":
                    members.append(cast.person(situation, taken=members, mobile=False, email=False, devices=1))
                else:
                    members.append(cast.person(situation, taken=members, mobile=rng.random() < 0.5, email=False))
            for p in members:
                p.group = number
            if situation == "switchboard_browsers":
                _switchboard_browsers(w, members, moment)
            else:
                _info_mailbox(w, members, moment, number)
        elif situation == "call_then_email_form":
            _call_then_email_form(w, cast.person(situation, devices=1), moment)
        elif situation == "crm_migration":
            _crm_migration(w, cast.person(situation), moment)
        elif situation == "erased_then_late":
            p = cast.person(situation)
            p.crm_id = f"amocrm:{100_000 + p.index}" if rng.random() < 0.4 else None
            _erased_then_late(w, p, moment)
        else:  # name_variants
            p = cast.person(situation, diminutive=True)
            p.crm_id = f"amocrm:{100_000 + p.index}" if rng.random() < 0.5 else None
            _name_variants(w, p, moment)

    timed = w.timed
    timed.sort(key=lambda item: (item[0], item[1].event_id))
    person_of = {touch.event_id: person for _, touch, person in timed}
    arrival = [(moment, touch) for moment, touch, _ in timed]
    late = 0
    for i, (moment, touch) in enumerate(arrival):  # the CRM syncs hourly: some stage changes arrive hours late
        if touch.type is TouchType.CRM_STAGE and rng.random() < 0.2:
            arrival[i] = (moment + timedelta(hours=rng.uniform(1, 6)), touch)
            late += 1
    for person, request in sorted(w.erasures.items()):  # some older touches reach us only after the erasure
        own = [i for i, (_, t) in enumerate(arrival) if person_of[t.event_id] == person and t is not request]
        for i in rng.sample(own, min(len(own), rng.randint(1, 3))):
            arrival[i] = (request.occurred_at + timedelta(minutes=rng.uniform(5, 12 * 60)), arrival[i][1])
    arrival.sort(key=lambda item: item[0])
    touches = [touch for _, touch in arrival]
    redelivered = rng.sample(range(len(touches)), k=len(touches) // 100)
    for i in sorted(redelivered, reverse=True):  # at-least-once upstream: the same event again, a bit later
        touches.insert(min(len(touches), i + rng.randint(1, 50)), replace(touches[i]))
    erasures = {request.event_id: person for person, request in w.erasures.items()}
    truth = {touch.event_id: person for _, touch, person in timed if touch.event_id not in erasures}
    return GeneratedStream(
        touches,
        persons,
        len(offices),
        len(redelivered),
        late,
        truth,
        situations={p.index: p.situation for p in cast.people},
        groups={p.index: p.group for p in cast.people if p.group is not None},
        names={p.index: p.name for p in cast.people},
        erasures=erasures,
        late_after_erasure=_late_after_erasure(touches, truth, erasures),
    )


def _late_after_erasure(touches: Sequence[Touch], truth: Mapping[str, int], erasures: Mapping[str, int]) -> set[str]:
    erased_at: dict[int, Touch] = {}
    out: set[str] = set()
    for touch in touches:
        person = truth.get(touch.event_id)
        if touch.event_id in erasures:
            erased_at.setdefault(erasures[touch.event_id], touch)
        elif person in erased_at and touch.occurred_at < erased_at[person].occurred_at:
            out.add(touch.event_id)
    return out


def ad_spend(stream: GeneratedStream, seed: int = 1, per_lead: float = 12_000.0) -> list[dict[str, Any]]:
    """``ad_spend`` messages for the paid channels of a generated stream, one per channel and day.

    Each paid channel costs about ``per_lead`` per visit it brought that day, give or take 40%.
    """
    rng = random.Random(seed)
    paid = {(u.source, u.medium, u.campaign) for u in CHANNELS if u is not None and u.medium != "organic"}
    visits: dict[tuple[Any, ...], int] = {}
    for touch in stream.touches:
        utm = touch.utm
        if touch.type is TouchType.SITE_VISIT and utm is not None and (utm.source, utm.medium, utm.campaign) in paid:
            key = (touch.occurred_at.date(), utm.source, utm.medium, utm.campaign)
            visits[key] = visits.get(key, 0) + 1
    return [
        {
            "type": "ad_spend",
            "date": day.isoformat(),
            "source": source,
            "medium": medium,
            "campaign": campaign,
            "cost": round(n * per_lead * rng.uniform(0.6, 1.4) / 7, 2),  # about one visit in 7 becomes a lead
            "currency": "RUB",
            "reported_at": f"{(day + timedelta(days=1)).isoformat()}T06:00:00+03:00",
        }
        for (day, source, medium, campaign), n in sorted(visits.items())
    ]
