"""CoMagic / UIS call notifications (HTTP, with a body template the operator writes; usually JSON).

Configure the notifications "Завершение звонка" and "Потерянный звонок" (POST, JSON) with a template naming
these variables: ``call_session_id``, ``contact_phone_number`` (required), ``virtual_phone_number``,
``notification_time`` (the account's local time, ``IDSTREAM_HOOK_TIMEZONE``) or ``start_time``, ``is_lost``,
``wait_time_duration``, ``talk_time_duration``, ``employee_full_name``, ``contact_full_name``,
``ym_client_id``, ``ua_client_id``, ``utm_source``..``utm_term``, ``site_domain_name``. The event id is the
call session's, so several notifications of one call are one event.
"""

from __future__ import annotations

from typing import Any

from streams.connectors import HookRequest, MappingError, payload_of, vendor_event_id, wire_event
from streams.connectors.fields import Fields, parse_time, zone


def touches(hook: HookRequest) -> list[dict[str, Any]]:
    payload = payload_of(hook)
    f = Fields(payload)
    phone = f.text("contact_phone_number", "calling_phone_number", "caller")
    if not phone:
        raise MappingError("no caller number: put contact_phone_number in the notification template")
    identifiers = [{"kind": "phone", "value": phone[:256]}]
    ym = f.text("ym_client_id")
    if ym:
        identifiers.append({"kind": "ym_client_id", "value": ym[:256]})
    ga = f.text("ua_client_id", "ga_client_id")
    if ga:
        identifiers.append({"kind": "ga_client_id", "value": ga[:256]})
    tz = zone(hook.options.get("timezone"))
    moment = parse_time(f.raw("notification_timestamp"), tz, field="notification_timestamp") or parse_time(
        f.raw("start_time", "notification_time"), tz, field="notification_time"
    )
    call: dict[str, Any] = {}
    lost = f.flag("is_lost")
    mnemonic = (f.text("notification_mnemonic", "notification_name") or "").lower()
    if lost is None and ("lost" in mnemonic or "потерян" in mnemonic):
        lost = True
    if lost is not None:
        call["status"] = "missed" if lost else "answered"
    for key, names in (("wait_s", ("wait_time_duration",)), ("talk_s", ("talk_time_duration",))):
        value = f.number(*names)
        if value is not None:
            call[key] = min(value, 86_400.0)
    for key, variable in (("tracking_number", "virtual_phone_number"), ("operator", "employee_full_name")):
        label = f.text(variable)
        if label:
            call[key] = label[:128]
    attributes: dict[str, Any] = {}
    name = f.text("contact_full_name")
    if name:
        attributes["name"] = name[:256]
    site = f.text("site_domain_name")
    if site:
        attributes["site"] = site[:256]
    return [
        wire_event(
            "comagic",
            vendor_event_id("comagic", f.text("call_session_id"), payload),
            "call",
            occurred_at=moment or hook.received_at,
            identifiers=identifiers,
            attributes=attributes,
            call=call,
            utm=f.utm(),
        )
    ]
