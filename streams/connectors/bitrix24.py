"""Bitrix24 deal events (an outgoing webhook, or an application's handler of ONCRMDEALADD / ONCRMDEALUPDATE).

Bitrix24 posts form fields: ``event``, ``data[FIELDS][ID]`` (the deal's id, nothing else), ``ts`` and ``auth[...]``
with ``auth[application_token]``, the token the portal shows when the webhook is created: the receiver compares
it with ``IDSTREAM_BITRIX24_APP_TOKEN`` (the strongest check Bitrix24 offers), on top of the secret in the path.
The deal and its contacts are read through the portal's REST API with an incoming webhook
(``IDSTREAM_BITRIX24_URL``: ``https://<portal>/rest/<user>/<secret>/``): ``crm.deal.get``,
``crm.deal.contact.items.get`` (the primary contact first), ``crm.contact.get``. Each event becomes a
``crm_stage`` event of that contact (``crm_contact_id: bitrix24:<id>``, its ``PHONE`` and ``EMAIL`` values, its
name; the deal's ``UTM_*``); the stage is ``won`` or ``lost`` when the stage's semantics say so (``S``, ``F``),
else the stage id; the pipeline is the deal's category; the amount its ``OPPORTUNITY``. Events arrive through a
queue, late and repeated: the event id names the deal, its stage and its ``DATE_MODIFY``, so a repeat is the same
event. Contact events are acknowledged and land nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.connectors import HookRequest, MappingError, event_id, payload_of, wire_event
from streams.connectors.http import get_json

__all__ = ["BitrixClient", "touches"]

_DEAL_EVENTS = frozenset({"ONCRMDEALADD", "ONCRMDEALUPDATE"})
_UTM = ("SOURCE", "MEDIUM", "CAMPAIGN", "CONTENT", "TERM")


@dataclass(frozen=True)
class BitrixClient:
    """A portal's REST API through an incoming webhook; ``app_token``: what its outgoing webhook sends."""

    webhook_url: str  # https://<portal>/rest/<user>/<secret>/
    app_token: str | None = None
    timeout: float = 10.0

    async def call(self, method: str, **params: str) -> Any:
        """A method's ``result``, or None when Bitrix24 has none."""
        body = await get_json(self.webhook_url.rstrip("/") + f"/{method}.json", params=params, timeout=self.timeout)
        return None if body is None else body.get("result")


def _values(contact: dict[str, Any], field: str) -> list[str]:
    """A multi-field (``PHONE``, ``EMAIL``): a list of ``{VALUE, VALUE_TYPE}``, absent when empty."""
    out = []
    for item in contact.get(field) or []:
        value = item.get("VALUE") if isinstance(item, dict) else None
        if isinstance(value, str) and value.strip():
            out.append(value.strip()[:256])
    return out


def _name(contact: dict[str, Any]) -> str | None:
    parts = [contact.get(k) for k in ("NAME", "SECOND_NAME", "LAST_NAME")]
    text = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
    return text[:256] or None


async def touches(hook: HookRequest) -> list[dict[str, Any]]:
    payload = payload_of(hook)
    event = str(payload.get("event", "")).upper()
    if not event:
        raise MappingError("not a Bitrix24 event: no event field")
    client = hook.options.get("bitrix24")
    if not isinstance(client, BitrixClient):
        raise MappingError("Bitrix24 events carry only ids: set IDSTREAM_BITRIX24_URL (an incoming webhook)")
    auth = payload.get("auth")
    given = str(auth.get("application_token", "")) if isinstance(auth, dict) else ""
    if client.app_token and not hmac.compare_digest(given.encode(), client.app_token.encode()):
        raise MappingError("auth[application_token] is not this portal's (IDSTREAM_BITRIX24_APP_TOKEN)")
    if event not in _DEAL_EVENTS:
        return []  # contacts, leads, deletions: nothing to land until a deal moves
    fields = (payload.get("data") or {}).get("FIELDS") if isinstance(payload.get("data"), dict) else None
    deal_id = str((fields or {}).get("ID", ""))
    if not deal_id.isdigit():
        raise MappingError("data[FIELDS][ID] (the deal's id) is required")
    deal = await client.call("crm.deal.get", id=deal_id)
    if not isinstance(deal, dict):
        raise MappingError(f"Bitrix24 deal {deal_id} was not found")
    links = await client.call("crm.deal.contact.items.get", id=deal_id) or []
    ranked = sorted((c for c in links if isinstance(c, dict)), key=lambda c: c.get("IS_PRIMARY") != "Y")
    contact_id = str(ranked[0].get("CONTACT_ID")) if ranked else str(deal.get("CONTACT_ID") or "")
    if not contact_id.isdigit():
        raise MappingError(f"Bitrix24 deal {deal_id} has no contact to attribute it to")
    contact = await client.call("crm.contact.get", id=contact_id)
    if not isinstance(contact, dict):
        raise MappingError(f"Bitrix24 contact {contact_id} of deal {deal_id} was not found")
    identifiers = [{"kind": "crm_contact_id", "value": f"bitrix24:{contact_id}"}]
    identifiers += [{"kind": "phone", "value": v} for v in _values(contact, "PHONE")]
    identifiers += [{"kind": "email", "value": v} for v in _values(contact, "EMAIL")]
    semantic = str(deal.get("STAGE_SEMANTIC_ID") or "")
    stage = {"S": "won", "F": "lost"}.get(semantic) or str(deal.get("STAGE_ID") or "")
    if not stage:
        raise MappingError(f"Bitrix24 deal {deal_id} has no stage")
    crm: dict[str, Any] = {"deal_id": f"bitrix24:{deal_id}", "stage": stage[:128]}
    if deal.get("CATEGORY_ID") is not None:
        crm["pipeline"] = str(deal["CATEGORY_ID"])[:128]
    try:
        if deal.get("OPPORTUNITY") not in (None, ""):
            crm["amount"] = float(deal["OPPORTUNITY"])
    except (TypeError, ValueError):
        raise MappingError(f"OPPORTUNITY of deal {deal_id} is not a number") from None
    modified = str(deal.get("DATE_MODIFY") or "")
    try:
        moment = datetime.fromisoformat(modified) if modified else hook.received_at
    except ValueError:
        raise MappingError(f"DATE_MODIFY of deal {deal_id} is not a time: {modified[:40]!r}") from None
    if moment.tzinfo is None:
        moment = hook.received_at
    attributes: dict[str, Any] = {}
    name = _name(contact)
    if name:
        attributes["name"] = name
    utm = {tag.lower(): str(deal[f"UTM_{tag}"])[:1024] for tag in _UTM if deal.get(f"UTM_{tag}")}
    out = wire_event(
        "bitrix24",
        event_id("bitrix24", deal_id, stage),  # one event per stage: an edit that keeps the stage is a repeat
        "crm_stage",
        occurred_at=moment,
        identifiers=identifiers[:50],
        attributes=attributes,
        utm=utm or None,
    )
    out["crm"] = crm
    return [out]
