"""Messages idstream produces: profile updates, identity changes and dead letters."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

__all__ = ["DeadLetter", "IdentityChange", "ProfileUpdate", "Trigger"]


class ProfileUpdate(BaseModel):
    """One message on ``profiles.updates`` (compacted, keyed by ``profile_id``).

    A subscriber keeps, per ``profile_id``, the message with the highest ``version``; versions only
    grow, across all workers. ``merged``: the ids in ``merged_from`` are retired (each also gets a
    tombstone: a null value under its key) and their records belong to this profile now. ``split``:
    identifiers moved between this profile and those in ``split_from`` (``moved`` names those this one
    took over; touches follow the identifier they were recorded under); each of them gets its own
    update in the same batch. ``erased``: the person was erased on request; ``profile`` is null and a
    tombstone follows under the same key. ``evidence`` says, for merged, split and erased, which event
    and which rule decided (see ``GET /v1/explain`` for the whole path).
    """

    model_config = ConfigDict(title="ProfileUpdate", extra="forbid")

    kind: Literal["created", "updated", "merged", "split", "erased"]
    profile_id: str
    version: int = Field(ge=1)
    event_ids: list[str] = Field(description="The events of this batch that caused the update.")
    merged_from: list[str] = Field(default_factory=list)
    split_from: list[str] = Field(default_factory=list)
    moved: list[dict[str, str]] = Field(
        default_factory=list, description="For split: the identifiers ({kind, value}) this profile took over."
    )
    evidence: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "For merged, split and erased: {rule, event_id, type, source, occurred_at[, shared]} per deciding "
            "event; rule is co_occurrence, manual_link, manual_unlink, shared_identifier, late_event or erasure; "
            "a manual_link or manual_unlink also names its actor and reason (attributes.actor and .reason)."
        ),
    )
    profile: dict[str, Any] | None = Field(description="The golden profile; null for erased.")


class IdentityChange(BaseModel):
    """One message on ``identity.changes``: a merge, a split, an erasure, a refused merge, identifiers newly
    ``shared`` (contested: several persons use them), rejected identifiers,
    or ``duplicate_conflict``: an event id seen before came with other content (two producers numbering their
    events alike); the second event was not applied. ``source`` is its source, ``first_source`` the first's.
    Producers avoid it by scoping ids with their source (``amocrm:lead-9:status-142``)."""

    model_config = ConfigDict(title="IdentityChange", extra="forbid")

    type: Literal["merged", "split", "erased", "conflict", "shared", "rejected_identifiers", "duplicate_conflict"]
    profile_id: str | None
    event_id: str
    source: str
    occurred_at: str
    merged_from: list[str] = Field(default_factory=list)
    split_from: list[str] = Field(default_factory=list)
    moved: list[dict[str, str]] = Field(default_factory=list)
    evidence: dict[str, Any] | None = None
    conflict: dict[str, Any] | None = None
    rejected: list[dict[str, str]] = Field(default_factory=list)
    first_source: str | None = Field(None, description="duplicate_conflict: the source of the first event.")
    shared: list[dict[str, str]] = Field(
        default_factory=list,
        description="shared: identifiers this event showed to be used by several persons (a switchboard, an info@ "
        "mailbox); lookups of them answer ambiguous from now on.",
    )


class DeadLetter(BaseModel):
    """One message on ``touches.dlq``: an input that was not applied, where it came from, and why."""

    model_config = ConfigDict(title="DeadLetter", extra="forbid")

    topic: str
    partition: int
    offset: int
    error: dict[str, Any]
    value_utf8: str | None = Field(
        None, description="The original bytes, when they are UTF-8 text that JSON escaping does not inflate."
    )
    value_base64: str | None = Field(None, description="The original bytes otherwise.")

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, error: dict[str, Any], value: bytes | None) -> DeadLetter:
        """A dead letter keeping the original bytes: as text when they are UTF-8, else base64.

        Text that JSON escaping would make larger than base64 (control characters become ``\\u0000``,
        six bytes for one) goes as base64 too: a dead letter stays within 4/3 of its message's size.
        """
        raw = value or b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and len(to_json(text)) - 2 <= (len(raw) + 2) // 3 * 4:
            return cls(topic=topic, partition=partition, offset=offset, error=error, value_utf8=text)
        b64 = base64.b64encode(raw).decode()
        return cls(topic=topic, partition=partition, offset=offset, error=error, value_base64=b64)


class Trigger(BaseModel):
    """One message on ``triggers`` (keyed by ``profile_id``): a signal for marketing automation.

    ``trigger_id`` names the cause (see ``identity/triggers.py``): the same cause always gets the same
    id, and idstream fires it once. Only a worker crash between producing a trigger and recording it
    can repeat one, with the same ``trigger_id``: receivers that must act exactly once dedupe on it.
    """

    model_config = ConfigDict(title="Trigger", extra="forbid")

    trigger_id: str
    rule: Literal[
        "stage_changed", "returning_with_open_deal", "repeat_inquiry", "lead_score_crossed", "missed_call_not_returned"
    ]
    profile_id: str
    event_id: str = Field(description="The touch that caused it.")
    occurred_at: str = Field(description="When that touch happened.")
    data: dict[str, Any] = Field(
        description=(
            "stage_changed: deal_id, from, to, pipeline, amount, status, source; returning_with_open_deal and "
            "repeat_inquiry: deal_id, stage, touch_type, source, open_deals; lead_score_crossed: threshold, "
            "lead_score; missed_call_not_returned (the missed call's event and time): status, within_minutes, "
            "source, tracking_number, wait_s."
        )
    )
    profile: dict[str, Any] = Field(description="The person's screen-pop card when the trigger fired.")
