"""The screen-pop card: what a call-center manager needs on screen while the phone still rings.

Derived from a golden profile (:func:`identity.golden.render`), so the card, the lookup API and the
``profiles.updates`` messages never disagree. Pure functions over plain dicts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CARD_TOUCHES", "screen_pop", "summary"]

#: Touches on the card, newest first (the full profile keeps more).
CARD_TOUCHES = 5
#: Projects (interests) on the card, most touched first.
CARD_PROJECTS = 5


def _source(touch: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where a touch came from: the producing system and its UTM tags."""
    if touch is None:
        return None
    utm = touch.get("utm") or {}
    return {
        "system": touch["source"],
        "utm_source": utm.get("source"),
        "utm_medium": utm.get("medium"),
        "utm_campaign": utm.get("campaign"),
        "occurred_at": touch["occurred_at"],
    }


def _open_deals(profile: dict[str, Any]) -> list[dict[str, Any]]:
    deals = [d for d in profile.get("deals", {}).values() if d.get("status") == "open"]
    deals.sort(key=lambda d: (d["updated_at"], d["deal_id"]), reverse=True)
    return [
        {
            "deal_id": d["deal_id"],
            "stage": d["stage"],
            "pipeline": d.get("pipeline"),
            "amount": d.get("amount"),
            "updated_at": d["updated_at"],
        }
        for d in deals
    ]


def screen_pop(profile: dict[str, Any]) -> dict[str, Any]:
    """The card of one golden profile."""
    identifiers = profile.get("identifiers", {})
    projects = profile.get("interests", {}).get("projects", {})
    return {
        "profile_id": profile["profile_id"],
        "display_name": profile.get("display_name"),
        "phones": list(identifiers.get("phone", [])),
        "emails": list(identifiers.get("email", [])),
        "crm_contact_ids": list(identifiers.get("crm_contact_id", [])),
        "interests": list(projects)[:CARD_PROJECTS],
        "first_source": _source(profile.get("first_touch")),
        "last_source": _source(profile.get("last_touch")),
        "last_touches": list(profile.get("recent_touches", []))[:CARD_TOUCHES],
        "open_deals": _open_deals(profile),
        "lead_score": profile.get("lead_score", 0),
        "touches": sum(profile.get("touch_counts", {}).values()),
        "created_at": profile.get("created_at"),
    }


def summary(profile: dict[str, Any]) -> dict[str, Any]:
    """A short line about a person, for choosing among the candidates of a shared identifier."""
    last = profile.get("last_touch")
    return {
        "profile_id": profile["profile_id"],
        "display_name": profile.get("display_name"),
        "emails": list(profile.get("identifiers", {}).get("email", []))[:2],
        "last_touch_at": last["occurred_at"] if last else None,
        "open_deals": [{"deal_id": d["deal_id"], "stage": d["stage"]} for d in _open_deals(profile)],
        "lead_score": profile.get("lead_score", 0),
    }
