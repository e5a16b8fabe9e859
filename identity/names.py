"""Person names as identity evidence: raw text -> a short canonical key, and a comparison of two keys.

A name typed into a web form or a CRM card is weak evidence on its own, but it is good at one thing the
engine needs: telling that two clusters of identifiers seen beside one phone, e-mail or device belong to two
*different* people ("Иван Петров" and "Ирина Петрова" sharing a family phone). :func:`name_key` turns the
text into a canonical key that is stored inside evidence records; :func:`compare_names` compares two keys and
answers :data:`SAME` (plausibly one person), :data:`DIFFERENT` (clearly two people) or :data:`UNKNOWN`.

**Key format.** Plain lowercase text, ``given|surname|gender`` with two optional trailing fields,
``given|surname|gender|patronymic|other`` (empty trailing optional fields are dropped; the first three
fields are always there, so every key holds a ``|``). All name text is Cyrillic, with ``ё`` written ``е``:

* ``given``: the full form of the given name in the person's gender (``александра``), diminutives
  resolved (Саша, Шура, Sasha -> ``александр``/``александра``); when the gender is not known, the family's
  first form (``евгений`` for a bare "Женя", with an empty gender); a diminutive shared by several names
  stays as itself (``слава``: Вячеслав, Ярослав, Станислав, ...); a name not in the table stays as typed
  (transliterated when typed in Latin); an initial is a letter and a dot (``и.``; a Latin initial keeps its
  Latin letter, ``y.``, since it may stand for several Cyrillic ones).
* ``surname``: one stem for both genders: ``петров`` for Петров and Петрова, ``соколовск`` for
  Соколовский and Соколовская, ``толст`` for Толстой and Толстая; ``п.`` for a surname initial.
* ``gender``: ``m``, ``f`` or empty, from the given name where it tells, else the patronymic, else the
  surname ending (-ова, -ская, ...), else an honorific (г-жа, Mr).
* ``patronymic``: its masculine form (Сергеевна -> ``сергеевич``), or an initial; a weak hint only.
* ``other``: words whose role could not be told (neither a table or dictionary given name nor a surname
  pattern), sorted and space-separated: "Котик" -> ``||||котик``.

Examples: "Петров Иван Сергеевич" and "Ivan Sergeevich Petrov" -> ``иван|петров|m|сергеевич``;
"Женя Петрова" -> ``евгения|петров|f``; "Саша" -> ``александр||``; "Соколовская А." ->
``а.|соколовск|f``. Word order does not matter (Фамилия Имя Отчество or Имя Отчество Фамилия); the given
name is the table or dictionary name, or the word right before a patronymic. Junk gives ``None``: empty
text, digits, an e-mail or URL, text over :data:`MAX_NAME_LENGTH` characters, placeholders ("test", "тест",
"клиент", "имя", "-", "нет", "гость", ...), single letters only. ``name_key`` of a key is that key.

**Comparison.** Words are compared on a coarse spelling that transliteration variants share (ь, ъ, й/и,
ы/и, э/е, я/иа, ю/иу, doubled letters). Given names agree when they share a family in the diminutive table
(Саша ~ Александр ~ Шура ~ Alexander), when one is an initial of the other, or, if one is not a table name
and may be a misspelt one, when they are a typo apart (one edit, or two from 9 letters, the same first
letter, at least 4 letters: Алексндр ~ Александр, Ирна ~ Ирина). A dictionary name shorter than 7 letters
is taken as a name of its own, not a typo (Мадина is not Марина). Two table names of different families
differ (Иван vs Ирина), except a few related pairs, which give UNKNOWN (Алёна/Елена, Егор/Георгий, ...).
Surnames agree on equal stems, a typo apart (from 4 letters), an initial, or one part of a double surname.
Then: given names that differ, surnames that differ, or genders that differ (Евгений vs Евгения; Саша
Петров vs Саша Петрова; Петров vs Петрова; Иван vs Петрова) give :data:`DIFFERENT`. Agreeing given names
with agreeing or missing surnames give :data:`SAME` (an initial needs the surname to agree too), unless
both patronymics are present and differ, which makes it :data:`UNKNOWN`. Two keys without given names are
:data:`SAME` when their surnames agree; keys with unresolved words are :data:`SAME` when all their words
pair up, else :data:`UNKNOWN` (or :data:`DIFFERENT` on a gender conflict); anything else (a surname against
a given name alone, related names) is :data:`UNKNOWN`.

Keys are stable: they depend only on the text, the tables in this module and the pymorphy3 dictionary
(used, lazily, to tell given names, surnames and patronymics that the table does not list). The
comparison re-reads every given name through the current table, so a key written by an older version
still compares correctly when the table grows. Both functions are memoized.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Final

from rapidfuzz.distance import OSA

__all__ = ["DIFFERENT", "SAME", "UNKNOWN", "compare_names", "name_key", "touch_name"]

SAME: Final = 1
DIFFERENT: Final = -1
UNKNOWN: Final = 0

#: Longest raw text taken as a name, in characters; anything longer is a comment or a paste, not a name.
MAX_NAME_LENGTH: Final = 100

# ---------------------------------------------------------------------------------------------------------
# The given-name table.
#
# One line per name family: the full forms, each with its gender (m: or f:), then ";" and the diminutives.
# A diminutive without a gender mark belongs to every gender of the family (Саша: Александр and Александра);
# one marked m: or f: to that gender only. A diminutive listed in several families (Слава) is ambiguous and
# stays as itself in keys. The first full form is the family's id; the first form of each gender is the
# canonical spelling of that gender. "ё" may be written: it is folded to "е" when the table is built.
_FAMILIES = """
m:александр f:александра ; саша саня шура шурик сашка сашенька санек сашуля сашок алекс
m:алексей ; леша алеша лешка леха алешка алекс
m:анатолий ; толя толик
m:андрей ; андрюша андрюха андрейка дрюня
m:антон ; антоша тоша
m:аркадий ; аркаша
m:арсений ; арсюша сеня
m:артем m:артемий ; тема темка артемка
m:артур
m:борис ; боря
m:вадим ; вадик
m:валентин f:валентина ; валя
m:валерий f:валерия ; m:валера f:лера
m:василий ; вася
m:вениамин ; веня
m:виктор ; витя витек витька
m:виталий f:виталия ; m:виталик m:витя
m:владимир ; вова володя вовка вован влад
m:владислав f:владислава ; m:влад m:владик слава
m:всеволод ; сева
m:вячеслав ; m:слава m:славик
m:геннадий ; гена генка
m:георгий ; гоша жора гога
m:герман ; гера
m:глеб
m:григорий ; гриша
m:давид
m:даниил m:данила m:данил ; даня данька
m:денис ; дениска
m:дмитрий ; дима митя димка димон
m:евгений f:евгения ; женя жека женечка
m:егор ; егорка
m:ефим ; фима
m:захар
m:иван ; ваня ванька ванюша
m:игорь ; игорек гарик
m:ильдар
m:илья ; илюша илюха
m:кирилл ; кирюша киря кирюха
m:константин ; костя костик
m:лев ; лева левушка
m:леонид ; леня лева
m:макар
m:максим ; макс максимка
m:марат
m:марк
m:матвей ; матвейка мотя
m:мирон
m:михаил ; миша мишка мишаня
m:никита ; никитка ник
m:николай ; коля колян николаша ник
m:олег ; олежка олежек
m:павел ; паша павлик пашка паха
m:петр ; петя петька петруша
m:платон
m:ренат f:рената
m:ринат
m:роберт ; боб бобби роб робби
m:родион
m:роман ; рома ромка ромчик
m:ростислав f:ростислава ; m:ростик слава
m:руслан f:руслана ; m:русик
m:рустам m:рустем
m:савелий
m:савва
m:семен ; сеня сема
m:сергей ; сережа серега серж сережка
m:святослав f:святослава ; m:свят слава
m:станислав f:станислава ; стас стасик слава
m:степан m:стефан ; степа
m:тимофей ; тима тимоша
m:тимур ; тима
m:тихон
m:федор ; федя
m:филипп ; филя
m:эдуард ; эдик
m:эльдар
m:эмиль
m:эрик f:эрика
m:юлиан f:юлиана
m:юрий ; юра юрка юрочка
m:ян f:яна ; f:яночка
m:яков ; яша
m:ярослав f:ярослава ; ярик слава
m:богдан f:богдана
f:алена ; аленка
f:алина ; аля
f:алиса
f:алла
f:альбина
f:анастасия ; настя настена ася стася
f:ангелина ; геля
f:анжела
f:анжелика
f:анна ; аня анюта анечка нюра нюша ася
f:антонина ; тоня
f:арина
f:варвара ; варя
f:василиса
f:вера ; верочка
f:вероника ; ника
f:виктория ; вика
f:виолетта
f:галина ; галя
f:дарина
f:дарья f:дария ; даша дашка дашуля
f:диана
f:дина
f:ева
f:екатерина f:катерина ; катя катюша катька
f:елена ; лена леночка
f:елизавета ; лиза лизонька лиз бетти
m:уильям m:вильям m:виллиам ; билл билли
f:есения
f:жанна
f:зарина
f:злата
f:зоя
f:инга
f:инна
f:ирина ; ира ирочка ирка иришка
f:камилла f:камила m:камиль
f:карина
f:кира
f:кристина ; кристи
f:ксения ; ксюша ксюха
f:лариса ; лара
f:лидия ; лида
f:лилия ; лиля
f:любовь ; люба
f:людмила ; люда люся мила
f:майя f:мая
f:маргарита ; рита марго
f:марина ; маринка
f:мария f:марья ; маша маня маруся машка машенька
f:милана ; мила
f:милена
f:надежда ; надя
f:наталья f:наталия ; наташа ната
f:нина
f:оксана
f:олеся m:олесь
f:ольга ; оля олечка олька
f:полина ; поля полинка
f:раиса ; рая
f:регина
f:римма
f:роза
f:светлана ; света светик
f:снежана
f:софья f:софия ; соня софа
f:стефания ; стеша
f:таисия ; тая
f:тамара ; тома
f:татьяна ; таня танюша танька
f:ульяна m:ульян ; f:уля
f:эвелина
f:элина
f:эльвира
f:эльмира m:эльмир
f:эмилия
f:юлия ; юля юлечка
f:мадина
f:марфа
m:мурат
f:карима
f:лилит
f:лилиана
f:нонна
f:нино
f:нана
m:иман
m:ильяс m:ильяз
m:эмин f:эмина
m:ролан
m:зафар
f:ариана f:арианна
f:адриана
f:ариадна
f:милания
m:мирослав f:мирослава ; слава
f:марианна f:марьяна f:мариана
f:залина
f:аниса
f:наина
m:рифат
m:ришат
m:васим
f:элиза
f:ирена f:ирэна
m:ильгар
m:ильмар
m:ильнар
m:эльмар
f:рафиса
f:ралиса
f:зарема
f:зарифа
f:зарима
f:алия
m:ивар
f:дания
f:вита
f:ярина
m:кристиан
m:арсен
"""

#: Western spellings that no transliteration rule reaches, written as the table entry they stand for.
_LATIN_ALIASES: Final[Mapping[str, str]] = {
    "alexander": "александр",
    "alexandra": "александра",
    "andrew": "андрей",
    "catherine": "екатерина",
    "christina": "кристина",
    "constantine": "константин",
    "daniel": "даниил",
    "dennis": "денис",
    "elizabeth": "елизавета",
    "eugene": "евгений",
    "eugenia": "евгения",
    "george": "георгий",
    "gregory": "григорий",
    "helen": "елена",
    "jacob": "яков",
    "john": "джон",
    "kate": "катя",
    "katherine": "екатерина",
    "mary": "мария",
    "michael": "михаил",
    "mike": "миша",
    "natalie": "наталья",
    "nick": "ник",
    "paul": "павел",
    "peter": "петр",
    "sophie": "софья",
}

#: Distinct families close enough to be one person's name in different records: never DIFFERENT.
_RELATED: Final = frozenset(
    frozenset(pair)
    for pair in (
        ("алена", "елена"),
        ("егор", "георгий"),
        ("оксана", "ксения"),
        ("олеся", "александр"),
        ("юлиан", "юлия"),
        ("нина", "антонина"),
        ("ренат", "ринат"),
        ("ян", "иван"),
        ("анжела", "анжелика"),
        ("вера", "вероника"),
        ("дарина", "дарья"),
        ("савелий", "савва"),
        ("арсен", "арсений"),
        ("ирена", "ирина"),
        ("ярина", "ирина"),
        ("лилиана", "лилия"),
        ("элиза", "елизавета"),
        ("ильяс", "илья"),
    )
)

# Placeholder words typed into name fields, and the words of CRM/website auto-names ("Заявка с сайта").
_PLACEHOLDERS: Final = frozenset(
    """
    test tests tester testov testing тест тесты тестовый тестовая тестовое тестов тестова тестович тестовна
    тестер проверка check demo демо
    sample example пример client clients customer клиент клиентка покупатель покупательница заказчик
    абонент subscriber user пользователь guest гость anonymous anon аноним анонимный name names noname
    имя фамилия отчество фио инициалы нет no none null nil undefined unknown неизвестно неизвестный
    неизвестная без не указано указан указана данных имени fullname full contact контакт lead лид заявка
    заявки сайта сайт site website web новый новая новое звонок звонка входящий обратный сделка deal заказ
    order форма form admin administrator админ администратор manager менеджер оператор operator support
    поддержка instagram whatsapp telegram facebook vk вконтакте инстаграм ватсап телеграм авито avito
    яндекс yandex google www http https ru com org info mail email почта телефон phone тел tel
    qwerty qwe asd asdf asdfg asdfgh zxc zxcv йцукен йцу фыва фыв фывап ячс ячсм xyz abc абв абвг
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

