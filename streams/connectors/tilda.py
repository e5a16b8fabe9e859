"""Tilda form webhooks ("Webhook: приём данных из форм"): POST, form fields (or JSON).

The form's fields as the site owner named them (``Name``, ``Phone``, ``Email`` by default, any case), Tilda's
``tranid`` (the submission: the event id, so a retry is the same event), ``formid``, ``formname`` and, when
"send cookies" is on, ``COOKIES`` with ``_ga`` and ``_ym_uid`` (the visitor's browser) and ``TILDAUTM`` (the UTM
tags, ``utm_source=...|||utm_medium=...``). Hidden ``utm_*`` fields win over the cookie. Other plain fields are
kept as attributes under their own names. The connection test (``test=test``) lands nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from streams.connectors import (
    HookRequest,
    MappingError,
    client_ids_from_cookies,
    payload_of,
    vendor_event_id,
    wire_event,
)
from streams.connectors.fields import UTM_TAGS, Fields

_IDENTITY_FIELDS = {
    "phone": ("phone", "tel", "telephone", "телефон"),
    "email": ("email", "e-mail", "mail", "почта"),
}
_NAME_FIELDS = ("name", "fio", "имя", "фио")
_TILDA_FIELDS = frozenset({"tranid", "formid", "formname", "cookies", "test", "api_key", "apikey"})


def _tilda_utm(cookies: str) -> dict[str, str]:
    """UTM tags from the ``TILDAUTM`` cookie (``utm_source=vk|||utm_medium=social``, URL-encoded)."""
    for part in cookies.split(";"):
        name, _, value = part.strip().partition("=")
        if name != "TILDAUTM":
            continue
        out: dict[str, str] = {}
        for pair in unquote(value).split("|||"):
            key, _, tag = pair.partition("=")
            key = key.removeprefix("amp;").strip().lower()
            if key.startswith("utm_") and key[4:] in UTM_TAGS and tag.strip():
                out[key[4:]] = tag.strip()[:1024]
        return out
    return {}


def touches(hook: HookRequest) -> list[dict[str, Any]] | None:
    payload = payload_of(hook)
    if {k.lower() for k in payload} <= {"test"} and str(payload.get("test", "")).lower() == "test":
        return None  # Tilda's connection test
    fields = Fields(payload)
    identifiers: list[dict[str, str]] = []
    for kind, names in _IDENTITY_FIELDS.items():
        value = fields.text(*names)
        if value:
            identifiers.append({"kind": kind, "value": value[:256]})
    cookies = fields.text("COOKIES") or ""
    identifiers += [{"kind": k, "value": v} for k, v in client_ids_from_cookies(cookies)]
    if not identifiers:
        raise MappingError("the form has no phone, e-mail or visitor cookies (COOKIES with _ga or _ym_uid)")
    attributes: dict[str, Any] = {}
    name = fields.text(*_NAME_FIELDS)
    if name:
        attributes["name"] = name[:256]
    for key, label in (("formid", "form"), ("formname", "form_name")):
        value = fields.text(key)
        if value:
            attributes[label] = value[:256]
    taken = {n for names in _IDENTITY_FIELDS.values() for n in names} | set(_NAME_FIELDS) | _TILDA_FIELDS
    for key, value in payload.items():
        folded = key.lower()
        if folded in taken or folded.startswith("utm_") or not isinstance(value, str) or not value.strip():
            continue
        if len(attributes) < 100:
            attributes.setdefault(key[:64], value.strip()[:4096])
    utm = {**_tilda_utm(cookies), **fields.utm()}  # the form's own utm_ fields win over the TILDAUTM cookie
    return [
        wire_event(
            "tilda",
            vendor_event_id("tilda", fields.text("tranid"), payload),
            "form_submit",
            occurred_at=hook.received_at,
            identifiers=identifiers,
            attributes=attributes,
            utm=utm,
        )
    ]
