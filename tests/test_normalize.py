"""Identifier normalization: one table per rule, plus the shared peer vectors."""

from __future__ import annotations

import csv

import pytest
from hypothesis import given
from hypothesis import strategies as st

from identity import (
    ConfigurationError,
    Identifier,
    InvalidIdentifier,
    Normalizer,
    NormalizerConfig,
    Rejection,
)
from identity.normalize import (
    JunkPolicy,
    normalize_crm_contact_id,
    normalize_email,
    normalize_ga_client_id,
    normalize_messenger_id,
    normalize_phone,
    normalize_ym_client_id,
)
from tests.conftest import shared_file

# ----------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    "raw",
    [
        "8 (916) 123-45-67",
        "+7 916 123 45 67",
        "79161234567",
        "9161234567",
        "8-916-123-45-67",
        "+7(916)1234567 доб. 12",
        "  +7 (916) 123-45-67  ",
        "8(916)123-45-67 ext. 100",
        "тел.: 8 (916) 123-45-67",
        "＋７９１６１２３４５６７",  # full-width, as pasted from some documents
        "810 7 916 123 45 67",
    ],
)
def test_phone_formats_give_one_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+79161234567"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12", "invalid_number"),
        ("8912345678", "invalid_number"),  # one digit short
        ("8 (000) 000-00-00", "invalid_number"),
        ("+8 912 345 67 89", "unparseable"),
        ("call me", "unparseable"),
        ("", "empty"),
        ("   ", "empty"),
        ("8916\x001234567", "control_characters"),
        ("9" * 300, "too_long"),
    ],
)
def test_phone_rejections_name_the_rule(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize_phone(raw)
    assert caught.value.reason == reason
    assert caught.value.kind == "phone"
    assert not caught.value.retriable


def test_phone_region_is_configurable() -> None:
    assert normalize_phone("029 123 45 67", "BY") == "+375291234567"
    assert normalize_phone("+7 916 123-45-67", "BY") == "+79161234567"
    assert Normalizer(NormalizerConfig(default_region="KZ")).normalize("phone", "8 701 123 45 67") == Identifier(
        "phone", "+77011234567"
    )


def test_kazakhstan_shares_plus_seven_and_is_kept() -> None:
    assert normalize_phone("87011234567") == "+77011234567"


def test_shared_ru_phone_vectors_agree_with_libphonenumber() -> None:
    """Every valid vector normalizes to its E.164; every invalid one is refused."""
    path = shared_file("vectors", "ru_phone_vectors.csv")
    rows = [r for r in csv.DictReader(path.open(encoding="utf-8")) if r["default_region"] == "RU"]
    assert len(rows) > 30
    for row in rows:
        if row["is_valid"] == "True":
            assert normalize_phone(row["input"], "RU") == row["e164"], row
        else:
            with pytest.raises(InvalidIdentifier):
                normalize_phone(row["input"], "RU")


# ----------------------------------------------------------------------------- e-mail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ivan.Petrov@Mail.RU", "ivan.petrov@mail.ru"),
        ("  ivan@mail.ru ", "ivan@mail.ru"),
        ("mailto:ivan@mail.ru", "ivan@mail.ru"),
        ("MAILTO:ivan@mail.ru?subject=hi", "ivan@mail.ru"),
        ("Иван Петров <ivan@mail.ru>", "ivan@mail.ru"),
        ('"Petrov, Ivan" <Ivan@Mail.ru>', "ivan@mail.ru"),
        ("<ivan@mail.ru>", "ivan@mail.ru"),
        ("ivan@mail.ru.", "ivan@mail.ru"),
        # Gmail: dots and +tag ignored, googlemail is gmail
        ("some.name@gmail.com", "somename@gmail.com"),
        ("Some.Name+extension@GoogleMail.com", "somename@gmail.com"),
        ("f.o.o+bar@googlemail.com", "foo@gmail.com"),
        # Yandex family: one mailbox, '.' equals '-', +tag ignored
        ("test@ya.ru", "test@yandex.ru"),
        ("test@yandex.kz", "test@yandex.ru"),
        ("test@yandex.com", "test@yandex.ru"),
        ("test@yandex.by", "test@yandex.ru"),
        ("Ivan.Petrov+promo@yandex.ru", "ivan-petrov@yandex.ru"),
        ("ivan-petrov@yandex.ru", "ivan-petrov@yandex.ru"),
        # other providers: only case and whitespace change
        ("ivan.petrov+tag@mail.ru", "ivan.petrov+tag@mail.ru"),
        ("ivan.petrov@bk.ru", "ivan.petrov@bk.ru"),
        ("foo+bar@outlook.com", "foo+bar@outlook.com"),
        ("foo-bar@yahoo.com", "foo-bar@yahoo.com"),
        # internationalized domains: Unicode and punycode are one domain
        ("user@xn--80a1acny.xn--p1ai", "user@почта.рф"),
        ("User@ПОЧТА.рф", "user@почта.рф"),
        ("иван@почта.рф", "иван@почта.рф"),
    ],
)
def test_email_policy(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "ivan@@mail.ru",
        "@gmail.com",
        "ivan",
        "ivan @ mail.ru",
        '"foo@bar"@baz.com',
        "a..b@mail.ru",
        "+tag@gmail.com",
    ],
)
def test_email_syntax_errors_are_refused(raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize_email(raw)
    assert caught.value.reason == "invalid_syntax"


def test_email_comparison_table_rows_we_accept_are_canonical() -> None:
    """Every address of the shared comparison table either normalizes to a fixed point or is refused."""
    path = shared_file("vectors", "email_normalization_comparison.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert len(rows) >= 30
    accepted = 0
    for row in rows:
        try:
            once = normalize_email(row["input"])
        except InvalidIdentifier:
            continue
        accepted += 1
        assert normalize_email(once) == once, row  # idempotent
        assert once == once.strip().lower()
    assert accepted >= 25


# ----------------------------------------------------------------------------- web analytics and others


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GA1.2.123456789.1700000000", "123456789.1700000000"),
        ("GA1.1.123456789.1700000000", "123456789.1700000000"),
        ("ga1.2.123.456", "123.456"),
        ("123456789.1700000000", "123456789.1700000000"),
        (" 123.456 ", "123.456"),
    ],
)
def test_ga_client_id(raw: str, expected: str) -> None:
    assert normalize_ga_client_id(raw) == expected