# Honorifics carry a gender hint and are otherwise dropped.
_HONORIFICS: Final[Mapping[str, str]] = {
    "г-н": "m",
    "господин": "m",
    "уважаемый": "m",
    "mr": "m",
    "sir": "m",
    "г-жа": "f",
    "госпожа": "f",
    "уважаемая": "f",
    "mrs": "f",
    "ms": "f",
    "miss": "f",
    "madam": "f",
    "dr": "",
    "тов": "",
}

# Turkic patronymic particles: "Рашид Ильхам оглы" is Рашид, son of Ильхам.
_PATRONYMIC_PARTICLES: Final[Mapping[str, str]] = {"оглы": "m", "улы": "m", "кызы": "f", "кизи": "f"}


@dataclass(frozen=True, slots=True)
class _Family:
    ident: str
    by_gender: Mapping[str, str]  # "m"/"f" -> canonical full form
    full_forms: tuple[str, ...]


def _fold(text: str) -> str:
    return text.replace("ё", "е")


_SKELETON_TABLE: Final = str.maketrans({"э": "е", "ъ": None, "ь": None, "й": "и", "ы": "и", "я": "иа", "ю": "иу"})
_FIRST_LETTER: Final = str.maketrans({"э": "е", "й": "и"})
_REPEATS: Final = re.compile(r"(.)\1+")


