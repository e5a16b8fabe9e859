"""The lookup HTTP API's requests and responses, and its OpenAPI description built from them.

``schemas/json/lookup-api.openapi.json`` is generated from this module (``idstream schema export``); a test
fails when it is stale, and the API's own tests validate every answer against these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from schemas.errors import FieldError
from schemas.touch import TouchEvent

__all__ = [
    "MAX_BATCH",
    "MAX_CANDIDATES",
    "MAX_PREVIEW",
    "BatchLookupRequest",
    "BatchLookupResponse",
    "Candidate",
    "ErrorResponse",
    "IdentifierQuery",
    "LookupResult",
    "PreviewChange",
    "PreviewConflict",
    "PreviewError",
    "PreviewEvent",
    "PreviewIdentifier",
    "PreviewRejected",
    "PreviewResponse",
    "PreviewSummary",
    "ProfileResponse",
    "ScreenPopCard",
    "openapi",
]

#: Most identifiers in one batch lookup.
MAX_BATCH = 1000
#: Longest raw identifier value the API accepts (the normalizers refuse longer ones anyway).
MAX_VALUE = 512
#: Most candidates an ambiguous answer lists (``candidates_total`` counts them all).
MAX_CANDIDATES = 20

Status = Literal["found", "ambiguous", "not_found", "invalid"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentifierQuery(_Model):
    """One identifier as a caller has it: any common format, normalized exactly as in the stream."""

    kind: str = Field(min_length=1, max_length=64, examples=["phone"])
    value: str = Field(min_length=1, max_length=MAX_VALUE, examples=["8 (916) 123-45-67"])


class BatchLookupRequest(_Model):
    identifiers: list[IdentifierQuery] = Field(min_length=1, max_length=MAX_BATCH)


class Source(_Model):
    system: str = Field(description="The producing system (site, calltouch, amocrm, ...).")
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    occurred_at: str


class OpenDeal(_Model):
    deal_id: str
    stage: str
    pipeline: str | None
    amount: float | None
    updated_at: str


class ScreenPopCard(_Model):
    """What the call center sees while the phone rings (``view=card``, the default)."""

    profile_id: str
    display_name: str | None
    phones: list[str] = Field(description="E.164.")
    emails: list[str]
    crm_contact_ids: list[str]
    interests: list[str] = Field(description="Projects the person asked about, most touched first (up to 5).")
    first_source: Source | None
    last_source: Source | None
    last_touches: list[dict[str, Any]] = Field(description="Up to 5, newest first.")
    open_deals: list[OpenDeal] = Field(description="Deals in a stage that is neither won nor lost, newest first.")
    lead_score: int
    touches: int
    created_at: str | None


class Candidate(_Model):
    """One of the persons an ambiguous identifier (an office switchboard, a family phone) belongs to."""

    profile_id: str
    display_name: str | None
    emails: list[str] = Field(description="Up to 2.")
    last_touch_at: str | None
    open_deals: list[dict[str, str]]
    lead_score: int


class ErrorBody(_Model):
    code: str = Field(description="Machine-readable reason, e.g. invalid_phone, unknown_kind, known_junk.")
    message: str


class LookupResult(_Model):
    """The answer for one identifier (the single lookup's body, and each item of a batch)."""

    status: Status
    kind: str
    value: str
    profile_id: str | None = Field(None, description="Set when status is found.")
    profile: dict[str, Any] | None = Field(
        None, description="The ScreenPopCard (view=card), or the full golden profile (view=full)."
    )
    candidates: list[Candidate] | None = Field(
        None,
        max_length=MAX_CANDIDATES,
        description=(
            f"Set when status is ambiguous: the first {MAX_CANDIDATES} persons claiming the identifier, the most "
            "touches first (an established customer before a run of one-touch profiles, e.g. a spammed phone), "
            "then the most recent last touch, then by profile_id."
        ),
    )
    candidates_total: int | None = Field(
        None,
        ge=0,
        description=(
            "Set when status is ambiguous: how many persons claim the identifier, listed or not "
            "(candidates_total - len(candidates) were left out)."
        ),
    )
    error: ErrorBody | None = Field(None, description="Set when status is invalid.")


class BatchLookupResponse(_Model):
    results: list[LookupResult] = Field(description="One per identifier, in the order they were asked.")


class ProfileResponse(_Model):
    profile_id: str = Field(description="The live id: a retired (merged) id answers with its survivor's.")
    requested_id: str
    retired: bool = Field(description="True when requested_id was merged into profile_id.")
    profile: dict[str, Any]


class Explanation(_Model):
    """Why identifiers are one person, or why not (see ``identity/explain.py``).

    For a profile: ``links`` (the events that hold it together), ``kept_apart`` (evidence it was not
    joined through, with the reason) and ``shared_seen``. For two identifiers: ``same_person`` and
    ``path``, the shortest evidence path, each step one event with its source, time, rule and, where it
    crosses from one person to another, ``reason``: shared_identifier, unlinked or limit_exceeded.
    """

    profile_id: str | None = None
    identifiers: list[dict[str, str]] | None = None
    links: list[dict[str, Any]] | None = None
    kept_apart: list[dict[str, Any]] | None = None
    shared_seen: list[dict[str, str]] | None = None
    a: dict[str, str] | None = None
    b: dict[str, str] | None = None
    same_person: bool | None = None
    profile_ids: list[str | None] | None = None
    path: list[dict[str, Any]] | None = None
    reason: str | None = None


class ChannelRow(_Model):
    """One channel of the channel report (money in the report currency; shares from the chosen model)."""

    source: str
    medium: str
    campaign: str
    visits: int
    persons: int
    leads: float
    deals: float
    won_deals: float
    revenue: float
    cost: float
    cpl: float | None = Field(description="cost / leads; null without leads or cost.")
    cost_per_deal: float | None
    cost_per_won: float | None
    romi: float | None = Field(description="(revenue - cost) / cost, in percent; null without cost.")
    assisted: int = Field(description="Won deals whose path had this channel before the final touch.")


class ChannelReport(_Model):
    """Per source/medium/campaign: what it brought and what it cost (see ``idstream report channels``)."""

    model: Literal["first", "last", "last_non_direct", "position", "linear", "rank"]
    from_: str | None = Field(alias="from", description="First day (inclusive), or null: the beginning.")
    to: str | None = Field(description="Last day (inclusive), or null: now.")
    currency: str
    rows: list[ChannelRow]
    total: ChannelRow


class ErrorResponse(_Model):
    status: Literal["error"] = "error"
    code: str
    message: str


# ----------------------------------------------------------------------------- POST /v1/preview (a dry run)

#: Most touch events in one preview.
MAX_PREVIEW = 1000

PreviewStatus = Literal["applied", "reordered", "duplicate", "unresolved", "invalid"]


class PreviewIdentifier(_Model):
    """An identifier as the store keeps it: normalized (as in profiles, explanations and ``identity.changes``)."""

    kind: str
    value: str


class PreviewChange(_Model):
    """What would happen to one person (as ``identity.changes`` and ``profiles.updates`` would announce it)."""

    kind: Literal["created", "updated", "merged", "split", "erased"]
    profile_id: str
    merged_from: list[str] = Field(description="merged: the ids that would be retired into profile_id.")
    split_from: list[str] = Field(description="split: the ids identifiers would move from or to.")
    moved: list[PreviewIdentifier] = Field(description="split: the identifiers profile_id would take over.")


class PreviewConflict(_Model):
    """A merge that would be refused (``identity.changes`` type ``conflict``)."""

    reason: str = Field(description="limit_exceeded (a per-kind limit) or unlinked (an identity_unlink).")
    kind: str = Field(description="The identifier kind whose limit refused it.")
    limit: int
    profile_id: str
    other_profile_id: str
    identifier: PreviewIdentifier


class PreviewRejected(_Model):
    """An identifier of the event that would not be used (the event's other identifiers still count)."""

    kind: str
    value: str = Field(description="As sent.")
    reason: str
    message: str


class PreviewError(_Model):
    """Why an event would not be applied: the error its dead letter on ``touches.dlq`` would carry."""

    code: str = Field(description="invalid_message (the decoder's), unsupported_event, invalid_input, ...")
    message: str
    errors: list[FieldError] | None = Field(None, description="invalid_message: every bad field (at most 20).")


class PreviewEvent(_Model):
    """What one event of the batch would do, in the order sent, given the events before it."""

    index: int = Field(ge=0, description="The event's position in the request array.")
    event_id: str | None = Field(description="Null only when an invalid event has no usable event_id.")
    status: PreviewStatus = Field(
        description="applied; reordered (a late event: its evidence group would be re-resolved in time order); "
        "duplicate (its event_id was applied before, or came earlier in this batch); unresolved (no usable "
        "identifier); invalid (it would be a dead letter: see error)."
    )
    profile_id: str | None = Field(description="The person the event would land on (null when none).")
    changes: list[PreviewChange]
    conflicts: list[PreviewConflict]
    shared: list[PreviewIdentifier] = Field(description="Identifiers this event would make shared.")
    rejected: list[PreviewRejected]
    reused_by: str | None = Field(
        None, description="duplicate: the source of the first event when this one came with other content."
    )
    error: PreviewError | None = Field(None, description="Set when status is invalid.")


class PreviewSummary(_Model):
    """Counts over the whole batch."""

    events: int
    applied: int = Field(description="Events applied (reordered ones included).")
    reordered: int
    duplicates: int
    unresolved: int
    invalid: int
    persons_created: int
    persons_merged: int = Field(description="Profile ids that would be retired into another person.")
    splits: int = Field(description="Persons that would give identifiers away or take them over.")
    persons_erased: int
    conflicts: int = Field(description="Merges that would be refused.")
    newly_shared: int = Field(description="Distinct identifiers the events would make shared.")
    newly_contested: int = Field(description="Identifiers contested after the batch that are not now.")


class PreviewResponse(_Model):
    """What ``POST /v1/preview`` found: nothing was written (``dry_run``)."""

    dry_run: Literal[True] = Field(description="Always true: the preview wrote nothing to the store.")
    events: list[PreviewEvent] = Field(description="One per event sent, in order.")
    contested: list[PreviewIdentifier] = Field(
        description="Identifiers that would be contested after the batch (a lookup would answer ambiguous: another "
        "person claims them) and are not now."
    )
    summary: PreviewSummary


MAX_INGEST = 1000


class IngestItem(_Model):
    """What became of one event of ``POST /v1/touches``."""

    index: int = Field(description="Its position in the request (0-based; in JSON lines, among the lines).")
    event_id: str | None
    status: Literal["accepted", "duplicate", "invalid", "not_delivered"] = Field(
        description="accepted: on the touch topic, acknowledged by the broker; duplicate: this id was applied "
        "already or came earlier in the request (nothing sent); invalid: refused, see error (the decoder's "
        "field errors); not_delivered: the broker did not acknowledge it (send the batch again)."
    )
    error: dict[str, Any] | None = None


class IngestResponse(_Model):
    """The answer of ``POST /v1/touches`` (202, or 503 when the broker did not take everything)."""

    accepted: int
    duplicate: int
    invalid: int
    not_delivered: int
    items: list[IngestItem]
    status: Literal["error"] | None = None
    code: str | None = None
    message: str | None = None


class HookResponse(_Model):
    """A webhook receiver's answer: the events it produced (none for a vendor's connection test)."""

    status: Literal["ok"]
    events: int
    event_ids: list[str] = Field(default_factory=list)


_MODELS: tuple[type[BaseModel], ...] = (
    BatchLookupRequest,
    BatchLookupResponse,
    Candidate,
    ChannelReport,
    ChannelRow,
    ErrorResponse,
    Explanation,
    HookResponse,
    IdentifierQuery,
    IngestResponse,
    LookupResult,
    PreviewResponse,
    ProfileResponse,
    ScreenPopCard,
)


def _touch_events(limit: int, description: str | None = None) -> dict[str, Any]:
    """A request body of 1 to ``limit`` touch events."""
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "maxItems": limit, "items": _ref("TouchEvent")}
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_VIEW = {
    "name": "view",
    "in": "query",
    "required": False,
    "description": "card (default): the screen-pop card; full: the whole golden profile.",
    "schema": {"type": "string", "enum": ["card", "full"], "default": "card"},
}
_MISDIRECTED = {
    "421": _json(
        "ErrorResponse",
        "host_not_allowed: the server runs without tokens and the Host header is not localhost, 127.x.x.x or "
        "[::1] (any port); a web page's name rebound to 127.0.0.1 cannot read profiles.",
    ),
}
_ERRORS = {
    "400": _json("ErrorResponse", "The request is malformed; the message says what is wrong."),
    "401": _json("ErrorResponse", "No valid bearer token."),
    **_MISDIRECTED,
}
_STORE_ERRORS = {
    "503": _json(
        "ErrorResponse",
        "store_unavailable: Redis did not answer in time or cannot answer now (a lost connection, a "
        "long script, a paused or loading server); retry later.",
    ),
}