@pytest.mark.parametrize("raw", ["GA1.2.abc.456", "123", "GS1.1.1700000000.1.0.1700000000.0.0.0", "1.2.3"])
def test_ga_client_id_malformed(raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize_ga_client_id(raw)
    assert caught.value.reason == "malformed"


def test_ym_client_id_digits_only() -> None:
    assert normalize_ym_client_id(" 1700000000123456789 ") == "1700000000123456789"
    for bad in ("17000000001234.5", "abc", "170000-000"):
        with pytest.raises(InvalidIdentifier):
            normalize_ym_client_id(bad)


def test_messenger_id() -> None:
    assert normalize_messenger_id(" @Ivan_Petrov ") == "ivan_petrov"


# ----------------------------------------------------------------------------- CRM systems and messenger platforms


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # a known system: lower-cased, the id trimmed, the id's case kept
        ("amocrm:501", "amocrm:501"),
        ("AmoCRM:501", "amocrm:501"),
        ("  AMOCRM : 501  ", "amocrm:501"),
        ("bitrix24:C_77", "bitrix24:C_77"),
        ("Dynamics:9f1c-AB", "dynamics:9f1c-AB"),
        ("1C:000123", "1c:000123"),
        ("retailcrm:12", "retailcrm:12"),
        ("megaplan:3", "megaplan:3"),
        ("SalesForce:0035g00000AbCdE", "salesforce:0035g00000AbCdE"),
        ("hubspot:51", "hubspot:51"),
        ("amocrm:ext:42", "amocrm:ext:42"),  # the id is everything after the first ':'
        # no known system: exactly today's rule (trimmed, case kept)
        ("501", "501"),
        (" CUST-1 ", "CUST-1"),
        ("amo-501", "amo-501"),
        # aliases are not systems: values an operator prefixed by the README's old advice keep their meaning
        ("amo:501", "amo:501"),
        ("AMO:501", "AMO:501"),
        ("b24:77", "b24:77"),
        ("bitrix:77", "bitrix:77"),
        ("dyn:9", "dyn:9"),
        ("msdynamics:9", "msdynamics:9"),
        ("amo : 501", "amo : 501"),
        ("crm:amocrm:501", "crm:amocrm:501"),
    ],
)
def test_crm_contact_id_names_its_system(raw: str, expected: str) -> None:
    assert normalize_crm_contact_id(raw) == expected
    assert Normalizer().normalize("crm_contact_id", raw) == Identifier("crm_contact_id", expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("amocrm:", "empty"),
        ("amocrm:   ", "empty"),
        ("amocrm:null", "placeholder"),
        ("Bitrix24:undefined", "placeholder"),
        ("1c:0", "placeholder"),
        ("dynamics: - ", "placeholder"),
        ("amocrm:" + "1" * 130, "too_long"),
        ("amocrm:5\x1f01", "control_characters"),
        ("amocrm:5\n01", "control_characters"),
        ("null", "placeholder"),
    ],
)
def test_crm_contact_id_junk_after_the_system_is_refused(raw: str, reason: str) -> None:
    result = Normalizer().normalize("crm_contact_id", raw)
    assert isinstance(result, Rejection)
    assert (result.kind, result.raw, result.reason) == ("crm_contact_id", raw, reason)