def _skeleton(word: str) -> str:
    """A coarse spelling of a Cyrillic word that transliteration and soft-sign variants share.

    Наталья, Наталия, Natalya (-> наталя), Natalia all become ``наталиа``; Кирил and Кирилл ``кирил``.
    The first letter keeps its sound (Юля and Иля, Яна and Иана stay apart)."""
    word = _fold(word)
    return _REPEATS.sub(r"\1", word[:1].translate(_FIRST_LETTER) + word[1:].translate(_SKELETON_TABLE))


def _build_table() -> tuple[
    dict[str, _Family], dict[str, frozenset[tuple[str, str]]], dict[str, tuple[frozenset[tuple[str, str]], str]]
]:
    families: dict[str, _Family] = {}
    lookup: dict[str, set[tuple[str, str]]] = {}
    for line in _FAMILIES.strip().splitlines():
        full_part, _, dim_part = line.partition(";")
        full = [tuple(_fold(item).split(":")) for item in full_part.split()]
        ident = full[0][1]
        by_gender: dict[str, str] = {}
        for gender, form in full:
            by_gender.setdefault(gender, form)
            lookup.setdefault(form, set()).add((ident, gender))
        both = "" if len(by_gender) > 1 else next(iter(by_gender))
        for item in dim_part.split():
            gender, _, form = _fold(item).rpartition(":")
            lookup.setdefault(form, set()).add((ident, gender or both))
        families[ident] = _Family(ident, by_gender, tuple(form for _, form in full))
    frozen = {form: frozenset(options) for form, options in lookup.items()}
    by_skeleton: dict[str, tuple[set[tuple[str, str]], list[str]]] = {}
    for form, options in frozen.items():
        entry = by_skeleton.setdefault(_skeleton(form), (set(), []))
        entry[0].update(options)
        entry[1].append(form)
    return families, frozen, {skel: (frozenset(opts), min(forms)) for skel, (opts, forms) in by_skeleton.items()}


