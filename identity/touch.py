"""The core's view of one touch event.

The wire format lives in ``schemas/`` (pydantic); it converts into these plain,
immutable objects so that the core depends on nothing but the standard library
and its own normalizers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from identity.errors import InvalidInput

__all__ = [
    "CALL_STATUSES",
    "DECLARED_TYPE_NAME",
    "EMAIL_ACTIONS",
    "KEY_TIME_DIGITS",
    "LINKING_TYPES",
    "AttributeValue",
    "CallInfo",
    "CrmInfo",
    "Touch",
    "TouchType",
    "Utm",
    "event_key",
    "key_text",
]

AttributeValue = str | int | float | bool | None

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class TouchType(StrEnum):
    SITE_VISIT = "site_visit"
    CALL = "call"
    FORM_SUBMIT = "form_submit"
    CRM_STAGE = "crm_stage"
    IDENTITY_LINK = "identity_link"
    IDENTITY_UNLINK = "identity_unlink"
    ERASE_REQUEST = "erase_request"
    MESSAGE = "message"  # a messenger or chat message (attributes.platform)
    EMAIL_EVENT = "email_event"  # an e-mail sent, opened or clicked (attributes.action, utm.campaign)
    PURCHASE = "purchase"  # a sale in 1C or an ERP (purchase: order_id, amount, currency, items)
    OFFLINE_VISIT = "offline_visit"  # a visit to a showroom or an office

    @classmethod
    def _missing_(cls, value: object) -> TouchType | None:
        """An operator-declared type (``IDSTREAM_EVENT_TYPES``): a pseudo-member, not kept (any name the wire
        format allows decodes; the engine applies only the declared ones)."""
        if isinstance(value, str) and DECLARED_TYPE_NAME.fullmatch(value):
            member = str.__new__(cls, value)
            member._name_ = value.upper()
            member._value_ = value
            return member
        return None


#: The name an operator may give a type of their own.
DECLARED_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{1,31}")


#: Types whose identifiers are evidence that they belong to one person.
LINKING_TYPES: Final = frozenset(
    {
        TouchType.SITE_VISIT,
        TouchType.CALL,
        TouchType.FORM_SUBMIT,
        TouchType.CRM_STAGE,
        TouchType.IDENTITY_LINK,
        TouchType.MESSAGE,
        TouchType.EMAIL_EVENT,
        TouchType.PURCHASE,
        TouchType.OFFLINE_VISIT,
    }
)

#: What an ``email_event`` says happened (``attributes.action``).
EMAIL_ACTIONS: Final = ("sent", "open", "click")


@dataclass(frozen=True, slots=True)
class Utm:
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    content: str | None = None
    term: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k in ("source", "medium", "campaign", "content", "term") if (v := getattr(self, k))}


@dataclass(frozen=True, slots=True)
class CrmInfo:
    deal_id: str
    stage: str
    previous_stage: str | None = None
    pipeline: str | None = None
    amount: float | None = None
    currency: str | None = None  # a purchase's (ISO 4217); CRM stages are in the report currency


#: What happened to a call: answered by someone, not answered (the caller waited and hung up), or busy.
CALL_STATUSES: Final = ("answered", "missed", "busy")


@dataclass(frozen=True, slots=True)
class CallInfo:
    """A call's outcome, as call tracking reports it."""

    status: str | None = None  # one of CALL_STATUSES
    wait_s: float | None = None  # seconds the caller waited for an answer
    talk_s: float | None = None  # seconds of conversation
    tracking_number: str | None = None  # the number the caller dialled (it names the channel)
    operator: str | None = None  # who answered

    def to_dict(self) -> dict[str, str | float]:
        fields = ("status", "wait_s", "talk_s", "tracking_number", "operator")
        return {k: v for k in fields if (v := getattr(self, k)) is not None}


def event_key(occurred_at: datetime, event_id: str) -> tuple[int, str]:
    """The total order of events: time (UTC microseconds), then event id."""
    return ((occurred_at - _EPOCH) // _MICROSECOND, event_id)


#: Width of the time part of :func:`key_text`: microseconds since 1970 until the year 2286.
KEY_TIME_DIGITS = 16


def key_text(key: tuple[int, str]) -> str:
    """An event key as text whose byte order is the key order (for stores that compare bytes).

    Valid for times from 1970 on; the wire contract guarantees that.
    """
    return f"{key[0]:0{KEY_TIME_DIGITS}d}|{key[1]}"


@dataclass(frozen=True, slots=True)
class Touch:
    """One touch as the core sees it. Identifier values are raw, as captured."""

    event_id: str
    type: TouchType
    occurred_at: datetime
    source: str
    identifiers: tuple[tuple[str, str], ...]
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    utm: Utm | None = None
    crm: CrmInfo | None = None
    call: CallInfo | None = None

    def __post_init__(self) -> None:
        moment = self.occurred_at
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInput(f"touch {self.event_id!r}: occurred_at has no UTC offset")
        if moment < _EPOCH:
            raise InvalidInput(f"touch {self.event_id!r}: occurred_at is before 1970")

    @property
    def fingerprint(self) -> str:
        """16 hex digits digesting all the event says but its id: a redelivery has the same fingerprint, another
        event under a reused id (two producers numbering events alike) almost surely not."""
        crm = self.crm
        content: list[object] = [
            self.type.value,
            self.key[0],
            self.source,
            [list(pair) for pair in self.identifiers],
            sorted(self.attributes.items()),
            self.utm.to_dict() if self.utm else None,
            [crm.deal_id, crm.stage, crm.previous_stage, crm.pipeline, crm.amount] if crm else None,
        ]
        if self.call is not None:  # only then: fingerprints of events without call details stay as they were
            content.append(self.call.to_dict())
        text = json.dumps(content, separators=(",", ":"), default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def key(self) -> tuple[int, str]:
        return event_key(self.occurred_at, self.event_id)
