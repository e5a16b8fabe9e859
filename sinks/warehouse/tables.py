"""The warehouse tables, as BI tools see them (SQLAlchemy Core; the DDL lives in ``migrations/``).

* ``touches``: every site visit, call and form, with its channel and the person it belongs to now.
  Identifier values are not stored: ``anchor`` is the keyed hash of the identifier its touch was
  recorded under (the same rule as the golden profile), so re-homing a touch is a join, not a guess.
* ``persons``: one row per live golden profile (merged ids disappear, their rows re-home).
* ``person_identifiers``: which profile holds each identifier now (``version`` settles races).
* ``deal_stages`` and ``deals``: every CRM stage change, and each deal's current state.
* ``attribution``: per conversion (a person's lead, or a deal) and model, each channel's credit.
* ``assists``: channels on a deal's path before its final touch.
* ``ad_spend``: cost per day, channel, account and currency (the newest report of a day wins).
* ``erasures``: what was erased on request, as keyed hashes only (an identifier's is its ``anchor``; a
  profile id's is keyed the same way), each with the event key (``through_at``, ``through_event_id``) up to
  which an event naming it is refused: the resolver's rule, so an old event re-sent or redelivered after
  the erasure never brings a row back, while a newer one may start a new person.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "METADATA",
    "ad_spend",
    "assists",
    "attribution",
    "deal_stages",
    "deals",
    "erasures",
    "person_identifiers",
    "persons",
    "touches",
]

METADATA = MetaData()
TS = DateTime(timezone=True)

touches = Table(
    "touches",
    METADATA,
    Column("event_id", String(128), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("system", String(64), nullable=False),
    Column("source", String(256), nullable=False),
    Column("medium", String(256), nullable=False),
    Column("campaign", String(256), nullable=False),
    Column("content", Text),
    Column("term", Text),
    Column("page", Text),
    Column("project", Text),
    Column("anchor", String(32)),
    Column("profile_id", String(64)),
    Column("call_status", String(8)),  # a call's outcome: answered, missed, busy (migration 0003)
    Column("wait_s", Float),
    Column("talk_s", Float),
    Column("tracking_number", String(128)),
    Column("operator", String(128)),
    Index("touches_anchor", "anchor"),
    Index("touches_profile", "profile_id"),
    Index("touches_time", "occurred_at"),
)

persons = Table(
    "persons",
    METADATA,
    Column("profile_id", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("display_name", Text),
    Column("created_at", TS),
    Column("lead_at", TS),
    Column("lead_score", Integer, nullable=False),
    Column("touches", Integer, nullable=False),
    Column("identifiers", Text, nullable=False),  # JSON {kind: [values]}
    Column("updated_at", TS, nullable=False),
    Column("last_touch_at", TS),  # the golden profile's newest touch (an erasure holds at least through it)
    Column("last_event_id", String(128)),
)

person_identifiers = Table(
    "person_identifiers",
    METADATA,
    Column("anchor", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("profile_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Index("person_identifiers_profile", "profile_id"),
)

deal_stages = Table(
    "deal_stages",
    METADATA,
    Column("event_id", String(128), primary_key=True),
    Column("deal_id", String(128), nullable=False),
    Column("stage", String(128), nullable=False),
    Column("previous_stage", String(128)),
    Column("pipeline", String(128)),
    Column("amount", Float),
    Column("occurred_at", TS, nullable=False),
    Column("system", String(64), nullable=False),
    Column("anchor", String(32)),
    Column("profile_id", String(64)),
    Index("deal_stages_deal", "deal_id"),
    Index("deal_stages_anchor", "anchor"),
    Index("deal_stages_profile", "profile_id"),
)

deals = Table(
    "deals",
    METADATA,
    Column("deal_id", String(128), primary_key=True),
    Column("profile_id", String(64)),
    Column("pipeline", String(128)),
    Column("stage", String(128), nullable=False),
    Column("status", String(8), nullable=False),
    Column("amount", Float),
    Column("created_at", TS, nullable=False),
    Column("won_at", TS),
    Column("lost_at", TS),
    Column("updated_at", TS, nullable=False),
    Index("deals_profile", "profile_id"),
)

attribution = Table(
    "attribution",
    METADATA,
    Column("conversion", String(8), primary_key=True),  # lead | deal
    Column("conversion_id", String(128), primary_key=True),  # profile id of a lead, deal id of a deal
    Column("model", String(16), primary_key=True),
    Column("source", String(256), primary_key=True),
    Column("medium", String(256), primary_key=True),
    Column("campaign", String(256), primary_key=True),
    Column("credit", Float, nullable=False),
    Column("profile_id", String(64), nullable=False),
    Column("converted_at", TS, nullable=False),
    Index("attribution_profile", "profile_id"),
    Index("attribution_time", "converted_at"),
)

assists = Table(
    "assists",
    METADATA,
    Column("deal_id", String(128), primary_key=True),
    Column("source", String(256), primary_key=True),
    Column("medium", String(256), primary_key=True),
    Column("campaign", String(256), primary_key=True),
    Column("profile_id", String(64), nullable=False),
    Index("assists_profile", "profile_id"),
)

ad_spend = Table(
    "ad_spend",
    METADATA,
    Column("date", Date, primary_key=True),
    Column("source", String(256), primary_key=True),
    Column("medium", String(256), primary_key=True),
    Column("campaign", String(256), primary_key=True),
    Column("account", String(128), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("cost", Float, nullable=False),
    Column("reported_at", TS, nullable=False),
)

erasures = Table(
    "erasures",
    METADATA,
    Column("digest", String(32), primary_key=True),  # HMAC-SHA256 (128 bits, hex) under the erasure key
    Column("subject", String(16), nullable=False),  # identifier | profile
    Column("through_at", TS, nullable=False),
    Column("through_event_id", String(128), nullable=False),
)