_TABLE: Final = _build_table()
_FAMILY: Final[Mapping[str, _Family]] = _TABLE[0]
_LOOKUP: Final[Mapping[str, frozenset[tuple[str, str]]]] = _TABLE[1]
_BY_SKELETON: Final[Mapping[str, tuple[frozenset[tuple[str, str]], str]]] = _TABLE[2]  # -> (options, spelling)


def _family_letters() -> dict[str, frozenset[str]]:
    """First letters of every form of a family, diminutives included: "B. Smith" may be Bob, whose key is
    Robert's."""
    out: dict[str, set[str]] = {}
    for form, options in _LOOKUP.items():
        for family, _ in options:
            out.setdefault(family, set()).add(form[0])
    return {family: frozenset(letters) for family, letters in out.items()}


_FAMILY_LETTERS: Final[Mapping[str, frozenset[str]]] = _family_letters()


def _fuzzy_index() -> dict[str, tuple[tuple[str, str], ...]]:
    """Typo candidates by first letter: (skeleton, table form) for the full forms."""
    index: dict[str, list[tuple[str, str]]] = {}
    for form, options in _LOOKUP.items():
        if any(form in _FAMILY[family].full_forms for family, _ in options):
            skel = _skeleton(form)
            index.setdefault(skel[0], []).append((skel, form))
    return {letter: tuple(sorted(items)) for letter, items in index.items()}


_FUZZY_INDEX: Final = _fuzzy_index()


def _close(a: str, b: str) -> bool:
    """Two skeletons a typo apart: one edit (a transposition counts as one) from 4 letters, two from 9,
    and the same first letter."""
    if a == b:
        return True
    shortest = min(len(a), len(b))
    if shortest < 4 or a[0] != b[0]:
        return False
    distance = OSA.distance(a, b, score_cutoff=2)
    return distance <= 1 or (distance == 2 and shortest >= 9)


# ---------------------------------------------------------------------------------------------------------
# Scripts: Latin to Cyrillic, homoglyphs, diacritics.

_CYRILLIC = re.compile(r"[а-яё]")
_LATIN = re.compile(r"[a-z]")
_LAT_TO_CYR_HOMOGLYPHS: Final = str.maketrans("aeopcxykmthb", "аеорсхукмтнв")
_CYR_TO_LAT_HOMOGLYPHS: Final = str.maketrans("аеорсхукмтнв", "aeopcxykmthb")

_LATIN_MULTI: Final = (
    ("shch", "щ"),
    ("sch", "щ"),
    ("zh", "ж"),
    ("kh", "х"),
    ("ch", "ч"),
    ("sh", "ш"),
    ("ts", "ц"),
    ("tz", "ц"),
    ("ph", "ф"),
    ("th", "т"),
    ("ck", "к"),
    ("yo", "ё"),
    ("jo", "ё"),
    ("ya", "я"),
    ("ja", "я"),
    ("yu", "ю"),
    ("ju", "ю"),
    ("ye", "е"),
    ("je", "е"),
)
_LATIN_SINGLE: Final[Mapping[str, str]] = dict(zip("abvgdezklmnoprstufhwqj", "абвгдезклмнопрстуфхвкй", strict=True))
_VOWELS: Final = frozenset("aeiouy")


def _latin_to_cyrillic(word: str) -> str:
    """One Russian reading of a name spelled in Latin letters (any of the usual systems: Aleksandr,
    Alexander, Evgeniy/Yevgeny/Evgenii, Iuliia/Yulia/Julia, Sokolovsky/Sokolovskiy/Sokolovskii)."""
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        if i == 0 and word.startswith(("ia", "iu"), 0):
            out.append("я" if word[1] == "a" else "ю")
            i += 2
            continue
        if word.startswith("iia", i) and i + 3 == n:
            out.append("ия")
            break
        if word.startswith(("ii", "iy", "ij"), i) and i + 2 == n:
            out.append("ий")
            break
        for latin, cyrillic in _LATIN_MULTI:
            if word.startswith(latin, i):
                out.append(cyrillic)
                i += len(latin)
                break
        else:
            char = word[i]
            prev = word[i - 1] if i else ""
            last = i + 1 == n
            if char == "y":
                if prev in _VOWELS:
                    out.append("й")
                elif last and i > 0:
                    out.append("ий")
                else:
                    out.append("ы")
            elif char == "i":
                out.append("й" if last and prev in _VOWELS and prev != "i" else "и")
            elif char == "c":
                out.append("ц" if i + 1 < n and word[i + 1] in "eiy" else "к")
            elif char == "x":
                out.append("кс")
            else:
                out.append(_LATIN_SINGLE.get(char, char))
            i += 1
    return _fold("".join(out))


#: What a Latin initial may stand for in Cyrillic.
_LATIN_INITIALS: Final[Mapping[str, str]] = {
    "a": "а",
    "b": "б",
    "c": "кцч",
    "d": "д",
    "e": "еэ",
    "f": "ф",
    "g": "гж",
    "h": "х",
    "i": "июя",
    "j": "жйюяе",
    "k": "кх",
    "l": "л",
    "m": "м",
    "n": "н",
    "o": "о",
    "p": "пф",
    "q": "к",
    "r": "р",
    "s": "сшщ",
    "t": "тц",
    "u": "ую",
    "v": "в",
    "w": "в",
    "x": "кх",
    "y": "юяеи",
    "z": "зж",
}


def _initial_letters(initial: str) -> frozenset[str]:
    if initial in _LATIN_INITIALS:
        return frozenset(_LATIN_INITIALS[initial])
    if initial in "еэ":
        return frozenset("еэ")
    return frozenset(initial)


