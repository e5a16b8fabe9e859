"""The golden profile: what a person's touches add up to.

Every field is a commutative, associative fold over the person's touches
(maximum by a total order, sums, bounded top-N), so:

* two persons merge by folding one aggregate into the other, without replaying;
* the result does not depend on the order the touches arrived in;
* a touch is applied once per event id by the graph, so sums stay exact.

The fold runs once per event on the hot path, so it keeps references to the
immutable :class:`~identity.touch.Touch` and plain tuples, and builds the
JSON-ready view only when asked (:meth:`Golden.to_dict`).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from identity.touch import AttributeValue, Touch, TouchType

__all__ = ["Golden"]

#: Touch types that are contacts with the person (manual links are not).
_CONTACT_TYPES = frozenset({TouchType.SITE_VISIT, TouchType.CALL, TouchType.FORM_SUBMIT, TouchType.CRM_STAGE})
#: Attributes counted as interests.
_INTEREST_ATTRIBUTES = ("project", "page")

EventKey = tuple[int, str]
#: (key, touch): a touch in the total order of events.
Stamped = tuple[EventKey, Touch]
#: ((trust, key), value, touch): one source's claim on an attribute; the highest first element survives.
Claim = tuple[tuple[int, EventKey], AttributeValue, Touch]


def _key(stamped: Stamped) -> EventKey:
    return stamped[0]


def _touch_view(touch: Touch) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": touch.event_id,
        "type": touch.type.value,
        "source": touch.source,
        "occurred_at": touch.occurred_at.isoformat(),
    }
    if touch.utm is not None:
        out["utm"] = touch.utm.to_dict()
    for name in _INTEREST_ATTRIBUTES:
        value = touch.attributes.get(name)
        if isinstance(value, str):
            out[name] = value
    return out


def _when(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(slots=True)
class Golden:
    """The aggregate behind a golden profile (identifiers are held by the graph)."""

    attributes: dict[str, Claim] = field(default_factory=dict)
    projects: dict[str, int] = field(default_factory=dict)
    pages: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first: Stamped | None = None
    last: Stamped | None = None
    recent: list[Stamped] = field(default_factory=list)  # ascending by key
    deals: dict[str, Stamped] = field(default_factory=dict)  # deal id -> its latest crm_stage touch

    def add(self, touch: Touch, key: EventKey, trust: int, keep: int) -> None:
        """Fold one touch in. ``trust`` ranks its attribute values; ``keep`` bounds ``recent``."""
        if touch.attributes:
            rank = (trust, key)
            attributes = self.attributes
            for name, value in touch.attributes.items():
                if value is not None:
                    held = attributes.get(name)
                    if held is None or rank > held[0]:
                        attributes[name] = (rank, value, touch)
        crm = touch.crm
        if crm is not None:
            deal = self.deals.get(crm.deal_id)
            if deal is None or key > deal[0]:
                self.deals[crm.deal_id] = (key, touch)
        if touch.type not in _CONTACT_TYPES:
            return
        counts = self.counts
        counts[touch.type] = counts.get(touch.type, 0) + 1
        project = touch.attributes.get("project")
        if isinstance(project, str) and project:
            self.projects[project] = self.projects.get(project, 0) + 1
        page = touch.attributes.get("page")
        if isinstance(page, str) and page:
            self.pages[page] = self.pages.get(page, 0) + 1
        stamped = (key, touch)
        if self.first is None or key < self.first[0]:
            self.first = stamped
        if self.last is None or key > self.last[0]:
            self.last = stamped
        recent = self.recent
        if keep and (len(recent) < keep or key > recent[0][0]):
            if not recent or key > recent[-1][0]:
                recent.append(stamped)
            else:
                recent.insert(bisect.bisect_left(recent, key, key=_key), stamped)
            if len(recent) > keep:
                del recent[0]

    def absorb(self, other: Golden, keep: int) -> None:
        """Fold another person's aggregate into this one (a merge)."""
        for name, claim in other.attributes.items():
            held = self.attributes.get(name)
            if held is None or claim[0] > held[0]:
                self.attributes[name] = claim
        for mine, theirs in (
            (self.projects, other.projects),
            (self.pages, other.pages),
            (self.counts, other.counts),
        ):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n
        if other.first is not None and (self.first is None or other.first[0] < self.first[0]):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last[0] > self.last[0]):
            self.last = other.last
        if other.recent:
            merged = list(heapq.merge(self.recent, other.recent, key=_key))
            self.recent = merged[-keep:] if keep else []
        for deal_id, deal in other.deals.items():
            held_deal = self.deals.get(deal_id)
            if held_deal is None or deal[0] > held_deal[0]:
                self.deals[deal_id] = deal

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content, with deterministic ordering."""
        name = self.attributes.get("name")
        return {
            "display_name": name[1] if name is not None and isinstance(name[1], str) else None,
            "attributes": {
                k: {
                    "value": value,
                    "source": touch.source,
                    "event_id": touch.event_id,
                    "occurred_at": _when(touch.occurred_at),
                }
                for k in sorted(self.attributes)
                for _, value, touch in [self.attributes[k]]
            },
            "interests": {
                "projects": dict(sorted(self.projects.items(), key=lambda kv: (-kv[1], kv[0]))),
                "pages": dict(sorted(self.pages.items(), key=lambda kv: (-kv[1], kv[0]))),
            },
            "first_touch": _touch_view(self.first[1]) if self.first else None,
            "last_touch": _touch_view(self.last[1]) if self.last else None,
            "recent_touches": [_touch_view(t) for _, t in reversed(self.recent)],
            "touch_counts": dict(sorted(self.counts.items())),
            "deals": {
                deal_id: _deal_view(touch) for deal_id in sorted(self.deals) for _, touch in [self.deals[deal_id]]
            },
        }


def _deal_view(touch: Touch) -> dict[str, Any]:
    crm = touch.crm
    if crm is None:  # pragma: no cover - only touches with crm data are filed as deals
        raise ValueError(f"touch {touch.event_id} has no crm data")
    return {
        "deal_id": crm.deal_id,
        "stage": crm.stage,
        "previous_stage": crm.previous_stage,
        "pipeline": crm.pipeline,
        "amount": crm.amount,
        "source": touch.source,
        "event_id": touch.event_id,
        "updated_at": _when(touch.occurred_at),
    }
