"""Ad-spend wire format v1: what a channel cost on one day, one JSON object per Kafka message.

Ad platforms restate a day's cost for days after it (late clicks, fraud refunds), so a spend row is
identified by its day, channel and account and currency, and the report with the newest
``reported_at`` replaces older ones: re-sending or re-importing a day is safe.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictStr,
    StringConstraints,
)

from schemas.errors import decode

__all__ = ["MAX_SPEND_BYTES", "AdSpend", "decode_spend"]

#: Largest accepted ad-spend message, in bytes of JSON.
MAX_SPEND_BYTES = 8 * 1024

Label = Annotated[StrictStr, StringConstraints(min_length=1, max_length=256)]


class AdSpend(BaseModel):
    """One day's cost of one source/medium/campaign (as tagged in the touches' UTM)."""

    model_config = ConfigDict(
        title="AdSpend",
        extra="allow",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "type": "ad_spend",
                    "date": "2026-11-02",
                    "source": "yandex",
                    "medium": "cpc",
                    "campaign": "brand",
                    "cost": 12500.5,
                    "currency": "RUB",
                    "reported_at": "2026-11-03T06:00:00+03:00",
                }
            ]
        },
    )

    schema_version: Literal[1] = 1
    type: Literal["ad_spend"]
    date: dt.date = Field(description="The day the money was spent (the ad platform's day).")
    source: Label = Field(description="utm_source of the channel, e.g. yandex.")
    medium: Label = Field(description="utm_medium of the channel, e.g. cpc.")
    campaign: Label | None = Field(None, description="utm_campaign; omitted: spend not split by campaign.")
    cost: FiniteFloat = Field(ge=0, le=1e12, description="Money spent that day, in currency.")
    currency: Annotated[StrictStr, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217 code, e.g. RUB, USD, KZT."
    )
    account: Annotated[StrictStr, StringConstraints(max_length=128)] = Field(
        "", description="Ad account, when one channel is bought through several accounts."
    )
    reported_at: AwareDatetime = Field(
        description="When the platform reported this figure; the newest report of a day replaces older ones."
    )


def decode_spend(raw: bytes | str) -> AdSpend:
    """Decode one ad-spend message, or raise :class:`InvalidMessage` naming every bad field."""
    return decode(AdSpend, raw, MAX_SPEND_BYTES)