# ---------------------------------------------------------------------------------------------------------
# pymorphy3: given names, surnames and patronymics that the table does not list.


@cache
def _morph() -> tuple[Any, type]:
    # Loaded on first use (0.05-0.1 s, ~20 MB): processes that never read a name do not pay for it.
    import pymorphy3  # noqa: PLC0415
    from pymorphy3.units import DictionaryAnalyzer  # noqa: PLC0415

    return pymorphy3.MorphAnalyzer(lang="ru"), DictionaryAnalyzer


@dataclass(frozen=True, slots=True)
class _Morph:
    name_gender: str | None  # None: not a given name; "" a given name of either gender
    surname: bool
    patronymic: bool
    known: bool  # the dictionary knows the word at all (as a name or as any other word)


_GENDERS: Final[Mapping[str, str]] = {"masc": "m", "femn": "f"}


@lru_cache(maxsize=1 << 15)
def _morph_info(word: str) -> _Morph:
    """What the OpenCorpora dictionary says of a nominative word (its guesses for unknown words are ignored)."""
    analyzer, dictionary_unit = _morph()
    name_genders: set[str] = set()
    surname = patronymic = known = False
    for parse in analyzer.parse(word):
        tag = parse.tag
        if not isinstance(parse.methods_stack[0][0], dictionary_unit):
            continue
        known = True
        if "nomn" not in tag or "sing" not in tag:
            continue
        if "Name" in tag:
            name_genders.add(_GENDERS.get(str(tag.gender), ""))
        elif "Surn" in tag:
            surname = True
        elif "Patr" in tag:
            patronymic = True
    gender = None if not name_genders else (name_genders.pop() if len(name_genders) == 1 else "")
    return _Morph(gender, surname, patronymic, known)


# ---------------------------------------------------------------------------------------------------------
# Words and their possible roles.

_PATRONYMIC_M = re.compile(r"(?:ович|евич)$")
_PATRONYMIC_F = re.compile(r"(?:овна|евна|ична)$")
_SURNAME_F = re.compile(r"(?:ова|ева|ина|ына|ская|цкая|ая|яя)$")
_SURNAME_M = re.compile(r"(?:ов|ев|ин|ын|ский|цкий|ой|ый|ий)$")
_SURNAME_STRONG = re.compile(
    r"(?:ов|ова|ев|ева|ын|ына|ский|ская|цкий|цкая|ской|енко|чук|щук|юк|швили|дзе|ян|янц|ых|их|ович|евич)$"
)
_SURNAME_WEAK = re.compile(r"(?:ин|ина|ой|ый|ий|ая|яя|ук|ко|ич)$")


@dataclass(frozen=True, slots=True)
class _Given:
    options: frozenset[tuple[str, str]]  # (family, gender) from the table; empty when not a table name
    text: str  # the word itself (a table spelling when resolved through the table)
    gender: str  # what the name alone says: "m", "f" or ""
    rank: int  # 4 table, 2 dictionary name, 1 a typo of a table name


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    given: _Given | None
    surname_score: int  # 2 strong surname ending or dictionary surname, 1 weak ending, 0 none
    patronymic: bool  # may be a patronymic (a surname may look like one: Абрамович)
    only_patronymic: bool  # a patronymic and not a known surname (Сергеевич)


def _table_given(word: str) -> _Given | None:
    options = _LOOKUP.get(word)
    text = word
    if options is None:
        entry = _BY_SKELETON.get(_skeleton(word))
        if entry is None:
            return None
        options, text = entry  # a variant spelling (Кирил, Natalya): the table's spelling
    return _Given(options, text, _option_gender(options), 4)


def _option_gender(options: Iterable[tuple[str, str]]) -> str:
    genders = {gender for _, gender in options}
    return genders.pop() if len(genders) == 1 else ""


#: A word the dictionary knows as a given name is taken for a typo of a table name only from this length:
#: OpenCorpora lists misspellings (алексндр, екатирина) beside real short names a letter away from common
#: ones (Мадина/Марина, Алим/Алия), and long real names a typo apart are rare.
_KNOWN_TYPO_LENGTH: Final = 7


def _may_be_typo(word: str) -> bool:
    """Whether a word outside the table may be a misspelt table name rather than a name of its own."""
    return len(_skeleton(word)) >= _KNOWN_TYPO_LENGTH or not _morph_info(word).known


def _fuzzy_given(word: str) -> _Given | None:
    skel = _skeleton(word)
    if len(skel) < 4:
        return None
    matches = [form for cand, form in _FUZZY_INDEX.get(skel[0], ()) if _close(skel, cand)]
    options = frozenset(option for form in matches for option in _LOOKUP[form])
    if not options or len({family for family, _ in options}) != 1:
        return None
    return _Given(options, min(matches), _option_gender(options), 1)


