"""Identifier normalization: raw values as captured -> one canonical form per identifier.

Each rule is a small pure function (``normalize_phone``, ``normalize_email``, ...)
that returns the canonical value or raises :class:`~identity.errors.InvalidIdentifier`
naming the rule that failed. :class:`Normalizer` puts them together with the
operator's configuration (default phone region, extra kinds, junk blocklist) and
memoizes results, because a live stream repeats the same client ids, phones and
e-mails over and over while phone and e-mail parsing cost 20-30 microseconds each.

The written policy (what folds into what, and why) is in the README, section
"Identifier normalization".

Two kinds carry a namespace inside their value. A ``crm_contact_id`` may name its CRM
(``amocrm:501``, ``dynamics:9``): the same client in two CRMs is two ids that one person
may hold (see :meth:`identity.policy.ResolutionPolicy.limit_key`). A ``messenger_id`` may
name its platform (``telegram:ivan``, ``vk:id123``, ``whatsapp:+79161234567``), each with
its own rule. Only the configured names count as a prefix (:data:`DEFAULT_CRM_SYSTEMS`,
:data:`DEFAULT_MESSENGER_PLATFORMS`, plus the operator's); any other value keeps exactly
the rule it had before prefixes existed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import NamedTuple

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from identity.errors import ConfigurationError, InvalidIdentifier

__all__ = [
    "DEFAULT_CRM_SYSTEMS",
    "DEFAULT_MESSENGER_PLATFORMS",
    "KINDS_V1",
    "MAX_RAW_LENGTH",
    "PHONE_PLATFORMS",
    "Identifier",
    "JunkPolicy",
    "Normalizer",
    "NormalizerConfig",
    "Rejection",
    "normalize_crm_contact_id",
    "normalize_email",
    "normalize_ga_client_id",
    "normalize_generic",
    "normalize_messenger_id",
    "normalize_phone",
    "normalize_ym_client_id",
    "split_prefixed",
    "validate_prefix_names",
]

#: Identifier kinds every deployment understands. Operators may declare more.
KINDS_V1: tuple[str, ...] = (
    "phone",
    "email",
    "ga_client_id",
    "ym_client_id",
    "crm_contact_id",
    "messenger_id",
)

#: Longest raw value accepted for any kind, in characters.
MAX_RAW_LENGTH = 256

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: CRM systems a ``crm_contact_id`` may name as ``<system>:<id>`` (compared case-insensitively, stored
#: lower-case). Only these exact names: there are deliberately no aliases (``amo:``, ``b24:``, ``dyn:``), because
#: the README once advised operators to prefix ids with a short name of their own (``amo:501``), so such values
#: exist in graphs, warehouses and CRM mirrors and must keep their spelling and their meaning (an id of the
#: unnamed system). An operator who used ``amo:`` declares ``amo`` as a system (``IDSTREAM_CRM_SYSTEMS=amo``):
#: the values stay byte for byte what they were, and only their counting class changes.
DEFAULT_CRM_SYSTEMS: frozenset[str] = frozenset(
    {"amocrm", "bitrix24", "dynamics", "1c", "retailcrm", "megaplan", "salesforce", "hubspot"}
)

#: Messenger platforms a ``messenger_id`` may name as ``<platform>:<id>``. ``telegram``, ``vk``, ``whatsapp`` and
#: ``viber`` have rules of their own; any other platform (``max`` and the operator's) takes the generic rule.
DEFAULT_MESSENGER_PLATFORMS: frozenset[str] = frozenset({"telegram", "vk", "whatsapp", "viber", "max"})

#: Platforms whose ids are phone numbers (normalized like the ``phone`` kind, and junk by the phone rules).
PHONE_PLATFORMS: frozenset[str] = frozenset({"whatsapp", "viber"})

_PREFIX_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def validate_prefix_names(what: str, names: Iterable[str]) -> frozenset[str]:
    """The names as a set, or :class:`ConfigurationError` naming the first one that cannot be a prefix.

    A name is what comes before the ``:`` of a value, in its stored (lower-case) spelling: ASCII letters,
    digits, ``_`` and ``-``, starting with a letter or a digit (``1c``), at most 32 characters.
    """
    checked = frozenset(names)
    for name in sorted(checked):
        if not _PREFIX_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{what} {name!r} must be lower-case ASCII letters, digits, '_' and '-', starting with a letter or "
                "a digit, at most 32 characters"
            )
    return checked


def split_prefixed(value: str, names: frozenset[str]) -> tuple[str, str] | None:
    """``(prefix, rest)`` of a *normalized* value that starts with one of ``names`` and ``:``, else None."""
    head, sep, rest = value.partition(":")
    if sep and head in names:
        return head, rest
    return None


class Identifier(NamedTuple):
    """A normalized identifier: a node of the identity graph.

    A tuple, not a string: the kind and the value never share a syntax, so no
    value can pose as another kind or as part of a storage key.
    """

    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """One identifier of an event that was not used, and why."""

    kind: str
    raw: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.raw, "reason": self.reason, "message": self.message}


def _fail(kind: str, reason: str, message: str) -> InvalidIdentifier:
    return InvalidIdentifier(kind, reason, message)


def _clean(kind: str, raw: str) -> str:
    """Common first step: NFC, strip, refuse empty, oversized and control characters."""
    if len(raw) > MAX_RAW_LENGTH:
        raise _fail(kind, "too_long", f"{kind} value is longer than {MAX_RAW_LENGTH} characters")
    value = unicodedata.normalize("NFC", raw).strip()
    if not value:
        raise _fail(kind, "empty", f"{kind} value is empty")
    if _CONTROL.search(value):
        raise _fail(kind, "control_characters", f"{kind} value contains control characters")
    return value


# --------------------------------------------------------------------------- phone


def normalize_phone(raw: str, region: str = "RU") -> str:
    """A phone number in E.164 (``+79161234567``); extensions are dropped.

    ``region`` is the default region for numbers written without a country code
    (``8 (916) ...``, ``9161234567``). Numbers that libphonenumber does not
    consider valid are refused: a wrong digit count or an unassigned range is
    more likely a typo than a person.
    """
    value = _clean("phone", raw)
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise _fail("phone", "unparseable", f"phone is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise _fail("phone", "invalid_number", "phone has no valid number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --------------------------------------------------------------------------- e-mail

_DISPLAY_NAME = re.compile(r"[^<>]*<([^<>]*)>\s*")
_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
#: Yandex serves one mailbox under every one of these domains.
YANDEX_DOMAINS = frozenset(
    {
        "yandex.ru",
        "ya.ru",
        "yandex.com",
        "yandex.by",
        "yandex.kz",
        "yandex.ua",
        "yandex.uz",
        "yandex.com.tr",
        "yandex.com.am",
        "yandex.com.ge",
        "yandex.az",
        "yandex.co.il",
        "yandex.kg",
        "yandex.lt",
        "yandex.lv",
        "yandex.md",
        "yandex.tj",
        "yandex.tm",
        "yandex.ee",
        "yandex.fr",
    }
)


def normalize_email(raw: str) -> str:
    """A mailbox address in one canonical spelling.

    Trimmed; ``mailto:`` and ``Name <a@b>`` unwrapped; syntax checked (RFC 5322
    dot-atom, internationalized addresses allowed); lower-cased; the domain in
    Unicode form (``xn--80a1acny.xn--p1ai`` and ``почта.рф`` are one domain).
    Provider aliases fold to one mailbox: Gmail ignores dots and ``+tag`` and
    ``googlemail.com`` is ``gmail.com``; the Yandex family (``ya.ru``,
    ``yandex.com``, ``yandex.kz``, ...) is ``yandex.ru``, where ``+tag`` is
    ignored and ``.`` equals ``-`` in the login (folded to ``-``).
    """
    value = _clean("email", raw)
    if value[:7].lower() == "mailto:":
        value = value[7:].split("?", 1)[0].strip()
    wrapped = _DISPLAY_NAME.fullmatch(value)
    if wrapped:
        value = wrapped.group(1).strip()
    if value.endswith(".") and "@" in value:
        value = value[:-1]
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise _fail("email", "invalid_syntax", f"email is not a valid address: {exc}") from None
    local = checked.local_part.lower()
    domain = checked.domain.lower()
    if domain in _GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        domain = "gmail.com"
    elif domain in YANDEX_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "-")
        domain = "yandex.ru"
    if not local:
        raise _fail("email", "invalid_syntax", "email has nothing before the @-sign once its tag is removed")
    return f"{local}@{domain}"


# --------------------------------------------------------------------------- web analytics ids

_GA_CLIENT_ID = re.compile(r"(?:GA\d+\.\d+\.)?(\d{1,20})\.(\d{1,20})", re.IGNORECASE)
_DIGITS = re.compile(r"\d{1,32}")


def normalize_ga_client_id(raw: str) -> str:
    """A Google Analytics client id as ``<random>.<timestamp>``.

    The ``_ga`` cookie form ``GA1.2.123.456`` and the bare ``123.456`` are the
    same client id.
    """
    value = _clean("ga_client_id", raw)
    match = _GA_CLIENT_ID.fullmatch(value)
    if match is None:
        raise _fail(
            "ga_client_id",
            "malformed",
            "ga_client_id must look like 'GA1.2.<digits>.<digits>' or '<digits>.<digits>'",
        )
    return f"{int(match.group(1))}.{int(match.group(2))}"


def normalize_ym_client_id(raw: str) -> str:
    """A Yandex Metrica ClientID: digits only (surrounding spaces are ignored)."""
    value = _clean("ym_client_id", raw)
    if _DIGITS.fullmatch(value) is None:
        raise _fail("ym_client_id", "malformed", "ym_client_id must be 1-32 digits")
    return value


# --------------------------------------------------------------------------- other kinds


def normalize_crm_contact_id(raw: str, systems: frozenset[str] = DEFAULT_CRM_SYSTEMS) -> str:
    """A CRM contact id, trimmed; case is kept (ids are opaque to us).

    ``<system>:<id>`` with a known ``system`` (case-insensitive, see :data:`DEFAULT_CRM_SYSTEMS`) names the CRM
    that issued the id: ``AmoCRM: 501`` is ``amocrm:501`` (the system lower-cased, the id trimmed, its case
    kept). Any other value, ``amo:501`` included, is an id of the unnamed system and stays exactly as it was.
    """
    value = _clean("crm_contact_id", raw)
    head, sep, rest = value.partition(":")
    system = head.strip().lower()
    if sep and system in systems:
        contact = rest.strip()
        if not contact:
            raise _fail("crm_contact_id", "empty", f"crm_contact_id names the CRM system {system!r} but no id")
        value = f"{system}:{contact}"
    if len(value) > 128:
        raise _fail("crm_contact_id", "too_long", "crm_contact_id is longer than 128 characters")
    return value


_LEADING_AT = re.compile(r"^[@\s]+")
_LINK_TAIL = r"/?(?:[?#].*)?"
_TELEGRAM_LINK = re.compile(r"(?:https?://)?(?:www\.)?(?:t|telegram)\.me/([^/?#]*)" + _LINK_TAIL)
#: Public usernames: 5-32 of a-z, 0-9 and ``_``, from a letter (4 for the collectible ones on Fragment).
_TELEGRAM_USERNAME = re.compile(r"[a-z][a-z0-9_]{3,31}")
#: Numeric user ids, as bots and the Bot API see them (a username always starts with a letter).
_TELEGRAM_USER_ID = re.compile(r"[1-9][0-9]{0,18}")
_VK_LINK = re.compile(r"(?:https?://)?(?:www\.|m\.)?vk\.(?:com|ru|me)/([^/?#]*)" + _LINK_TAIL)
_VK_NUMERIC = re.compile(r"(?:id)?([0-9]{1,19})")
_VK_COMMUNITY = re.compile(r"(?:club|public|event)[0-9]+")
_VK_SCREEN_NAME = re.compile(r"[a-z0-9_.]{2,32}")
_WHATSAPP_LINK = re.compile(r"(?:https?://)?(?:api\.)?wa\.me/\+?([0-9]{4,20})" + _LINK_TAIL)


def _telegram(handle: str, region: str) -> str:
    link = _TELEGRAM_LINK.fullmatch(handle)
    if link:
        handle = link.group(1)
        if handle.startswith("+") or handle in ("joinchat", "addlist", "addstickers", "share", "c", "s"):
            raise _fail(
                "messenger_id", "invalid_telegram_username", "messenger_id telegram: is a t.me link, but not to a user"
            )
    handle = _LEADING_AT.sub("", handle)
    if _TELEGRAM_USERNAME.fullmatch(handle) or _TELEGRAM_USER_ID.fullmatch(handle):
        return handle
    if handle.startswith("+"):
        message = "messenger_id telegram: is a phone number, not a username: send it as a 'phone' identifier"
    else:
        message = (
            "messenger_id telegram: is neither a username (4-32 latin letters, digits and '_', from a letter) "
            "nor a numeric user id"
        )
    raise _fail("messenger_id", "invalid_telegram_username", message)


def _vk(handle: str, region: str) -> str:
    link = _VK_LINK.fullmatch(handle)
    if link:
        handle = link.group(1)
    handle = _LEADING_AT.sub("", handle)
    numeric = _VK_NUMERIC.fullmatch(handle)
    if numeric:  # ``id123`` and the API's bare ``123`` are one user
        user = int(numeric.group(1))
        if 0 < user < 1 << 63:
            return f"id{user}"
        raise _fail("messenger_id", "invalid_vk_id", "messenger_id vk: has a user id out of range")
    if _VK_COMMUNITY.fullmatch(handle):
        raise _fail(
            "messenger_id", "invalid_vk_id", "messenger_id vk: is a community (club, public, event), not a person"
        )
    if _VK_SCREEN_NAME.fullmatch(handle):
        return handle
    raise _fail(
        "messenger_id",
        "invalid_vk_id",
        "messenger_id vk: is neither 'id<digits>' nor a screen name (2-32 latin letters, digits, '_' and '.')",
    )


def _phone_platform(platform: str, handle: str, region: str) -> str:
    link = _WHATSAPP_LINK.fullmatch(handle) if platform == "whatsapp" else None
    if link:  # wa.me carries the international number without its '+'
        handle = "+" + link.group(1)
    try:
        return normalize_phone(handle, region)
    except InvalidIdentifier as exc:
        raise _fail(
            "messenger_id",
            f"invalid_{platform}_number",
            f"messenger_id {platform}: is not a valid phone number ({exc})",
        ) from None


def _generic_handle(handle: str, region: str) -> str:
    return _LEADING_AT.sub("", handle)


_PLATFORM_RULES: dict[str, Callable[[str, str], str]] = {
    "telegram": _telegram,
    "vk": _vk,
    "whatsapp": partial(_phone_platform, "whatsapp"),
    "viber": partial(_phone_platform, "viber"),
}


def normalize_messenger_id(
    raw: str, region: str = "RU", platforms: frozenset[str] = DEFAULT_MESSENGER_PLATFORMS
) -> str:
    """A messenger handle or id: trimmed, lower-cased, without a leading ``@``.

    ``<platform>:<id>`` with a known ``platform`` (see :data:`DEFAULT_MESSENGER_PLATFORMS`) is normalized by
    the platform's rule and refused when it breaks it (``invalid_<platform>_...``):

    * ``telegram``: a username without ``@`` (``@Ivan_Petrov``, ``t.me/ivan_petrov``, ``https://t.me/ivan_petrov``
      give ``telegram:ivan_petrov``) or a numeric user id; invite and channel-post links are refused;
    * ``vk``: ``id<digits>`` (``vk.com/id123``, ``id0123`` and the API's bare ``123`` give ``vk:id123``) or a
      screen name, lower-cased (``https://vk.com/Ivan.Petrov`` gives ``vk:ivan.petrov``); communities are refused;
    * ``whatsapp``, ``viber``: a phone number in E.164 by the ``phone`` rule (``region`` for national numbers;
      ``wa.me/79161234567`` too): ``whatsapp:8 (916) 123-45-67`` gives ``whatsapp:+79161234567``;
    * any other configured platform (``max``): the id without leading ``@``.

    A value without a known platform keeps exactly the rule above (``telegram`` is a platform, ``tg`` is not).
    """
    value = _clean("messenger_id", raw).lower().removeprefix("@").strip()
    if not value:
        raise _fail("messenger_id", "empty", "messenger_id is empty")
    head, sep, rest = value.partition(":")
    platform = _LEADING_AT.sub("", head).strip()
    if not sep or platform not in platforms:
        return value
    handle = rest.strip()
    if handle:
        handle = _PLATFORM_RULES.get(platform, _generic_handle)(handle, region)
    if not handle:
        raise _fail("messenger_id", "empty", f"messenger_id names the platform {platform!r} but no id")
    return f"{platform}:{handle}"


def normalize_generic(raw: str, kind: str = "custom") -> str:
    """An operator-declared kind: trimmed and NFC-normalized, case kept."""
    return _clean(kind, raw)


# --------------------------------------------------------------------------- junk


def _default_placeholders() -> frozenset[str]:
    return frozenset({"undefined", "null", "none", "nan", "n/a", "na", "-", "--", "0", "unknown", "test", "нет"})


def _default_email_locals() -> frozenset[str]:
    return frozenset(
        {
            "test", "tests", "no", "net", "none", "nomail", "noemail", "no-email", "no_email", "nobody",
            "noreply", "no-reply", "null", "asdf", "asd", "qwe", "qwerty", "xxx", "example", "email",
            "mail", "e-mail", "123", "1234", "12345", "123456", "a", "aa", "aaa", "x", "q",
        }
    )  # fmt: skip


def _default_email_domains() -> frozenset[str]:
    return frozenset(
        {
            "example.com", "example.org", "example.net", "example.ru", "test.com", "test.ru", "test.test",
            "mail.test", "localhost", "domain.com", "email.com", "site.ru", "no.ru", "net.ru",
        }
    )  # fmt: skip


def _default_blocked_values() -> Mapping[str, frozenset[str]]:
    return {
        "email": frozenset({"no@mail.ru", "net@mail.ru", "test@mail.ru", "mail@mail.ru", "1@mail.ru"}),
        "phone": frozenset({"+79001234567", "+79123456789", "+71234567890"}),
    }


@dataclass(frozen=True, slots=True)
class JunkPolicy:
    """Values people type to avoid giving a contact. They never link anything.

    The defaults are deliberately conservative: a false "junk" loses one link,
    a missed one glues strangers into one person.
    """

    #: Raw values (compared lower-cased and trimmed) that mean "nothing" for every kind.
    placeholders: frozenset[str] = field(default_factory=_default_placeholders)
    #: Exact normalized values per kind.
    blocked_values: Mapping[str, frozenset[str]] = field(default_factory=_default_blocked_values)
    #: E-mail local parts that are never a person's mailbox, at any domain.
    email_local_parts: frozenset[str] = field(default_factory=_default_email_locals)
    #: Domains (and their subdomains) that carry no real mailboxes. The RFC 2606 TLDs are always refused.
    email_domains: frozenset[str] = field(default_factory=_default_email_domains)
    #: ``asd@asd.ru``, ``test@test.com``: the local part repeats the domain's name.
    email_local_equals_domain: bool = True
    #: ``+7 999 999-99-99``, ``8 (916) 000-00-00``: the national number, or its last 7 digits, repeat one digit.
    phone_repeated_digits: bool = True

    def reason(self, ident: Identifier) -> str | None:
        """Why a normalized identifier is junk, or None when it is usable."""
        if ident.value in self.blocked_values.get(ident.kind, ()):
            return "blocklisted"
        if ident.kind == "email":
            return self._email_reason(ident.value)
        if ident.kind == "phone" and self.phone_repeated_digits:
            digits = ident.value[-10:]
            if len(set(digits)) == 1 or len(set(digits[-7:])) == 1:
                return "repeated_digits"
        if ident.kind in ("ga_client_id", "ym_client_id") and not ident.value.strip("0."):
            return "all_zero"
        return None

    def _email_reason(self, value: str) -> str | None:
        local, _, domain = value.rpartition("@")
        if local in self.email_local_parts:
            return "placeholder_mailbox"
        labels = domain.split(".")
        if labels[-1] == "example":  # RFC 2606; email-validator already refuses .test, .invalid, .local
            return "reserved_domain"
        for i in range(len(labels) - 1):
            if ".".join(labels[i:]) in self.email_domains:
                return "placeholder_domain"
        if self.email_local_equals_domain and local == labels[0]:
            return "placeholder_mailbox"
        if len(set(local)) == 1 and len(local) > 1:
            return "repeated_characters"
        return None


# --------------------------------------------------------------------------- the normalizer


@dataclass(frozen=True, slots=True)
class NormalizerConfig:
    """What an operator may change about normalization."""

    default_region: str = "RU"
    extra_kinds: frozenset[str] = frozenset()
    junk: JunkPolicy = field(default_factory=JunkPolicy)
    #: Distinct (kind, raw value) pairs remembered; 0 disables the memo.
    cache_size: int = 1 << 18
    #: CRM systems a ``crm_contact_id`` may name (``amocrm:501``); keep equal to the policy's ``crm_systems``.
    crm_systems: frozenset[str] = DEFAULT_CRM_SYSTEMS
    #: Messenger platforms a ``messenger_id`` may name (``telegram:ivan``).
    messenger_platforms: frozenset[str] = DEFAULT_MESSENGER_PLATFORMS

    def __post_init__(self) -> None:
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigurationError(f"default_region {self.default_region!r} is not an ISO 3166 region code")
        validate_prefix_names("CRM system", self.crm_systems)
        validate_prefix_names("messenger platform", self.messenger_platforms)
        for kind in self.extra_kinds:
            if not _KIND_NAME.fullmatch(kind):
                raise ConfigurationError(
                    f"identifier kind {kind!r} must be lower-case letters, digits and '_', at most 32 characters"
                )


class Normalizer:
    """Turns ``(kind, raw value)`` into an :class:`Identifier` or a :class:`Rejection`."""

    def __init__(self, config: NormalizerConfig | None = None) -> None:
        self.config = config or NormalizerConfig()
        region = self.config.default_region
        self._rules: dict[str, Callable[[str], str]] = {
            "phone": lambda raw: normalize_phone(raw, region),
            "email": normalize_email,
            "ga_client_id": normalize_ga_client_id,
            "ym_client_id": normalize_ym_client_id,
            "crm_contact_id": partial(normalize_crm_contact_id, systems=self.config.crm_systems),
            "messenger_id": partial(normalize_messenger_id, region=region, platforms=self.config.messenger_platforms),
        }
        self._prefixes: dict[str, frozenset[str]] = {
            "crm_contact_id": self.config.crm_systems,
            "messenger_id": self.config.messenger_platforms,
        }
        for kind in self.config.extra_kinds:
            self._rules.setdefault(kind, partial(normalize_generic, kind=kind))
        size = self.config.cache_size
        self._lookup: Callable[[str, str], Identifier | Rejection] = (
            lru_cache(maxsize=size)(self._normalize_uncached) if size else self._normalize_uncached
        )

    @property
    def kinds(self) -> frozenset[str]:
        """Every kind this normalizer accepts."""
        return frozenset(self._rules)

    def normalize(self, kind: str, raw: str) -> Identifier | Rejection:
        """The identifier, or the reason it cannot be used. Never raises for bad values."""
        return self._lookup(kind, raw)

    def normalize_or_raise(self, kind: str, raw: str) -> Identifier:
        """Like :meth:`normalize`, raising :class:`InvalidIdentifier` on a rejection."""
        result = self._lookup(kind, raw)
        if isinstance(result, Rejection):
            raise InvalidIdentifier(result.kind, result.reason, result.message)
        return result

    def normalize_many(self, pairs: Iterable[tuple[str, str]]) -> tuple[list[Identifier], list[Rejection]]:
        """Distinct identifiers of one event, in first-seen order, and the rejected ones."""
        accepted: dict[Identifier, None] = {}
        rejected: list[Rejection] = []
        lookup = self._lookup
        for kind, raw in pairs:
            result = lookup(kind, raw)
            if type(result) is Identifier:
                accepted[result] = None
            else:
                rejected.append(result)  # type: ignore[arg-type]
        return list(accepted), rejected

    def _normalize_uncached(self, kind: str, raw: str) -> Identifier | Rejection:
        rule = self._rules.get(kind)
        if rule is None:
            return Rejection(kind, raw, "unknown_kind", f"identifier kind {kind!r} is not declared")
        if raw.strip().lower() in self.config.junk.placeholders:
            return Rejection(kind, raw, "placeholder", f"{kind} value is a placeholder, not an identifier")
        try:
            ident = Identifier(kind, rule(raw))
        except InvalidIdentifier as exc:
            return Rejection(kind, raw, exc.reason, exc.message)
        junk = self.config.junk.reason(ident)
        if junk is None and kind in self._prefixes:
            junk = self._prefixed_junk(ident)
        if junk is not None:
            return Rejection(kind, raw, junk, f"{kind} value is a known junk value ({junk}) and links nothing")
        return ident

    def _prefixed_junk(self, ident: Identifier) -> str | None:
        """Junk after a known prefix: ``amocrm:null``, ``telegram:undefined``, ``whatsapp:+79999999999``."""
        split = split_prefixed(ident.value, self._prefixes[ident.kind])
        if split is None:
            return None
        prefix, rest = split
        junk = self.config.junk
        if rest.lower() in junk.placeholders:
            return "placeholder"
        if ident.kind == "messenger_id" and prefix in PHONE_PLATFORMS:
            return junk.reason(Identifier("phone", rest))
        return None
