"""Touch-event wire format v1: one JSON object per Kafka message.

The models are the contract: the JSON Schema that integrators read is generated
from them (``idstream schema export DIR``; a copy is kept in ``schemas/json/``).
Unknown fields are kept (``extra="allow"``) so that a producer ahead of us loses
nothing on the way through.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainValidator,
    Strict,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from identity.normalize import MAX_RAW_LENGTH
from identity.touch import CALL_STATUSES, EMAIL_ACTIONS, AttributeValue, CallInfo, CrmInfo, Touch, TouchType, Utm
from schemas.errors import decode

__all__ = [
    "MAX_IDENTIFIERS",
    "MAX_MESSAGE_BYTES",
    "CallIn",
    "CrmIn",
    "IdentifierIn",
    "PurchaseIn",
    "TouchEvent",
    "UtmIn",
    "decode_touch",
]

#: Largest accepted message, in bytes of JSON.
MAX_MESSAGE_BYTES = 64 * 1024
#: Most identifiers one event may carry.
MAX_IDENTIFIERS = 50
#: Touches outside this window are data errors (and stores compare times as fixed-width digits).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

KindName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
ShortText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=128)]
EventId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[StrictStr, StringConstraints(max_length=1024)]
AttributeName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)]
MAX_ATTRIBUTE_CHARS = 4096


def _flat_attribute(value: Any) -> AttributeValue:
    """One error per bad attribute, at ``attributes.<name>``, instead of one per union branch."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "attribute numbers must be finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_CHARS:
            raise PydanticCustomError(
                "string_too_long",
                "attribute strings are at most {limit} characters",
                {"limit": MAX_ATTRIBUTE_CHARS},
            )
        return value
    raise PydanticCustomError("attribute_type", "attributes are flat: a string, number, boolean or null")


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _written_time(value: Any) -> Any:
    """A time is text: pydantic alone would read 1700000000 (or "1700000000") as Unix seconds, or ms by size."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise PydanticCustomError(
            "datetime_type", "occurred_at must be an ISO-8601 string with a UTC offset, not a number"
        )
    return value


#: An aware date-time written as text; what the JSON Schema says (``type: string``), the decoder accepts.
WrittenTime = Annotated[AwareDatetime, BeforeValidator(_written_time)]


def _exactly_one(value: Any) -> Any:
    """``schema_version`` is the number 1: ``true`` equals 1 in Python, not in JSON."""
    if isinstance(value, bool):
        raise PydanticCustomError("literal_error", "Input should be 1")
    return value


Attribute = Annotated[
    AttributeValue,
    PlainValidator(_flat_attribute),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": MAX_ATTRIBUTE_CHARS},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
            ]
        }
    ),
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class IdentifierIn(_Open):
    """An identifier as captured by the producing system, before normalization."""

    kind: KindName = Field(description="phone, email, ga_client_id, ym_client_id, crm_contact_id, messenger_id, "
                           "or a kind the operator declared")  # fmt: skip
    value: Annotated[StrictStr, StringConstraints(max_length=MAX_RAW_LENGTH)] = Field(
        description="The raw value, e.g. '8 (916) 123-45-67'; idstream normalizes it."
    )


class UtmIn(_Open):
    source: Text | None = None
    medium: Text | None = None
    campaign: Text | None = None
    content: Text | None = None
    term: Text | None = None


class CrmIn(_Open):
    deal_id: ShortText
    stage: ShortText
    previous_stage: ShortText | None = None
    pipeline: ShortText | None = None
    amount: Annotated[FiniteFloat, Strict()] | None = None  # a number, not "5"


class CallIn(_Open):
    """What call tracking says of a call: answered or missed, how long the caller waited and talked, the number
    dialled (it names the channel) and who answered."""

    status: Literal[CALL_STATUSES] | None = Field(  # type: ignore[valid-type]
        None, description="answered, missed (nobody answered) or busy"
    )
    wait_s: Annotated[FiniteFloat, Strict(), Field(ge=0, le=86_400)] | None = Field(
        None, description="Seconds the caller waited for an answer."
    )
    talk_s: Annotated[FiniteFloat, Strict(), Field(ge=0, le=86_400)] | None = Field(
        None, description="Seconds of conversation."
    )
    tracking_number: ShortText | None = Field(None, description="The number the caller dialled, as captured.")
    operator: ShortText | None = Field(None, description="Who answered (a name or an id of the call center's).")


class PurchaseItem(_Open):
    sku: ShortText | None = None
    name: Text | None = None
    quantity: Annotated[FiniteFloat, Field(ge=0)] | None = None
    price: Annotated[FiniteFloat, Field(ge=0)] | None = None


class PurchaseIn(_Open):
    """A sale recorded in 1C or an ERP: it becomes a won deal of the person (``deal_id`` ``purchase:<order_id>``),
    so attribution and the reports credit channels with it."""

    order_id: ShortText
    amount: Annotated[FiniteFloat, Strict(), Field(ge=0, le=1e12)]
    currency: Annotated[StrictStr, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(description="ISO 4217, e.g. RUB.")
    items: list[PurchaseItem] = Field(default_factory=list, max_length=200)


class TouchEvent(_Open):
    """One touch: a site visit, a call, a form, a CRM stage change, or a manual correction."""

    model_config = ConfigDict(
        title="TouchEvent",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "calltouch-8841273",
                    "type": "call",
                    "occurred_at": "2026-11-02T10:15:00+03:00",
                    "source": "calltouch",
                    "identifiers": [
                        {"kind": "phone", "value": "8 (916) 123-45-67"},
                        {"kind": "ga_client_id", "value": "GA1.2.1234567890.1700000000"},
                    ],
                    "attributes": {"project": "Северный квартал", "duration_s": 184},
                    "utm": {"source": "yandex", "medium": "cpc", "campaign": "brand"},
                }
            ]
        },
    )

    schema_version: Annotated[Literal[1], BeforeValidator(_exactly_one)] = 1
    event_id: EventId = Field(
        description="Unique per touch, no control characters; a repeated event_id is a redelivery."
    )
    type: Annotated[
        TouchType,
        WithJsonSchema(
            {
                "anyOf": [
                    {"enum": [t.value for t in TouchType]},
                    {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,31}$",
                     "description": "A type the operator declared (IDSTREAM_EVENT_TYPES); others are dead-lettered."},
                ]
            }
        ),
    ]  # fmt: skip
    occurred_at: WrittenTime = Field(description="ISO-8601 with a UTC offset, from 2000 to 2199.")
    source: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The producing system: site, calltouch, amocrm, ..."
    )
    identifiers: list[IdentifierIn] = Field(min_length=1, max_length=MAX_IDENTIFIERS)
    attributes: dict[AttributeName, Attribute] = Field(default_factory=dict, max_length=100)
    utm: UtmIn | None = None
    crm: CrmIn | None = Field(default=None, validate_default=True, description="Required for crm_stage.")
    call: CallIn | None = Field(default=None, description="A call's outcome; only on type call.")
    purchase: PurchaseIn | None = Field(default=None, validate_default=True, description="Required for purchase.")

    @field_validator("identifiers")
    @classmethod
    def _links_need_two(cls, value: list[IdentifierIn], info: ValidationInfo) -> list[IdentifierIn]:
        if info.data.get("type") in (TouchType.IDENTITY_LINK, TouchType.IDENTITY_UNLINK) and len(value) < 2:
            raise ValueError("identity_link and identity_unlink need at least two identifiers")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        if not EARLIEST <= value < LATEST:
            raise ValueError("occurred_at must be from 2000-01-01 to 2199-12-31")
        return value

    @field_validator("crm")
    @classmethod
    def _crm_for_stage(cls, value: CrmIn | None, info: ValidationInfo) -> CrmIn | None:
        if value is None and info.data.get("type") is TouchType.CRM_STAGE:
            raise ValueError("crm (deal_id, stage) is required for type crm_stage")
        return value

    @field_validator("call")
    @classmethod
    def _call_for_calls(cls, value: CallIn | None, info: ValidationInfo) -> CallIn | None:
        if value is not None and info.data.get("type") is not TouchType.CALL:
            raise ValueError("call details are for type call only")
        return value

    @field_validator("purchase")
    @classmethod
    def _purchase_for_purchases(cls, value: PurchaseIn | None, info: ValidationInfo) -> PurchaseIn | None:
        kind = info.data.get("type")
        if value is None and kind is TouchType.PURCHASE:
            raise ValueError("purchase (order_id, amount, currency) is required for type purchase")
        if value is not None and kind is not TouchType.PURCHASE:
            raise ValueError("purchase details are for type purchase only")
        return value

    @field_validator("attributes")
    @classmethod
    def _email_action(cls, value: dict[str, AttributeValue], info: ValidationInfo) -> dict[str, AttributeValue]:
        if info.data.get("type") is TouchType.EMAIL_EVENT and value.get("action") not in EMAIL_ACTIONS:
            raise ValueError(f"an email_event needs attributes.action: one of {', '.join(EMAIL_ACTIONS)}")
        return value

    def to_touch(self) -> Touch:
        """The core's view of this event."""
        attributes: dict[str, AttributeValue] = dict(self.attributes)
        utm = self.utm
        crm = self.crm
        return Touch(
            event_id=self.event_id,
            type=self.type,
            occurred_at=self.occurred_at,
            source=self.source,
            identifiers=tuple((i.kind, i.value) for i in self.identifiers),
            attributes=attributes,
            utm=Utm(utm.source, utm.medium, utm.campaign, utm.content, utm.term) if utm else None,
            crm=_deal(crm, self.purchase),
            call=_call(self.call),
        )

    @classmethod
    def from_touch(cls, touch: Touch, **extra: Any) -> TouchEvent:
        """The wire form of a core touch (for producers, tests and benchmarks)."""
        data: dict[str, Any] = {
            "event_id": touch.event_id,
            "type": touch.type,
            "occurred_at": touch.occurred_at,
            "source": touch.source,
            "identifiers": [{"kind": k, "value": v} for k, v in touch.identifiers],
            "attributes": dict(touch.attributes),
            **extra,
        }
        if touch.utm is not None:
            data["utm"] = touch.utm.to_dict()
        if touch.crm is not None and touch.type is TouchType.PURCHASE:
            c = touch.crm
            data["purchase"] = {"order_id": c.deal_id.removeprefix("purchase:"), "amount": c.amount or 0.0,
                                "currency": c.currency or "RUB"}  # fmt: skip
        elif touch.crm is not None:
            c = touch.crm
            data["crm"] = {"deal_id": c.deal_id, "stage": c.stage, "previous_stage": c.previous_stage,
                           "pipeline": c.pipeline, "amount": c.amount}  # fmt: skip
        if touch.call is not None:
            data["call"] = touch.call.to_dict()
        return cls.model_validate(data)


def _deal(crm: CrmIn | None, purchase: PurchaseIn | None) -> CrmInfo | None:
    """A CRM stage as given; a purchase as a won deal of its own."""
    if purchase is not None:
        return CrmInfo(f"purchase:{purchase.order_id}", "won", None, "purchase", purchase.amount, purchase.currency)
    if crm is None:
        return None
    return CrmInfo(crm.deal_id, crm.stage, crm.previous_stage, crm.pipeline, crm.amount)


def _call(call: CallIn | None) -> CallInfo | None:
    if call is None:
        return None
    return CallInfo(call.status, call.wait_s, call.talk_s, call.tracking_number, call.operator)


def decode_touch(raw: bytes | str) -> TouchEvent:
    """Decode one message, or raise :class:`InvalidMessage` naming every bad field.

    Never raises anything else for any input: not JSON, invalid UTF-8, deep
    nesting, wrong types and oversized messages all become ``InvalidMessage``.
    """
    return decode(TouchEvent, raw, MAX_MESSAGE_BYTES)
