"""Calltouch call webhooks ("Вебхуки по лидам", GET or POST with the parameters the operator picks).

Configure the webhook "on call completion" with these parameters (names are read in any case, with the
aliases the Calltouch API uses): ``callId``, ``callerphone`` (required), ``phonenumber`` (the tracking number
dialled), ``timestamp`` (Unix seconds) or ``calltime`` (local time of the account, ``IDSTREAM_HOOK_TIMEZONE``),
``successful`` or ``status``, ``duration`` (talk seconds), ``waittime``, ``clientId`` (Google Analytics),
``yaClientId`` (Yandex Metrica), ``utm_source``..``utm_term`` (else ``source``/``medium``), ``callUrl``,
``manager``. The event id is the call's (``calltouch-<callId>``), so the webhook of the call's start and of its
end are one event: whichever comes first lands, so choose the one at completion.
"""

from __future__ import annotations

from typing import Any

from streams.connectors import HookRequest, MappingError, payload_of, vendor_event_id, wire_event
from streams.connectors.fields import Fields, parse_time, zone


def touches(hook: HookRequest) -> list[dict[str, Any]]:
    payload = payload_of(hook)
    f = Fields(payload)
    phone = f.text("callerphone", "callerNumber", "caller_phone", "phone")
    if not phone:
        raise MappingError("no caller number: send the callerphone parameter")
    identifiers = [{"kind": "phone", "value": phone[:256]}]
    ga = f.text("clientId", "gaClientId", "guaClientId", "ga_client_id")
    if ga:
        identifiers.append({"kind": "ga_client_id", "value": ga[:256]})
    ym = f.text("yaClientId", "ymClientId", "ym_client_id", "ym_uid")
    if ym:
        identifiers.append({"kind": "ym_client_id", "value": ym[:256]})
    tz = zone(hook.options.get("timezone"))
    moment = parse_time(f.raw("timestamp", "unixtime"), tz, field="timestamp") or parse_time(
        f.raw("calltime", "date", "callTime"), tz, field="calltime"
    )
    call: dict[str, Any] = {}
    answered = f.flag("successful", "status", "callStatus")
    if answered is not None:
        call["status"] = "answered" if answered else "missed"
    elif (f.text("status") or "").lower() == "busy":
        call["status"] = "busy"
    for key, names in (("talk_s", ("duration", "talkDuration")), ("wait_s", ("waittime", "waitingConnect"))):
        value = f.number(*names)
        if value is not None:
            call[key] = min(value, 86_400.0)
    tracking = f.text("phonenumber", "phoneNumber", "trackingNumber")
    if tracking:
        call["tracking_number"] = tracking[:128]
    operator = f.text("manager", "operator", "employee")
    if operator:
        call["operator"] = operator[:128]
    utm = f.utm()
    if not utm:
        utm = {tag: v[:1024] for tag in ("source", "medium") if (v := f.text(tag))}
    attributes: dict[str, Any] = {}
    labels: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("page", ("callUrl", "url")),
        ("city", ("city",)),
        ("hostname", ("hostname",)),
    )
    for label, aliases in labels:
        found = f.text(*aliases)
        if found:
            attributes[label] = found[:1024]
    return [
        wire_event(
            "calltouch",
            vendor_event_id("calltouch", f.text("callId", "callid", "call_id"), payload),
            "call",
            occurred_at=moment or hook.received_at,
            identifiers=identifiers,
            attributes=attributes,
            call=call,
            utm=utm,
        )
    ]