def test_crm_systems_are_configurable() -> None:
    ours = Normalizer(NormalizerConfig(crm_systems=frozenset({"amocrm", "amo", "sbis"})))
    assert ours.normalize("crm_contact_id", "SBIS: 42") == Identifier("crm_contact_id", "sbis:42")
    assert ours.normalize("crm_contact_id", "amo:501") == Identifier("crm_contact_id", "amo:501")  # byte for byte
    assert ours.normalize("crm_contact_id", "Dynamics:9") == Identifier("crm_contact_id", "Dynamics:9")  # not listed
    with pytest.raises(ConfigurationError, match="CRM system"):
        NormalizerConfig(crm_systems=frozenset({"amo crm"}))
    with pytest.raises(ConfigurationError, match="CRM system"):
        NormalizerConfig(crm_systems=frozenset({"AmoCRM"}))  # names are given in their stored spelling


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Telegram: usernames without '@', case-insensitive; t.me links; numeric user ids
        ("telegram:ivan", "telegram:ivan"),
        ("telegram:@Ivan", "telegram:ivan"),
        ("Telegram: @Ivan_Petrov ", "telegram:ivan_petrov"),
        ("telegram:t.me/ivan_petrov", "telegram:ivan_petrov"),
        ("telegram:https://t.me/Ivan_Petrov", "telegram:ivan_petrov"),
        ("telegram:http://www.t.me/ivan_petrov/", "telegram:ivan_petrov"),
        ("telegram:https://telegram.me/ivan_petrov?start=promo", "telegram:ivan_petrov"),
        ("telegram:123456789", "telegram:123456789"),
        ("@telegram:ivan", "telegram:ivan"),
        # VK: id<digits> or a screen name, lower-cased
        ("vk:id123", "vk:id123"),
        ("vk:ID0123", "vk:id123"),
        ("vk:123", "vk:id123"),
        ("vk:vk.com/id123", "vk:id123"),
        ("vk:https://vk.com/Ivan.Petrov", "vk:ivan.petrov"),
        ("vk:https://m.vk.com/ivan_petrov?from=search", "vk:ivan_petrov"),
        ("vk:vk.ru/ivan", "vk:ivan"),
        ("VK:@Ivan", "vk:ivan"),
        # WhatsApp and Viber: a phone number in E.164, like the phone kind
        ("whatsapp:+79161234567", "whatsapp:+79161234567"),
        ("whatsapp:8 (916) 123-45-67", "whatsapp:+79161234567"),
        ("whatsapp:+7 916 123 45 67", "whatsapp:+79161234567"),
        ("WhatsApp: 79161234567", "whatsapp:+79161234567"),
        ("whatsapp:9161234567", "whatsapp:+79161234567"),
        ("whatsapp:wa.me/79161234567", "whatsapp:+79161234567"),
        ("whatsapp:https://wa.me/79161234567?text=hi", "whatsapp:+79161234567"),
        ("whatsapp:+375 29 123-45-67", "whatsapp:+375291234567"),
        ("viber:8-916-123-45-67", "viber:+79161234567"),
        # other platforms: the generic rule after the prefix
        ("max:@Ivan", "max:ivan"),
        ("MAX: 1234567", "max:1234567"),
        # no known platform: exactly today's rule
        ("@Ivan", "ivan"),
        ("ivan", "ivan"),
        ("tg:@Ivan", "tg:@ivan"),
        ("https://t.me/Ivan", "https://t.me/ivan"),
        ("vkontakte:ivan", "vkontakte:ivan"),
    ],
)
def test_messenger_id_names_its_platform(raw: str, expected: str) -> None:
    assert normalize_messenger_id(raw) == expected
    assert Normalizer().normalize("messenger_id", raw) == Identifier("messenger_id", expected)


