"""A realistic synthetic touch stream, for demos, tests and benchmarks. Seeded: the same call gives the same stream.

Each person has a Russian name, a mobile phone and an e-mail written in the variants people and systems
produce, one to three devices (GA client ids with a Metrica id), an interest in one or two residential
projects, and a path: site visits from ad channels, a form, calls through call tracking, and for some a
CRM contact with a deal moving through stages. Colleagues share an office switchboard, a few people type
junk contacts, some events are redelivered and some CRM events arrive late.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from identity import CrmInfo, Touch, TouchType, Utm
from identity.touch import AttributeValue

__all__ = ["GeneratedStream", "ad_spend", "generate"]

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
FIRST_M = ["Иван", "Алексей", "Сергей", "Дмитрий", "Андрей", "Михаил", "Никита", "Павел", "Артём", "Олег"]
FIRST_F = ["Анна", "Мария", "Екатерина", "Ольга", "Наталья", "Елена", "Татьяна", "Юлия", "Ирина", "Дарья"]
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


@dataclass
class _Person:
    index: int
    name: str
    phone: str  # 10 national digits
    email_login: str
    email_domain: str
    devices: list[tuple[str, str]]  # (ga client id, ym client id)
    projects: list[str]
    office: str | None
    crm_id: str | None


@dataclass
class GeneratedStream:
    touches: list[Touch]  # in arrival order: mostly by time, with redeliveries and late CRM events
    persons: int
    shared_office_phones: int
    redeliveries: int
    late: int
    truth: dict[str, int] = field(default_factory=dict)  # event id -> generated person


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
    login, domain = p.email_login, p.email_domain
    if domain == "gmail.com" and rng.random() < 0.3:
        login = login.replace(".", "") + "+site"
    if domain == "yandex.ru" and rng.random() < 0.5:
        domain, login = rng.choice(["ya.ru", "yandex.com", "yandex.ru"]), login.replace(".", "-")
    address = f"{login}@{domain}"
    return rng.choice([address, address.upper(), f" {address} ", f"{p.name} <{address}>"])


def _people(rng: random.Random, n: int) -> tuple[list[_Person], int]:
    offices = [f"495{rng.randint(1_000_000, 9_999_999)}" for _ in range(max(1, n // 60))]
    people = []
    for i in range(n):
        female = rng.random() < 0.5
        first = rng.choice(FIRST_F if female else FIRST_M)
        last = rng.choice(LAST) + ("а" if female else "")
        login = f"{first.lower().translate(LATIN)}.{last.lower().translate(LATIN)}{i}"
        devices = [
            (f"GA1.2.{rng.randint(10**8, 10**9 - 1)}.{1_700_000_000 + i * 7 + d}", str(17 * 10**17 + i * 10 + d))
            for d in range(rng.choice([1, 1, 2, 2, 3]))
        ]
        people.append(
            _Person(
                i,
                f"{first} {last}",
                f"9{rng.randint(10, 99)}{rng.randint(1_000_000, 9_999_999)}",
                login,
                rng.choice(["mail.ru", "yandex.ru", "gmail.com", "bk.ru", "list.ru", "inbox.ru"]),
                devices,
                rng.sample(PROJECTS, rng.choice([1, 1, 2])),
                rng.choice(offices) if rng.random() < 0.15 else None,
                f"amo-{100_000 + i}" if rng.random() < 0.4 else None,
            )
        )
    return people, len(offices)


def generate(persons: int = 2000, seed: int = 1) -> GeneratedStream:
    """About 7 touches per person over a month, as a touch stream would deliver them."""
    rng = random.Random(seed)
    people, offices = _people(rng, persons)
    timed: list[tuple[datetime, Touch, int]] = []
    serial = 0

    def add(
        person: _Person,
        moment: datetime,
        kind: TouchType,
        ids: list[tuple[str, str]],
        *,
        source: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        utm: Utm | None = None,
        crm: CrmInfo | None = None,
    ) -> None:
        nonlocal serial
        serial += 1
        touch = Touch(f"{source}-{serial}", kind, moment, source, tuple(ids), attributes or {}, utm, crm)
        timed.append((moment, touch, person.index))

    for p in people:
        moment = T0 + timedelta(minutes=rng.randint(0, 30 * 24 * 60))
        for _ in range(rng.randint(1, 4)):  # visits
            ga, ym = rng.choice(p.devices)
            project = rng.choice(p.projects)
            page = f"/{PROJECTS.index(project)}/plans"
            ids = [("ga_client_id", ga), ("ym_client_id", ym)]
            attributes = {"project": project, "page": page}
            add(p, moment, TouchType.SITE_VISIT, ids, source="site", attributes=attributes, utm=rng.choice(CHANNELS))
            moment += timedelta(hours=rng.uniform(1, 72))
        ga, _ = rng.choice(p.devices)
        email = rng.choice(JUNK_EMAILS) if rng.random() < 0.04 else _email_variant(rng, p)
        ids = [("ga_client_id", ga), ("phone", _phone_variant(rng, p.phone)), ("email", email)]
        attributes = {"name": p.name.split()[0], "project": rng.choice(p.projects)}
        add(p, moment, TouchType.FORM_SUBMIT, ids, source="site", attributes=attributes)
        for _ in range(rng.randint(0, 2)):  # calls, through call tracking: tied to the visit's device
            moment += timedelta(hours=rng.uniform(0.5, 48))
            phone = p.office if p.office and rng.random() < 0.5 else p.phone
            ids = [("phone", _phone_variant(rng, phone)), ("ga_client_id", rng.choice(p.devices)[0])]
            add(p, moment, TouchType.CALL, ids, source="calltouch", attributes={"duration_s": rng.randint(10, 900)})
        if p.crm_id:
            stages = STAGES[: rng.randint(2, len(STAGES))]
            if stages[-1] == "won" and rng.random() < 0.3:
                stages[-1] = "lost"
            for previous, stage in zip([None, *stages], stages, strict=False):
                moment += timedelta(days=rng.uniform(0.5, 5))
                ids = [
                    ("crm_contact_id", p.crm_id),
                    ("phone", _phone_variant(rng, p.phone)),
                    ("email", _email_variant(rng, p)),
                ]
                amount = float(rng.randint(6, 30) * 1_000_000)
                crm = CrmInfo(f"deal-{p.crm_id}", stage, previous, "sales", amount)
                add(p, moment, TouchType.CRM_STAGE, ids, source="amocrm", attributes={"name": p.name}, crm=crm)

    timed.sort(key=lambda item: (item[0], item[1].event_id))
    arrival = [(moment, touch) for moment, touch, _ in timed]
    late = 0
    for i, (moment, touch) in enumerate(arrival):  # the CRM syncs hourly: some stage changes arrive hours late
        if touch.type is TouchType.CRM_STAGE and rng.random() < 0.2:
            arrival[i] = (moment + timedelta(hours=rng.uniform(1, 6)), touch)
            late += 1
    arrival.sort(key=lambda item: item[0])
    touches = [touch for _, touch in arrival]
    redelivered = rng.sample(range(len(touches)), k=len(touches) // 100)
    for i in sorted(redelivered, reverse=True):  # at-least-once upstream: the same event again, a bit later
        touches.insert(min(len(touches), i + rng.randint(1, 50)), replace(touches[i]))
    truth = {touch.event_id: person for _, touch, person in timed}
    return GeneratedStream(touches, persons, offices, len(redelivered), late, truth)


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