@lru_cache(maxsize=1 << 16)
def _word(text: str, latin: bool) -> _Word:
    """Everything the roles need to know of one (Cyrillic, folded) word; ``latin`` if it was typed in Latin."""
    parts = text.split("-")
    strong = bool(_SURNAME_STRONG.search(parts[-1])) and len(parts[-1]) >= 5
    weak = bool(_SURNAME_WEAK.search(parts[-1])) and len(parts[-1]) >= 5
    patronymic = len(text) >= 7 and bool(_PATRONYMIC_M.search(text) or _PATRONYMIC_F.search(text))
    given = _table_given(text)
    if given is None and len(parts) > 1:
        heads = [_table_given(part) for part in parts]
        if all(heads) and not strong:
            options = frozenset(option for head in heads if head for option in head.options)
            given = _Given(options, "-".join(head.text for head in heads if head), _option_gender(options), 4)
    morph: _Morph | None = None
    if given is None and (patronymic or not strong):
        morph = _morph_info(text)
    if given is None and not strong and morph is not None:
        if morph.name_gender is not None and not morph.surname:
            # transliteration noise (Michail -> мичаил) is a typo whatever the dictionary says
            typo = latin or len(_skeleton(text)) >= _KNOWN_TYPO_LENGTH
            fuzzy = _fuzzy_given(text) if typo else None
            if fuzzy is not None and morph.name_gender and fuzzy.gender not in ("", morph.name_gender):
                fuzzy = None  # Руслана is not a misspelt Руслан, nor Антонин a misspelt Антонина
            given = fuzzy or _Given(frozenset(), text, morph.name_gender, 2)
        elif not (weak or patronymic or morph.known):  # a typo, not another word: "Алексндр", "Ирна"
            given = _fuzzy_given(text)
    surname = strong or (morph is not None and morph.surname)
    patronymic = patronymic or (morph is not None and morph.patronymic)
    only_patronymic = patronymic and given is None and not (morph is not None and morph.surname)
    score = 2 if surname else 1 if weak or patronymic else 0
    return _Word(text, given, score, patronymic, only_patronymic)


def _patronymic_form(word: str) -> tuple[str, str]:
    """The masculine form of a patronymic and the gender it tells."""
    for fem, masc in (("инична", "ич"), ("ична", "ич"), ("овна", "ович"), ("евна", "евич")):
        if word.endswith(fem):
            return word[: -len(fem)] + masc, "f"
    return word, "m" if word.endswith("ич") else ""


def _surname_stem(word: str) -> tuple[str, str]:
    """One stem for both genders of a surname, and the gender its ending tells."""
    gender = ""
    stems = []
    for part in word.split("-"):
        if len(part) >= 5 and _SURNAME_F.search(part):
            gender = gender or "f"
        elif len(part) >= 4 and _SURNAME_M.search(part):
            gender = gender or "m"
        stem = part
        if len(part) >= 5 and part.endswith(("ая", "яя", "ой", "ый", "ий")):
            stem = part[:-2]
        elif len(part) >= 5 and part.endswith(("ова", "ева", "ина", "ына")):
            stem = part[:-1]
        stems.append(stem)
    return "-".join(stems), gender


# ---------------------------------------------------------------------------------------------------------
# name_key

_JUNK = re.compile(r"\d|@|://|www\.")
_SEPARATORS = re.compile(r"[^\w\s.'’`-]|_")
_TOKEN = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_KEY = re.compile(
    r"(?P<given>[^\W\d_|]+(?:-[^\W\d_]+)*\.?)?\|(?P<surname>[^\W\d_|]+(?:-[^\W\d_]+)*\.?)?\|(?P<gender>[mf]?)"
    r"(?:\|(?P<patronymic>[^\W\d_|]+\.?)?(?:\|(?P<other>[^\W\d_|]+(?: [^\W\d_|]+)*))?)?"
)


# Latin letters with diacritics lose them (é -> e); Cyrillic й and ё are not touched. Other Cyrillic alphabets'
# letters become their Russian look-alikes (Олексій -> олексии).
_PLAIN_LETTERS: Final = str.maketrans(
    {
        **{chr(code): unicodedata.normalize("NFKD", chr(code))[0] for code in range(0xC0, 0x250)},
        "і": "и",
        "ї": "и",
        "є": "е",
        "ґ": "г",
        "ў": "у",
    }
)


@lru_cache(maxsize=1 << 15)
def _script_word(word: str) -> tuple[str, bool]:
    """The word in Cyrillic (transliterated when typed in Latin), and whether it was Latin."""
    cyr = len(_CYRILLIC.findall(word))
    lat = len(_LATIN.findall(word))
    if lat and cyr:
        if cyr >= lat:
            word = word.translate(_LAT_TO_CYR_HOMOGLYPHS)
        else:
            word = word.translate(_CYR_TO_LAT_HOMOGLYPHS)
            cyr = 0
    if cyr or not lat:
        return _fold(word), False
    alias = _LATIN_ALIASES.get(word)
    if alias is not None:
        return alias, True
    return "-".join(_latin_to_cyrillic(part) for part in word.split("-")), True


def _is_junk_word(word: str) -> bool:
    """A placeholder ("тест", "client") or one letter repeated ("ааа", "xxx")."""
    return word in _PLACEHOLDERS or (len(word) > 1 and word == word[0] * len(word))


def name_key(raw: str) -> str | None:
    """The canonical key of a name as typed, or None when the text is not a usable name.

    See the module docstring for the format; ``name_key(k) == k`` for every key ``k``."""
    if not isinstance(raw, str):
        return None
    return _name_key(raw)


@lru_cache(maxsize=1 << 16)
def _name_key(raw: str) -> str | None:
    if len(raw) > MAX_NAME_LENGTH:
        return None
    if "|" in raw and _is_key(raw):
        return raw
    text = unicodedata.normalize("NFKC", raw).lower()
    if _JUNK.search(text):
        return None
    text = text.translate(_PLAIN_LETTERS)
    text = _SEPARATORS.sub(" ", text).replace("’", "").replace("'", "").replace("`", "")
    words: list[tuple[str, bool]] = []
    initials: list[tuple[int, str]] = []  # (position among words, letter)
    honorific = ""
    for raw_chunk in text.replace(".", ". ").split():
        chunk = raw_chunk.strip(".-")
        if chunk in _HONORIFICS:
            honorific = honorific or _HONORIFICS[chunk]
            continue
        for token in _TOKEN.findall(chunk):
            if _is_junk_word(token):
                continue
            if len(token) == 1:
                initials.append((len(words), token if _LATIN.match(token) else _fold(token)))
                continue
            word, latin = _script_word(token)
            if _is_junk_word(word):
                continue
            words.append((word, latin))
    return _assemble([_word(word, latin) for word, latin in words], initials, honorific)