def test_one_handle_on_two_platforms_is_two_identifiers() -> None:
    normalizer = Normalizer()
    telegram = normalizer.normalize("messenger_id", "telegram:@ivan")
    vk = normalizer.normalize("messenger_id", "vk:ivan")
    assert telegram == Identifier("messenger_id", "telegram:ivan")
    assert vk == Identifier("messenger_id", "vk:ivan")
    assert telegram != vk
    assert normalizer.normalize("messenger_id", "@ivan") not in (telegram, vk)  # unprefixed: today's identifier


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        ("telegram:", "empty", "no id"),
        ("telegram:  @ ", "invalid_telegram_username", "neither a username"),
        ("telegram:iv", "invalid_telegram_username", "neither a username"),
        ("telegram:ivan petrov", "invalid_telegram_username", "neither a username"),
        ("telegram:иван", "invalid_telegram_username", "neither a username"),
        ("telegram:1ivan", "invalid_telegram_username", "neither a username"),
        ("telegram:" + "a" * 33, "invalid_telegram_username", "neither a username"),
        ("telegram:+79161234567", "invalid_telegram_username", "phone"),
        ("telegram:t.me/+AbCdEf", "invalid_telegram_username", "not to a user"),
        ("telegram:https://t.me/joinchat/AbCdEf", "invalid_telegram_username", "neither a username"),
        ("telegram:t.me/c/123/45", "invalid_telegram_username", "neither a username"),
        ("telegram:undefined", "placeholder", "placeholder"),
        ("vk:", "empty", "no id"),
        ("vk:id0", "invalid_vk_id", "out of range"),
        ("vk:club123", "invalid_vk_id", "community"),
        ("vk:https://vk.com/public77", "invalid_vk_id", "community"),
        ("vk:ivan petrov", "invalid_vk_id", "screen name"),
        ("vk:иван", "invalid_vk_id", "screen name"),
        ("vk:https://vk.com/wall-1_2", "invalid_vk_id", "screen name"),
        ("vk:null", "placeholder", "placeholder"),
        ("whatsapp:", "empty", "no id"),
        ("whatsapp:12", "invalid_whatsapp_number", "not a valid phone number"),
        ("whatsapp:call me", "invalid_whatsapp_number", "not a valid phone number"),
        ("whatsapp:8 (916) 123-45", "invalid_whatsapp_number", "not a valid phone number"),
        ("whatsapp:+7 (999) 999-99-99", "repeated_digits", "junk"),
        ("whatsapp:8 (900) 123-45-67", "blocklisted", "junk"),
        ("viber:ivan", "invalid_viber_number", "not a valid phone number"),
        ("max:", "empty", "no id"),
        ("max:@", "empty", "no id"),
        ("max:нет", "placeholder", "placeholder"),
    ],
)
def test_invalid_platform_values_are_refused_with_a_named_reason(raw: str, reason: str, message: str) -> None:
    result = Normalizer().normalize("messenger_id", raw)
    assert isinstance(result, Rejection), result
    assert (result.kind, result.raw, result.reason) == ("messenger_id", raw, reason)
    assert message in result.message


