"""Identifier normalization: raw values as captured -> one canonical form per identifier.

Each rule is a small pure function (``normalize_phone``, ``normalize_email``, ...)
that returns the canonical value or raises :class:`~identity.errors.InvalidIdentifier`
naming the rule that failed. :class:`Normalizer` puts them together with the
operator's configuration (default phone region, extra kinds, junk blocklist) and
memoizes results, because a live stream repeats the same client ids, phones and
e-mails over and over while phone and e-mail parsing cost 20-30 microseconds each.

The written policy (what folds into what, and why) is in the README, section
"Identifier normalization".
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
    "KINDS_V1",
    "MAX_RAW_LENGTH",
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


def normalize_crm_contact_id(raw: str) -> str:
    """A CRM contact id, trimmed; case is kept (ids are opaque to us)."""
    value = _clean("crm_contact_id", raw)
    if len(value) > 128:
        raise _fail("crm_contact_id", "too_long", "crm_contact_id is longer than 128 characters")
    return value


def normalize_messenger_id(raw: str) -> str:
    """A messenger handle or id: trimmed, lower-cased, without a leading ``@``."""
    value = _clean("messenger_id", raw).lower().removeprefix("@").strip()
    if not value:
        raise _fail("messenger_id", "empty", "messenger_id is empty")
    return value


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

    def __post_init__(self) -> None:
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigurationError(f"default_region {self.default_region!r} is not an ISO 3166 region code")
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
            "crm_contact_id": normalize_crm_contact_id,
            "messenger_id": normalize_messenger_id,
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
        if junk is not None:
            return Rejection(kind, raw, junk, f"{kind} value is a known junk value ({junk}) and links nothing")
        return ident
