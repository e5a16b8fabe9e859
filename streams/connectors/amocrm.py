"""amoCRM deal webhooks (Settings → Integrations → Web hooks: "сделка добавлена", "смена статуса сделки").

amoCRM posts form fields (``leads[status][0][id]``, ``[status_id]``, ``[old_status_id]``, ``[pipeline_id]``,
``[price]``, ``[last_modified]``; ``account[subdomain]``) and nothing of the client: the connector reads the
deal's contacts through the amoCRM API v4 (``GET /api/v4/leads/{id}?with=contacts``, then
``GET /api/v4/contacts/{id}``) with the account's long-lived token (``IDSTREAM_AMOCRM_URL``,
``IDSTREAM_AMOCRM_TOKEN``). Each deal change becomes a ``crm_stage`` event of the deal's main contact
(``crm_contact_id: amocrm:<contact id>``, the contact's phones and e-mails, its name); the stage is the
status id (142 won and 143 lost in every pipeline, as idstream's defaults say), the pipeline its id, the
amount the deal's price. The event id names the deal, its status and the time of the change, so a
redelivered webhook is the same event. Contact webhooks are acknowledged and land nothing (the next deal
event reads the contact as it is then).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.connectors import HookRequest, MappingError, event_id, payload_of, wire_event
from streams.connectors.http import get_json

__all__ = ["AmoClient", "touches"]

#: Contact fields holding identifiers, by their field_code.
_FIELD_KINDS = {"PHONE": "phone", "EMAIL": "email"}


@dataclass(frozen=True)
class AmoClient:
    """The amoCRM API v4 of one account."""

    base_url: str  # https://<subdomain>.amocrm.ru
    token: str
    timeout: float = 10.0

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        """One object, or None when amoCRM has none (204 or 404)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return await get_json(self.base_url.rstrip("/") + path, params=params, headers=headers, timeout=self.timeout)


def _contact_identifiers(contact: dict[str, Any]) -> list[dict[str, str]]:
    out = [{"kind": "crm_contact_id", "value": f"amocrm:{contact['id']}"}]
    for field in contact.get("custom_fields_values") or []:  # null, not [], when there are none
        kind = _FIELD_KINDS.get(str(field.get("field_code") or ""))
        if kind is None:
            continue
        for value in field.get("values") or []:
            text = value.get("value") if isinstance(value, dict) else None
            if isinstance(text, str) and text.strip():
                out.append({"kind": kind, "value": text.strip()[:256]})
    return out[:50]


def _main_contact_id(lead: dict[str, Any]) -> int | None:
    contacts = (lead.get("_embedded") or {}).get("contacts") or []
    ranked = sorted(contacts, key=lambda c: not c.get("is_main"))
    for contact in ranked:
        if isinstance(contact.get("id"), int):
            return int(contact["id"])
    return None


def _changes(payload: dict[str, Any]) -> list[dict[str, Any]]:
    leads = payload.get("leads")
    if not isinstance(leads, dict):
        return []
    out = []
    for action in ("add", "status", "update"):
        items = leads.get(action)
        if isinstance(items, dict):
            out += [item for _, item in sorted(items.items()) if isinstance(item, dict)]
    return out


async def touches(hook: HookRequest) -> list[dict[str, Any]] | None:
    payload = payload_of(hook)
    changes = _changes(payload)
    if not changes:
        if isinstance(payload.get("contacts"), dict) or isinstance(payload.get("account"), dict):
            return []  # a contact or another entity's change: nothing to land until a deal moves
        raise MappingError("not an amoCRM webhook: no leads[...] or contacts[...] fields")
    client = hook.options.get("amocrm")
    if not isinstance(client, AmoClient):
        raise MappingError(
            "amoCRM deal webhooks carry no contact: set IDSTREAM_AMOCRM_URL and IDSTREAM_AMOCRM_TOKEN so the "
            "receiver can read the deal's contact"
        )
    events = []
    for change in changes:
        lead_id, status = str(change.get("id") or ""), str(change.get("status_id") or "")
        if not lead_id.isdigit() or not status:
            raise MappingError("leads[...][id] (a number) and leads[...][status_id] are required")
        lead = await client.get(f"/api/v4/leads/{int(lead_id)}", {"with": "contacts"})
        contact_id = _main_contact_id(lead or {})
        if contact_id is None:
            raise MappingError(f"amoCRM deal {int(lead_id)} has no contact to attribute it to")
        contact = await client.get(f"/api/v4/contacts/{contact_id}")
        if contact is None:
            raise MappingError(f"amoCRM contact {contact_id} of deal {int(lead_id)} was not found")
        changed = change.get("last_modified") or change.get("updated_at") or change.get("date_create")
        moment = datetime.fromtimestamp(int(str(changed)), UTC) if str(changed or "").isdigit() else hook.received_at
        price = change.get("price")
        crm: dict[str, Any] = {"deal_id": f"amocrm:{int(lead_id)}", "stage": str(status)}
        if change.get("old_status_id"):
            crm["previous_stage"] = str(change["old_status_id"])
        if change.get("pipeline_id"):
            crm["pipeline"] = str(change["pipeline_id"])
        if str(price or "").replace(".", "", 1).isdigit():
            crm["amount"] = float(str(price))
        attributes: dict[str, Any] = {}
        if isinstance(contact.get("name"), str) and contact["name"].strip():
            attributes["name"] = contact["name"].strip()[:256]
        event = wire_event(
            "amocrm",
            event_id("amocrm", int(lead_id), status),  # one event per stage: an edit keeping it is a repeat
            "crm_stage",
            occurred_at=moment,
            identifiers=_contact_identifiers(contact),
            attributes=attributes,
        )
        event["crm"] = crm
        events.append(event)
    return events