def test_messenger_platforms_are_configurable() -> None:
    ours = Normalizer(NormalizerConfig(messenger_platforms=frozenset({"telegram", "icq"}), default_region="BY"))
    assert ours.normalize("messenger_id", "ICQ: @12345") == Identifier("messenger_id", "icq:12345")
    assert ours.normalize("messenger_id", "vk:ivan") == Identifier("messenger_id", "vk:ivan")  # not listed: generic
    assert ours.normalize("messenger_id", "vk:Ivan Petrov") == Identifier("messenger_id", "vk:ivan petrov")
    by = Normalizer(NormalizerConfig(default_region="BY"))
    assert by.normalize("messenger_id", "viber:029 123 45 67") == Identifier("messenger_id", "viber:+375291234567")
    with pytest.raises(ConfigurationError, match="messenger platform"):
        NormalizerConfig(messenger_platforms=frozenset({"te:legram"}))


def test_identifier_values_never_carry_key_syntax() -> None:
    """The store writes a node as ``kind\\x1fvalue``: no accepted value holds a control character."""
    normalizer = Normalizer()
    for kind, raw in [
        ("crm_contact_id", "amocrm:1\x1fphone"),
        ("crm_contact_id", "amocrm\x1f:1"),
        ("messenger_id", "telegram:iv\x1fan"),
        ("messenger_id", "max:iv\x00an"),
        ("messenger_id", "whatsapp:+7916\x1f1234567"),
    ]:
        result = normalizer.normalize(kind, raw)
        assert isinstance(result, Rejection)
        assert result.reason == "control_characters"


_CRM_PREFIX = st.sampled_from(["amocrm", "AmoCRM", " 1C ", "bitrix24", "amo", "dyn", "", "x"])
_PLATFORM = st.sampled_from(["telegram", "Telegram", "vk", "whatsapp", "viber", "max", "@telegram", "tg", ""])
_HANDLE = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"@?[A-Za-z][A-Za-z0-9_]{2,33}", fullmatch=True),
    st.from_regex(r"(https?://)?(www\.|m\.)?(t\.me|vk\.com|wa\.me)/[A-Za-z0-9_.+]{0,20}", fullmatch=True),
    st.from_regex(r"\+?[78]? ?\(?9[0-9]{2}\)? ?[0-9]{3}-?[0-9]{2}-?[0-9]{2}", fullmatch=True),
)


@given(prefix=_CRM_PREFIX, sep=st.sampled_from([":", " : ", ""]), rest=_HANDLE)
def test_prefixed_crm_ids_are_fixed_points(prefix: str, sep: str, rest: str) -> None:
    normalizer = Normalizer(NormalizerConfig(cache_size=0))
    result = normalizer.normalize("crm_contact_id", prefix + sep + rest)
    if isinstance(result, Identifier):
        assert normalizer.normalize("crm_contact_id", result.value) == result


@given(platform=_PLATFORM, sep=st.sampled_from([":", " : ", ""]), rest=_HANDLE)
def test_prefixed_messenger_ids_are_fixed_points(platform: str, sep: str, rest: str) -> None:
    normalizer = Normalizer(NormalizerConfig(cache_size=0))
    result = normalizer.normalize("messenger_id", platform + sep + rest)
    if isinstance(result, Identifier):
        assert normalizer.normalize("messenger_id", result.value) == result


