"""identity.names: name keys and their comparison as identity evidence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from identity.names import DIFFERENT, SAME, UNKNOWN, compare_names, name_key, touch_name

# (first name as typed, second name as typed, expected verdict)
PAIRS: list[tuple[str, str, int]] = [
    # case, spaces, punctuation, ё/е
    ("Иван Петров", "иван  петров", SAME),
    ("ИВАН ПЕТРОВ", "Иван, Петров!", SAME),
    ("Алёна", "Алена", SAME),
    ("Семён Фёдоров", "Семен Федоров", SAME),
    # common English nicknames (the Senzing truth set's Robert and Bob Smith)
    ("Robert Smith", "Bob Smith", SAME),
    ("William Jones", "Bill Jones", SAME),
    ("Elizabeth Ross", "Liz Ross", SAME),
    ("Robert Smith", "Boris Smith", DIFFERENT),
    ("Bob J Smith", "B Smith", SAME),
    # Latin -> Cyrillic, in the usual systems
    ("Aleksandr Petrov", "Александр Петров", SAME),
    ("Alexander", "Александр", SAME),
    ("Evgeniy", "Евгений", SAME),
    ("Yevgeny Ivanov", "Евгений Иванов", SAME),
    ("Yulia", "Юлия", SAME),
    ("Iuliia", "Юля", SAME),
    ("Natalya Ivanova", "Наталья Иванова", SAME),
    ("Xenia", "Ксения", SAME),
    ("Sergei Sokolovsky", "Сергей Соколовский", SAME),
    ("Tatiana", "Татьяна", SAME),
    ("Pyotr Tolstoy", "Пётр Толстой", SAME),
    ("Michail", "Михаил", SAME),
    # homoglyphs: Latin letters inside a Cyrillic word
    ("Ив\u0061н П\u0065тров", "Иван Петров", SAME),
    # diminutives, in both scripts
    ("Саша", "Александр", SAME),
    ("Саша", "Александра", SAME),
    ("Шура", "Александр", SAME),
    ("Саня Петров", "Alexander Petrov", SAME),
    ("Лёша", "Алексей", SAME),
    ("Lyosha", "Алексей", SAME),
    ("Дима", "Dmitry", SAME),
    ("Катя Иванова", "Екатерина Иванова", SAME),
    ("Наташа", "Наталия", SAME),
    ("Таня", "Tatyana", SAME),
    ("Маша", "Мария", SAME),
    ("Серёжа", "Sergey", SAME),
    ("Вова", "Владимир", SAME),
    ("Володя", "Вова", SAME),
    ("Тёма", "Артём", SAME),
    ("Гоша", "Георгий", SAME),
    ("Жора", "Гоша", SAME),
    ("Слава", "Вячеслав", SAME),
    ("Слава", "Ярослав", SAME),
    ("Ксюша", "Ксения", SAME),
    ("Света Иванова", "Светлана Иванова", SAME),
    ("Андрюша", "Андрей", SAME),
    # Женя is either gender; Евгений and Евгения are two people
    ("Женя", "Евгений", SAME),
    ("Женя", "Евгения", SAME),
    ("Евгений", "Евгения", DIFFERENT),
    ("Женя Петров", "Женя Петрова", DIFFERENT),
    ("Александр Петров", "Александра Петрова", DIFFERENT),
    ("Саша Петров", "Саша Петрова", DIFFERENT),
    # surname endings by gender: one stem
    ("Анна Петрова", "Anna Petrova", SAME),
    ("Соколовская Анна", "Анна Соколовская", SAME),
    ("Соколовский", "Соколовская", DIFFERENT),
    ("Петров", "Петрова", DIFFERENT),
    ("Лев Толстой", "Tolstoy Lev", SAME),
    # name order and patronymics
    ("Петров Иван", "Иван Петров", SAME),
    ("Петров Иван Сергеевич", "Иван Сергеевич Петров", SAME),
    ("Петров Иван Сергеевич", "Иван Петров", SAME),
    ("Петрова Анна Ивановна", "Ivanovna Anna Petrova", SAME),
    ("Петрова Анна Ивановна", "Anna Ivanovna Petrova", SAME),
    ("Иван Сергеевич Петров", "Иван Николаевич Петров", UNKNOWN),  # patronymics: a weak hint only
    ("Мария Ильинична", "Мария Ильинична Ульянова", SAME),
    # initials
    ("Петров И.", "Иван Петров", SAME),
    ("Петров И. С.", "Игорь Петров", SAME),
    ("И.С. Петров", "Иван Сергеевич Петров", SAME),
    ("Петров А.", "Иван Петров", DIFFERENT),
    ("Петров И.", "Иван", UNKNOWN),  # an initial alone is too little
    ("Иван П.", "Иван Петров", SAME),
    ("Ivan P.", "Иван Петров", SAME),
    ("Ivan P.", "Иван Сидоров", DIFFERENT),
    ("Petrov Y.", "Юрий Петров", SAME),
    ("Petrov I. S.", "Иван Николаевич Петров", UNKNOWN),
    # typos are not different people; different names are
    ("Алексндр", "Александр", SAME),
    ("Екатирина Смирнова", "Екатерина Смирнова", SAME),
    ("Ирна", "Ирина", SAME),
    ("Иван Петров", "Иван Петрв", SAME),
    ("Иван", "Ирина", DIFFERENT),
    ("Иван Петров", "Иван Сидоров", DIFFERENT),
    ("Маша", "Марина", DIFFERENT),
    ("Мадина", "Марина", DIFFERENT),  # real names one letter apart
    ("Руслан", "Руслана", DIFFERENT),
    ("Слава", "Иван", DIFFERENT),
    ("Дмитрий Волков", "Денис Волков", DIFFERENT),
    # related names: not clearly different
    ("Алёна", "Елена", UNKNOWN),
    ("Егор", "Георгий", UNKNOWN),
    ("Ксения", "Оксана", UNKNOWN),
    # too little overlap
    ("Петров", "Иван", UNKNOWN),
    ("Петров", "Иван Петров", UNKNOWN),
    ("Котик", "Зайка", UNKNOWN),
    ("Котик", "Иван Петров", UNKNOWN),
    ("Петрова", "Анна", UNKNOWN),
    # gender alone
    ("Иван", "Петрова", DIFFERENT),
    # names outside the table (the dictionary knows them)
    ("Рустам Хабибуллин", "Хабибуллин Рустам", SAME),
    ("Зульфия Хасанова", "Гульнара Хасанова", DIFFERENT),
    ("Вэй Ли", "Ли Вэй", SAME),
    # double names and surnames
    ("Анна-Мария Петрова", "Анна Петрова", SAME),
    ("Анна Римская-Корсакова", "Анна Корсакова", SAME),
]


@pytest.mark.parametrize(("first", "second", "expected"), PAIRS, ids=[f"{a}~{b}" for a, b, _ in PAIRS])
def test_pairs(first: str, second: str, expected: int) -> None:
    key_a, key_b = name_key(first), name_key(second)
    assert key_a is not None
    assert key_b is not None
    assert compare_names(key_a, key_b) == expected, (key_a, key_b)
    assert compare_names(key_b, key_a) == expected  # symmetric


def test_the_table_covers_every_kind_of_verdict() -> None:
    verdicts = [expected for _, _, expected in PAIRS]
    assert len(PAIRS) >= 60
    assert verdicts.count(SAME) >= 20
    assert verdicts.count(DIFFERENT) >= 15
    assert verdicts.count(UNKNOWN) >= 8


# Keys are stored in Redis: these exact spellings are the format's contract (see the module docstring).
KEYS = {
    "Петров Иван Сергеевич": "иван|петров|m|сергеевич",
    "Ivan Sergeevich Petrov": "иван|петров|m|сергеевич",
    "Женя Петрова": "евгения|петров|f",
    "Женя": "евгений||",
    "Саша": "александр||",
    "Sasha Petrov": "александр|петров|m",
    "Соколовская А.": "а.|соколовск|f",
    "Толстая": "|толст|f",
    "Слава": "слава||",
    "Анна Сергеевна": "анна||f|сергеевич",
    "Иван П.": "иван|п.|m",
    "И. С. Петров": "и.|петров|m|с.",
    "Котик": "||||котик",
    "Мамедов Рашид Ильхам оглы": "рашид|мамедов|m|ильхам",
    "г-жа Иванова": "|иванов|f",
}


@pytest.mark.parametrize(("raw", "key"), KEYS.items())
def test_key_format(raw: str, key: str) -> None:
    assert name_key(raw) == key


JUNK = [
    "",
    "   ",
    "-",
    "—",
    ".",
    "test",
    "Test Test",
    "тест",
    "ТЕСТ ТЕСТОВИЧ",
    "клиент",
    "Client",
    "имя",
    "name",
    "нет",
    "не указано",
    "аноним",
    "гость",
    "user",
    "Заявка с сайта",
    "qwerty",
    "ааааа",
    "А",
    "И. П.",
    "Сергеевич",
    "12345",
    "Иван 2",
    "ivan.petrov@mail.ru",
    "+7 (916) 123-45-67",
    "89161234567",
    "https://example.com",
    "Иван Петров " * 10,
]


@pytest.mark.parametrize("raw", JUNK)
def test_junk_is_not_a_name(raw: str) -> None:
    assert name_key(raw) is None


def test_placeholder_words_are_dropped_beside_a_real_name() -> None:
    assert name_key("Клиент Иван Петров") == name_key("Иван Петров") == "иван|петров|m"


def test_name_key_rejects_non_strings() -> None:
    assert name_key(None) is None  # type: ignore[arg-type]
    assert name_key(42) is None  # type: ignore[arg-type]


ALL_RAW = sorted({raw for a, b, _ in PAIRS for raw in (a, b)} | set(KEYS))


@pytest.mark.parametrize("raw", ALL_RAW)
def test_a_key_is_its_own_key_and_names_the_same_person(raw: str) -> None:
    key = name_key(raw)
    assert key is not None
    assert name_key(key) == key
    assert compare_names(key, key) == SAME
    assert key == key.lower()
    assert key.count("|") >= 2


def test_text_with_bars_that_is_not_a_key_is_read_as_a_name() -> None:
    assert name_key("Иван | Петров") == "иван|петров|m"
    assert name_key("иван|петров") == "иван|петров|m"  # two fields: words, not a key
    assert name_key("test|test|m") is None
    assert name_key("||m") is None


def test_keys_are_deterministic_across_processes() -> None:
    """Another interpreter, with another hash seed and cold caches, gives the same keys."""
    script = (
        "import json, sys; from identity.names import name_key; "
        "print(json.dumps([name_key(raw) for raw in json.load(sys.stdin)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(ALL_RAW),
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout) == [name_key(raw) for raw in ALL_RAW]


def test_touch_name_prefers_the_whole_name() -> None:
    assert touch_name({"name": " Иван Петров ", "full_name": "x", "first_name": "Пётр"}) == "Иван Петров"
    assert touch_name({"full_name": "Петров Иван", "fio": "x"}) == "Петров Иван"
    assert touch_name({"fio": "Петров Иван Сергеевич", "contact_name": "x"}) == "Петров Иван Сергеевич"
    assert touch_name({"contact_name": "Анна"}) == "Анна"


def test_touch_name_joins_the_parts() -> None:
    parts = {"first_name": "Иван", "last_name": "Петров", "middle_name": "Сергеевич"}
    assert touch_name(parts) == "Иван Сергеевич Петров"
    assert touch_name({"first_name": "Анна", "patronymic": "Ивановна", "last_name": "Петрова"}) == (
        "Анна Ивановна Петрова"
    )
    assert touch_name({"last_name": "Петров"}) == "Петров"
    assert touch_name({"first_name": "Иван", "last_name": 7}) == "Иван"
    assert name_key(touch_name(parts) or "") == "иван|петров|m|сергеевич"


def test_touch_name_takes_only_non_blank_strings() -> None:
    assert touch_name({}) is None
    assert touch_name({"name": 42, "phone": "+79161234567"}) is None
    assert touch_name({"name": "  ", "fio": None, "first_name": ""}) is None
    assert touch_name({"name": 42, "full_name": "Иван"}) == "Иван"  # a non-string falls through
    assert touch_name({"name": True, "first_name": "Анна"}) == "Анна"