_PERIOD = [
    {"name": "from", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
    {"name": "to", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
]
_REPORT_PARAMETERS = [
    {"name": "model", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["first", "last", "last_non_direct", "position", "linear", "rank"]}},
    *_PERIOD,
    {"name": "format", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}},
]  # fmt: skip


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the lookup API."""
    _, defs = models_json_schema(
        [*((m, "serialization") for m in _MODELS), (TouchEvent, "validation")],  # the preview's request items
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idstream lookup API",
            "version": version,
            "description": (
                "Who is this caller? Reads the live identity graph. Every endpoint but /healthz, /readyz "
                "and /metrics needs `Authorization: Bearer <token>` (tokens come from IDSTREAM_API_TOKENS). "
                "Without tokens the server listens on loopback only and answers only requests whose Host is "
                "localhost, 127.x.x.x or [::1] (421 otherwise). A request body must be application/json (415)."
            ),
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/lookup": {
                "get": {
                    "summary": "The person holding one identifier",
                    "operationId": "lookup",
                    "parameters": [
                        {"name": "kind", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "value", "in": "query", "required": True, "schema": {"type": "string"}},
                        _VIEW,
                    ],
                    "responses": {
                        "200": _json("LookupResult", "found, or ambiguous (with candidates, no single profile)."),
                        "404": _json("LookupResult", "not_found: no person holds this identifier."),
                        **_ERRORS,
                        **_STORE_ERRORS,
                    },
                }
            },
            "/v1/lookup/batch": {
                "post": {
                    "summary": f"Up to {MAX_BATCH} identifiers at once",
                    "operationId": "lookupBatch",
                    "parameters": [_VIEW],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BatchLookupRequest")}},
                    },
                    "responses": {
                        "200": _json("BatchLookupResponse", "One result per identifier, in order."),
                        **_ERRORS,
                        "413": _json("ErrorResponse", "The body is too large."),
                        "415": _json("ErrorResponse", "The body is not Content-Type: application/json."),
                        **_STORE_ERRORS,
                    },
                }
            },
            "/v1/profiles/{profile_id}": {
                "get": {
                    "summary": "A golden profile by id (retired ids answer with their survivor)",
                    "operationId": "getProfile",
                    "parameters": [
                        {"name": "profile_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            **_VIEW,
                            "description": "full (default here): the golden profile; card: the screen-pop card.",
                            "schema": {"type": "string", "enum": ["card", "full"], "default": "full"},
                        },
                    ],
                    "responses": {
                        "200": _json("ProfileResponse", "The live profile."),
                        "404": _json("ErrorResponse", "No such profile."),
                        **_ERRORS,
                        **_STORE_ERRORS,
                    },
                }
            },
            "/v1/explain": {
                "get": {
                    "summary": "Why identifiers are one person, or why not",
                    "operationId": "explain",
                    "parameters": [
                        {"name": "profile_id", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "kind", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "value", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "other_kind", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "other_value", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json("Explanation", "The evidence (give profile_id, or kind+value[+other_*])."),
                        "404": _json("ErrorResponse", "No such profile or identifier."),
                        **_ERRORS,
                        **_STORE_ERRORS,
                    },
                }
            },
            "/v1/preview": {
                "post": {
                    "summary": f"A dry run: what up to {MAX_PREVIEW} touch events would do, writing nothing",
                    "operationId": "preview",
                    "description": (
                        "The events are decoded as the stream decodes them and resolved in order by the worker's "
                        "engine on the state they would meet now; nothing is written. Invalid events are reported "
                        "per item (status invalid, with the decoder's error) and the others are still previewed."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": _touch_events(
                                    MAX_PREVIEW, "Touch events in the wire format (touch-event.v1.json)."
                                )
                            }
                        },
                    },
                    "responses": {
                        "200": _json("PreviewResponse", "What each event would do, and a summary; dry_run: true."),
                        **_ERRORS,
                        "413": _json("ErrorResponse", "The body is too large (over 1 MiB)."),
                        "415": _json("ErrorResponse", "The body is not Content-Type: application/json."),
                        **_STORE_ERRORS,
                    },
                }
            },
            "/v1/reports/calls": {
                "get": {
                    "summary": "The call report: answered, missed and returned calls by channel, day and hour",
                    "operationId": "callReport",
                    "parameters": [
                        *_PERIOD,
                        {
                            "name": "within",
                            "in": "query",
                            "required": False,
                            "description": "Minutes to return a missed call in (an answered call, same person).",
                            "schema": {"type": "integer", "minimum": 1, "default": 30},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "total, channels, days and hours: calls, answered, missed, busy, "
                            "missed_known, returned, returned_share, avg_wait_s.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_ERRORS,
                        "503": _json("ErrorResponse", "No warehouse is configured, or it is unavailable."),
                    },
                }
            },
            "/v1/touches": {
                "post": {
                    "summary": f"Touch events in: up to {MAX_INGEST}, produced and acknowledged by the broker",
                    "operationId": "ingest",
                    "description": (
                        "Needs an ingest token (IDSTREAM_INGEST_TOKENS): a lookup token cannot write, an ingest token "
                        "cannot read. A JSON array (or one object), or JSON lines (application/x-ndjson). Each event "
                        "is decoded as the stream decodes it; valid ones not applied before are produced to the "
                        "touch topic of their type and the answer comes once the broker acknowledged them. Idempotent "
                        "by event_id: sending a batch again is safe."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _touch_events(MAX_INGEST)},
                            "application/x-ndjson": {"schema": {"type": "string", "description": "JSON lines."}},
                        },
                    },
                    "responses": {
                        "202": _json("IngestResponse", "What became of each event."),
                        **_ERRORS,
                        "403": _json("ErrorResponse", "writing_disabled: the server has no ingest tokens."),
                        "413": _json("ErrorResponse", "The body is too large (over 8 MiB)."),
                        "415": _json("ErrorResponse", "The body is not JSON or JSON lines."),
                        "503": _json(
                            "IngestResponse",
                            "broker_unavailable: the broker did not acknowledge every event (Retry-After); the items "
                            "say which were not delivered. Also ingest_unavailable: no broker configured.",
                        ),
                    },
                }
            },
            "/v1/hooks/{source}/{secret}": {
                "post": {
                    "summary": "A vendor's webhook (tilda, calltouch, comagic, amocrm, bitrix24, form), as sent",
                    "operationId": "hook",
                    "security": [],
                    "description": (
                        "Authenticated by the source's secret in the path (IDSTREAM_HOOK_SECRETS); a wrong secret "
                        "answers 404 and lands nothing. Form fields, JSON or (GET) query parameters, as the vendor "
                        "sends them; see the README's Integrations. A payload that cannot be mapped answers 400 "
                        "and goes to the dead-letter topic with its raw body."
                    ),
                    "parameters": [
                        {
                            "name": "source",
                            "in": "path",
                            "required": True,
                            "schema": {
                                "type": "string",
                                "enum": ["tilda", "calltouch", "comagic", "amocrm", "bitrix24", "form"],
                            },
                        },
                        {"name": "secret", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json("HookResponse", "The events produced and acknowledged."),
                        "400": _json("ErrorResponse", "unmappable_payload: the reason; the raw body is dead-lettered."),
                        "404": _json("ErrorResponse", "No such source, or a wrong secret."),
                        "503": _json("ErrorResponse", "broker_unavailable: send it again later (Retry-After)."),
                    },
                }
            },
            "/v1/reports/channels": {
                "get": {
                    "summary": "The channel report from the warehouse (for dashboards)",
                    "operationId": "channelReport",
                    "parameters": _REPORT_PARAMETERS,
                    "responses": {
                        "200": {
                            "description": "The report (text/csv with format=csv).",
                            "content": {
                                "application/json": {"schema": _ref("ChannelReport")},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "503": _json("ErrorResponse", "The warehouse is not reachable."),
                        **_ERRORS,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness (no token needed)",
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": {"description": "The server is up."}, **_MISDIRECTED},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis answers (no token needed)",
                    "operationId": "ready",
                    "security": [],
                    "responses": {
                        "200": {"description": "Ready to answer lookups."},
                        "503": {"description": "Redis does not answer; the reason is in the body."},
                        **_MISDIRECTED,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: counts and timings, no personal data (no token needed)",
                    "operationId": "metrics",
                    "security": [],
                    "responses": {"200": {"description": "The Prometheus text exposition format."}, **_MISDIRECTED},
                }
            },
        },
    }
