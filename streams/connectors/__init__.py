"""Connectors: vendors' payloads turned into wire-format touch events (``schemas.touch.TouchEvent`` dicts).

Each webhook connector is a pure function of one :class:`HookRequest` (no I/O, except where a vendor's event
carries only ids and the connector is given a client to read the details): it returns the events, ``None`` for a
vendor's test request, or raises :class:`MappingError` naming what is missing. Unknown fields are kept: the
vendor's payload fields that are not mapped go into ``attributes`` (flat, as text) under their own names only
when they are plain values; the rest stays in the dead-letter record if mapping fails.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from identity import InvalidInput

__all__ = [
    "CONNECTORS",
    "Connector",
    "HookRequest",
    "MappingError",
    "client_ids_from_cookies",
    "event_id",
    "nested_form",
    "payload_of",
    "vendor_event_id",
    "wire_event",
]


class MappingError(InvalidInput):
    """A vendor payload that cannot become a touch event: the reason names the field."""

    code = "unmappable_payload"


@dataclass(frozen=True)
class HookRequest:
    """One webhook call as the receiver got it."""

    source: str
    method: str
    content_type: str
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: the operator's configuration of this source (the generic form's field mappings)
    options: Mapping[str, Any] = field(default_factory=dict)


_KEY_PART = re.compile(r"\[([^\]]*)\]")


def nested_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """PHP-style form fields as nested objects: ``leads[status][0][id]=5`` gives
    ``{"leads": {"status": {"0": {"id": "5"}}}}`` (list indexes stay keys; a repeated plain key keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def payload_of(hook: HookRequest) -> dict[str, Any]:
    """The payload as one object: JSON, or form fields (nested), or the query string of a GET."""
    body = hook.body
    if hook.content_type == "application/json" or (body[:1] in (b"{", b"[") and hook.content_type != "text/plain"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MappingError(f"the body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(parsed, dict):
            raise MappingError("the body is JSON but not an object")
        return parsed
    pairs: list[tuple[str, str]] = list(hook.query.items())
    if body.strip():
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MappingError("the form body is not UTF-8") from None
        pairs += parse_qsl(text, keep_blank_values=True)
    return nested_form(pairs)


_GA = re.compile(r"(?:^|;)\s*_ga=([^;]+)")
_YM = re.compile(r"(?:^|;)\s*_ym_uid=(\d+)")


def client_ids_from_cookies(cookies: str) -> list[tuple[str, str]]:
    """The Google Analytics and Yandex Metrica client ids in a ``Cookie``-style string (``_ga``, ``_ym_uid``)."""
    out: list[tuple[str, str]] = []
    ga = _GA.search(cookies)
    if ga:
        out.append(("ga_client_id", ga.group(1).strip()))
    ym = _YM.search(cookies)
    if ym:
        out.append(("ym_client_id", ym.group(1)))
    return out


def event_id(source: str, *parts: object) -> str:
    """A stable event id from a vendor's own ids, so a redelivered webhook is the same event."""
    text = "|".join(str(p) for p in parts)
    if len(text) <= 100 and re.fullmatch(r"[\w.:@-]+", text):
        return f"{source}-{text}"
    return f"{source}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


def vendor_event_id(source: str, vendor_id: str | None, payload: Mapping[str, Any], *scope: str) -> str:
    """The event id of a vendor's notification: its own id, or, when it sends none, a digest of the whole payload
    (a redelivery carries the same payload, so it is the same event)."""
    return event_id(source, *scope, vendor_id or repr(sorted(payload.items())))


def wire_event(
    source: str,
    eid: str,
    event_type: str,
    *,
    occurred_at: datetime,
    identifiers: list[dict[str, str]],
    attributes: dict[str, Any],
    utm: dict[str, str] | None = None,
    call: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One touch event in the wire format (``schemas/json/touch-event.v1.json``); empty parts left out."""
    event: dict[str, Any] = {
        "event_id": eid,
        "type": event_type,
        "occurred_at": occurred_at.isoformat(),
        "source": source,
        "identifiers": identifiers,
        "attributes": attributes,
    }
    if utm:
        event["utm"] = utm
    if call:
        event["call"] = call
    return event


Mapped = list[dict[str, Any]] | None
#: A connector: the events of one webhook call (None: a vendor's test), at once or after reading the vendor's API.
Connector = Callable[[HookRequest], Mapped | Awaitable[Mapped]]


def _registry() -> dict[str, Connector]:
    from streams.connectors import amocrm, bitrix24, calltouch, comagic, form, tilda  # noqa: PLC0415

    return {
        "tilda": tilda.touches,
        "calltouch": calltouch.touches,
        "comagic": comagic.touches,
        "form": form.touches,
        "amocrm": amocrm.touches,
        "bitrix24": bitrix24.touches,
    }


#: source name (the path's ``{source}``) -> connector
CONNECTORS: Mapping[str, Connector] = _registry()