def _assemble(words: list[_Word], initials: list[tuple[int, str]], honorific: str) -> str | None:
    given: _Word | None = None
    patronymic = ""
    patronymic_gender = ""
    rest = list(words)

    # Turkic particles: "<given> <father> оглы"
    for index, word in enumerate(rest):
        if word.text in _PATRONYMIC_PARTICLES and index >= 1:
            patronymic, patronymic_gender = rest[index - 1].text, _PATRONYMIC_PARTICLES[word.text]
            if index >= 2 and rest[index - 2].given is not None:
                given = rest[index - 2]
            rest = [w for i, w in enumerate(rest) if i not in {index - 1, index} and w is not given]
            break
    else:
        rest = [w for w in rest if w.text not in _PATRONYMIC_PARTICLES]

    # A patronymic follows its given name: "Иван Сергеевич Петров", "Петров Иван Сергеевич".
    if not patronymic:
        for index in range(1, len(rest)):
            word, before = rest[index], rest[index - 1]
            if word.patronymic and before.given is not None and not before.patronymic:
                given = before
                patronymic, patronymic_gender = _patronymic_form(word.text)
                rest = rest[: index - 1] + rest[index + 1 :]
                break

    if given is None:
        candidates = [w for w in rest if w.given is not None and (w.given.rank > 1 or w.surname_score == 0)]
        if candidates:
            given = min(candidates, key=lambda w: (-w.given.rank if w.given else 0, w.surname_score))
            rest = [w for w in rest if w is not given]

    # A patronymic elsewhere ("Ivanovna Anna Petrova"), or with no given name ("Сергеевич"): a hint only.
    if not patronymic:
        lone = next((w for w in rest if w.only_patronymic), None)
        if lone is not None and (given is None or len(rest) > 1):
            patronymic, patronymic_gender = _patronymic_form(lone.text)
            rest = [w for w in rest if w is not lone]

    surname_words: list[_Word] = []
    other: list[str] = []
    if given is not None:
        if len(rest) > 1:  # drop second given names ("Анна Мария Петрова"), keep the rest as one surname
            rest = [w for w in rest if not (w.given and w.given.rank == 4 and w.surname_score == 0)] or rest[-1:]
        surname_words = rest
    elif len(rest) == 1:
        if rest[0].surname_score or initials:
            surname_words = rest
        else:
            other = [rest[0].text]
    elif rest:
        surnames = [w for w in rest if w.surname_score]
        unknown = [w for w in rest if not w.surname_score]
        if len(surnames) == 1 and len(unknown) == 1:
            surname_words, given = surnames, unknown[0]
        else:
            other = sorted(w.text for w in rest)

    given_field = ""
    given_gender = ""
    options: frozenset[tuple[str, str]] = frozenset()
    if given is not None:
        if given.given is not None:
            options, given_field, given_gender = given.given.options, given.given.text, given.given.gender
        else:
            given_field = given.text
    elif initials and (surname_words or other):
        given_field = initials[0][1] + "."
        initials = initials[1:]
    surname_field = ""
    surname_gender = ""
    if surname_words:
        surname_field, surname_gender = _surname_stem("-".join(w.text for w in surname_words))
    elif initials and given_field and not given_field.endswith("."):
        surname_field = initials[0][1] + "."
        initials = initials[1:]
    if initials and not patronymic and given_field:
        patronymic = initials[0][1] + "."

    if (
        not (given_field and not given_field.endswith("."))
        and not (surname_field and not surname_field.endswith("."))
        and not other
    ):
        return None

    gender = given_gender or patronymic_gender or surname_gender or honorific
    families = {family for family, _ in options}
    if len(families) == 1:
        family = _FAMILY[next(iter(families))]
        given_field = family.by_gender.get(gender, family.ident) if gender else family.ident
    fields = [given_field, surname_field, gender, patronymic, " ".join(other)]
    while len(fields) > 3 and not fields[-1]:
        fields.pop()
    return "|".join(fields)


def _is_key(text: str) -> bool:
    match = _KEY.fullmatch(text)
    if match is None or text != text.lower() or (text.endswith("|") and text.count("|") > 2):
        return False
    given, surname, other = match["given"] or "", match["surname"] or "", match["other"] or ""
    if not ((given and not given.endswith(".")) or (surname and not surname.endswith(".")) or other):
        return False
    words = [*given.rstrip(".").split("-"), *surname.rstrip(".").split("-"), *other.split()]
    return not any(_is_junk_word(word) for word in words if word)


# ---------------------------------------------------------------------------------------------------------
# compare_names


@dataclass(frozen=True, slots=True)
class _GivenView:
    initial: frozenset[str]  # letters an initial may stand for; empty for a full name
    families: frozenset[str]  # table families; empty when not a table name
    skeletons: tuple[str, ...]  # the word's own skeleton(s), for typo matching
    letters: frozenset[str]  # first letters of the word and of its families' full forms
    typo: bool  # not a table name and possibly a misspelt one (see _may_be_typo)


@dataclass(frozen=True, slots=True)
class _KeyView:
    given: _GivenView | None
    surname: str  # skeleton of the stem, or "x." for an initial
    gender: str
    patronymic: str  # skeleton, or "x." for an initial
    words: tuple[str, ...]  # skeletons of every name word, for keys with unresolved words
    has_other: bool


