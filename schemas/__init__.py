"""The wire contract: pydantic models of every idstream message, and their JSON Schema."""

from schemas.errors import FieldError, InvalidMessage
from schemas.export import SCHEMAS, export_schemas, json_schema
from schemas.outputs import DeadLetter, IdentityChange, ProfileUpdate, Trigger
from schemas.spend import AdSpend, decode_spend
from schemas.touch import (
    MAX_IDENTIFIERS,
    MAX_MESSAGE_BYTES,
    CrmIn,
    IdentifierIn,
    TouchEvent,
    UtmIn,
    decode_touch,
)
from schemas.webhooks import WebhookDeadLetter

__all__ = [
    "MAX_IDENTIFIERS",
    "MAX_MESSAGE_BYTES",
    "SCHEMAS",
    "AdSpend",
    "CrmIn",
    "DeadLetter",
    "FieldError",
    "IdentifierIn",
    "IdentityChange",
    "InvalidMessage",
    "ProfileUpdate",
    "TouchEvent",
    "Trigger",
    "UtmIn",
    "WebhookDeadLetter",
    "decode_spend",
    "decode_touch",
    "export_schemas",
    "json_schema",
]
