"""The generic form receiver: any site's form, with the field-to-identifier mapping the operator configures.

``IDSTREAM_HOOK_FORMS='{"landing": {"tel": "phone", "mail": "email", "fio": "name", "city": "attribute:city"}}'``
and a form posting to ``/v1/hooks/form/<secret>?form=landing`` (JSON or form-urlencoded). A field maps to an
identifier kind (``phone``, ``email``, ``ga_client_id``, ``ym_client_id``, ``messenger_id``, ``crm_contact_id`` or
a declared kind), to ``name``, ``project`` or ``page``, or to ``attribute:<name>``. ``utm_*`` fields, a
``cookies`` field (``_ga``, ``_ym_uid``) and ``event_id`` are read without mapping; without an ``event_id`` the
event id is a digest of the body, so a form re-posted as it was is the same event.
"""

from __future__ import annotations

from typing import Any

from streams.connectors import (
    HookRequest,
    MappingError,
    client_ids_from_cookies,
    payload_of,
    vendor_event_id,
    wire_event,
)
from streams.connectors.fields import UTM_TAGS

_PLAIN_ATTRIBUTES = frozenset({"name", "project", "page"})


def touches(hook: HookRequest) -> list[dict[str, Any]]:
    payload = payload_of(hook)
    forms = hook.options.get("forms", {})
    name = hook.query.get("form") or str(payload.get("form", ""))
    if not name:
        raise MappingError("no form named: add ?form=<name> to the receiver's address (IDSTREAM_HOOK_FORMS)")
    mapping = forms.get(name)
    if mapping is None:
        raise MappingError(f"form {name[:64]!r} is not configured in IDSTREAM_HOOK_FORMS")
    identifiers: list[dict[str, str]] = []
    attributes: dict[str, Any] = {"form": name}
    for fieldname, target in mapping.items():
        value = payload.get(fieldname)
        if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
            continue
        text = str(value).strip()
        if target in _PLAIN_ATTRIBUTES:
            attributes[target] = text[:4096]
        elif target.startswith("attribute:"):
            attributes[target.removeprefix("attribute:")[:64]] = text[:4096]
        else:
            identifiers.append({"kind": target, "value": text[:256]})
    cookies = payload.get("cookies") or payload.get("COOKIES")
    if isinstance(cookies, str):
        identifiers += [{"kind": k, "value": v} for k, v in client_ids_from_cookies(cookies)]
    if not identifiers:
        mapped = ", ".join(sorted(mapping)) or "none"
        raise MappingError(f"form {name[:64]!r}: none of its mapped fields ({mapped[:200]}) holds a value")
    utm = {tag: value for tag in UTM_TAGS if isinstance(value := payload.get(f"utm_{tag}"), str) and value}
    given = payload.get("event_id")
    return [
        wire_event(
            "form",
            vendor_event_id("form", given if isinstance(given, str) else None, payload, name),
            "form_submit",
            occurred_at=hook.received_at,
            identifiers=identifiers,
            attributes=attributes,
            utm=utm,
        )
    ]