@lru_cache(maxsize=1 << 14)
def _given_view(field: str) -> _GivenView:
    if field.endswith("."):
        return _GivenView(_initial_letters(field[:-1]), frozenset(), (), frozenset(), typo=False)
    families: set[str] = set()
    skeletons = []
    letters = {field[0]}
    typo = False
    for part in field.split("-"):
        skeletons.append(_skeleton(part))
        given = _table_given(part)
        if given is not None:
            families.update(family for family, _ in given.options)
        else:
            typo = typo or _may_be_typo(part)
    for family in families:
        letters.update(_FAMILY_LETTERS.get(family, ()))
    return _GivenView(frozenset(), frozenset(families), tuple(skeletons), frozenset(letters), typo)


def _view_field(field: str) -> str:
    return field if field.endswith(".") else _skeleton(field)


@lru_cache(maxsize=1 << 16)
def _key_view(key: str) -> _KeyView:
    fields = [*key.split("|"), "", ""][:5]
    given, surname, gender, patronymic, other = fields
    words = [_skeleton(w) for w in (*given.split("-"), *surname.split("-"), *other.split()) if w and w[-1] != "."]
    return _KeyView(
        _given_view(given) if given else None,
        _view_field(surname) if surname else "",
        gender,
        _view_field(patronymic) if patronymic else "",
        tuple(sorted(words)),
        bool(other),
    )


_MATCH, _INITIAL, _ABSENT, _RELATED_NAMES, _DIFFER = range(5)


def _compare_given(a: _GivenView | None, b: _GivenView | None) -> int:
    if a is None or b is None:
        return _ABSENT
    if a.initial or b.initial:
        letters_a = a.initial or a.letters
        letters_b = b.initial or b.letters
        return _INITIAL if letters_a & letters_b else _DIFFER
    if a.families and b.families:
        if a.families & b.families:
            return _MATCH
        if any(frozenset((x, y)) in _RELATED for x in a.families for y in b.families):
            return _RELATED_NAMES
        return _DIFFER
    forms_a = a.skeletons + tuple(_skeleton(f) for family in a.families for f in _FAMILY[family].full_forms)
    forms_b = b.skeletons + tuple(_skeleton(f) for family in b.families for f in _FAMILY[family].full_forms)
    if a.typo or b.typo:
        return _MATCH if any(_close(x, y) for x in forms_a for y in forms_b) else _DIFFER
    return _MATCH if set(forms_a) & set(forms_b) else _DIFFER


def _initials_agree(a: str, b: str) -> bool:
    """An initial ("п.", Latin "p.") against a word's skeleton or another initial."""
    letters_a = _initial_letters(a[0]) if a.endswith(".") else frozenset(a[0])
    letters_b = _initial_letters(b[0]) if b.endswith(".") else frozenset(b[0])
    return bool(letters_a & letters_b)


def _compare_surnames(a: str, b: str) -> int:
    if not a or not b:
        return _ABSENT
    if a.endswith(".") or b.endswith("."):
        return _MATCH if _initials_agree(a, b) else _DIFFER
    if _close(a, b):
        return _MATCH
    parts_a, parts_b = set(a.split("-")), set(b.split("-"))
    if (len(parts_a) > 1 or len(parts_b) > 1) and (parts_a <= parts_b or parts_b <= parts_a):
        return _MATCH
    return _DIFFER


def _patronymics_differ(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if a.endswith(".") or b.endswith("."):
        return not _initials_agree(a, b)
    return not _close(a, b)


def _words_match(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if len(a) != len(b) or not a:
        return False
    remaining = list(b)
    for word in a:
        found = next((other for other in remaining if _close(word, other)), None)
        if found is None:
            return False
        remaining.remove(found)
    return True


def compare_names(a: str, b: str) -> int:
    """SAME (1) when two keys plausibly name one person, DIFFERENT (-1) when clearly two, else UNKNOWN (0)."""
    if a == b:
        return SAME
    return _compare(a, b) if a < b else _compare(b, a)


@lru_cache(maxsize=1 << 16)
def _compare(a: str, b: str) -> int:
    ka, kb = _key_view(a), _key_view(b)
    gender_conflict = bool(ka.gender and kb.gender and ka.gender != kb.gender)
    if ka.has_other or kb.has_other:
        if gender_conflict:
            return DIFFERENT
        return SAME if _words_match(ka.words, kb.words) else UNKNOWN
    given = _compare_given(ka.given, kb.given)
    surname = _compare_surnames(ka.surname, kb.surname)
    if _DIFFER in (given, surname) or gender_conflict:
        return DIFFERENT
    if given == _RELATED_NAMES:
        return UNKNOWN
    if (given == _MATCH and surname in (_MATCH, _ABSENT)) or (given == _INITIAL and surname == _MATCH):
        return UNKNOWN if _patronymics_differ(ka.patronymic, kb.patronymic) else SAME
    if given == _ABSENT and ka.given is None and kb.given is None and surname == _MATCH:
        return SAME
    return UNKNOWN


# ---------------------------------------------------------------------------------------------------------
# touch_name

_WHOLE_NAME_ATTRIBUTES: Final = ("name", "full_name", "fio", "contact_name")


def touch_name(attributes: Mapping[str, object]) -> str | None:
    """The raw name a touch carries: ``name``, else ``full_name``, ``fio``, ``contact_name``, else
    ``first_name`` [``middle_name`` or ``patronymic``] ``last_name`` joined by spaces. Only non-blank
    strings count; None when there is none."""
    for attribute in _WHOLE_NAME_ATTRIBUTES:
        value = attributes.get(attribute)
        if isinstance(value, str) and value.strip():
            return value.strip()
    middle = _text(attributes.get("middle_name")) or _text(attributes.get("patronymic"))
    parts = [_text(attributes.get("first_name")), middle, _text(attributes.get("last_name"))]
    joined = " ".join(part for part in parts if part)
    return joined or None


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