# ----------------------------------------------------------------------------- junk and the normalizer


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        ("email", "test@test.ru", "placeholder_mailbox"),
        ("email", "no@mail.ru", "blocklisted"),
        ("email", "noemail@gmail.com", "placeholder_mailbox"),
        ("email", "ivan@example.com", "placeholder_domain"),
        ("email", "ivan@shop.example", "reserved_domain"),
        ("email", "ivan@shop.test", "invalid_syntax"),  # special-use TLD, refused by email-validator
        ("email", "asd@asd.ru", "placeholder_mailbox"),
        ("email", "zzzz@mail.ru", "repeated_characters"),
        ("phone", "+7 (999) 999-99-99", "repeated_digits"),
        ("phone", "8 (916) 000-00-00", "repeated_digits"),
        ("phone", "8 (900) 123-45-67", "blocklisted"),
        ("ga_client_id", "undefined", "placeholder"),
        ("ym_client_id", "0", "placeholder"),
        ("ym_client_id", "0000", "all_zero"),
        ("crm_contact_id", "null", "placeholder"),
        ("phone", "нет", "placeholder"),
    ],
)
def test_junk_values_are_rejected_with_a_reason(kind: str, raw: str, reason: str) -> None:
    result = Normalizer().normalize(kind, raw)
    assert isinstance(result, Rejection)
    assert (result.kind, result.raw, result.reason) == (kind, raw, reason)


def test_real_looking_values_are_not_junk() -> None:
    normalizer = Normalizer()
    for kind, raw in [
        ("email", "ivan.petrov@mail.ru"),
        ("phone", "8 (916) 123-45-67"),
        ("email", "info@sk-sever.ru"),
    ]:
        assert isinstance(normalizer.normalize(kind, raw), Identifier)


def test_junk_policy_is_configurable() -> None:
    strict = Normalizer(NormalizerConfig(junk=JunkPolicy(blocked_values={"phone": frozenset({"+79161234567"})})))
    assert isinstance(strict.normalize("phone", "8 916 123-45-67"), Rejection)
    lax = Normalizer(NormalizerConfig(junk=JunkPolicy(phone_repeated_digits=False)))
    assert lax.normalize("phone", "+7 999 999-99-99") == Identifier("phone", "+79999999999")


def test_unknown_kinds_are_refused_and_declared_kinds_accepted() -> None:
    assert Normalizer().normalize("loyalty_card", "A-1") == Rejection(
        "loyalty_card", "A-1", "unknown_kind", "identifier kind 'loyalty_card' is not declared"
    )
    declared = Normalizer(NormalizerConfig(extra_kinds=frozenset({"loyalty_card"})))
    assert declared.normalize("loyalty_card", " A-1 ") == Identifier("loyalty_card", "A-1")


def test_bad_configuration_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError):
        NormalizerConfig(default_region="Russia")
    with pytest.raises(ConfigurationError):
        NormalizerConfig(extra_kinds=frozenset({"Bad Kind"}))


def test_normalize_many_dedupes_and_keeps_rejections() -> None:
    accepted, rejected = Normalizer().normalize_many(
        [("phone", "8 916 123-45-67"), ("phone", "+79161234567"), ("email", "bad"), ("phone", "12")]
    )
    assert accepted == [Identifier("phone", "+79161234567")]
    assert [r.reason for r in rejected] == ["invalid_syntax", "invalid_number"]


def test_normalize_or_raise() -> None:
    with pytest.raises(InvalidIdentifier):
        Normalizer().normalize_or_raise("email", "nope")


@given(kind=st.sampled_from(["phone", "email", "ga_client_id", "ym_client_id", "crm_contact_id", "messenger_id"]),
       raw=st.text(max_size=300))  # fmt: skip
def test_any_text_gives_an_identifier_or_a_rejection(kind: str, raw: str) -> None:
    """No input makes a normalizer raise; accepted values are fixed points."""
    normalizer = Normalizer(NormalizerConfig(cache_size=0))
    result = normalizer.normalize(kind, raw)
    assert isinstance(result, Identifier | Rejection)
    if isinstance(result, Identifier):
        again = normalizer.normalize(kind, result.value)
        assert again == result
