"""Marketing-automation triggers: which causes a touch gives, each with an id that names the cause.

Pure rules over a touch, its outcome and the person's golden profile after it. Each candidate carries
a deterministic ``trigger_id`` derived from its cause, so the caller fires a cause once by keeping the
ids it has fired (a redelivered event yields the same ids):

* ``stage_changed``: a CRM stage event whose stage differs from the previous one (one per event);
* ``returning_with_open_deal``: a site visit or call by a person with an open deal that existed
  before the touch (one per deal per ``returning_window_s`` of event time, so a session of twenty
  page views is one signal);
* ``repeat_inquiry``: a form or call from a person with an open deal that existed before it (one per
  event: the CRM should attach it to that deal rather than open a new one);
* ``lead_score_crossed``: the person's lead score reached a threshold (one per person and threshold;
  a person formed by a merge inherits what its merged persons fired, see ``Candidate.inherit``).

Touches older than ``max_age_s`` (against the caller's clock) fire nothing: replaying history must
not wake up marketing automation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from identity.errors import ConfigurationError
from identity.touch import Touch, TouchType

__all__ = ["RULES", "Candidate", "MissedCall", "TriggerRules", "candidates", "missed_call", "not_returned"]

RULES = (
    "stage_changed",
    "returning_with_open_deal",
    "repeat_inquiry",
    "lead_score_crossed",
    "missed_call_not_returned",
)

#: A person coming back: any contact of theirs but a CRM change or an e-mail we sent them.
_RETURNING_TYPES = frozenset(
    {
        TouchType.SITE_VISIT,
        TouchType.CALL,
        TouchType.FORM_SUBMIT,
        TouchType.MESSAGE,
        TouchType.OFFLINE_VISIT,
    }
)
#: Asking again: calls, forms, messages, visits in person (not browsing).
_INQUIRY_TYPES = frozenset({TouchType.CALL, TouchType.FORM_SUBMIT, TouchType.MESSAGE, TouchType.OFFLINE_VISIT})


@dataclass(frozen=True, slots=True)
class TriggerRules:
    enabled: frozenset[str] = frozenset(RULES)
    lead_thresholds: tuple[int, ...] = (50, 100)
    returning_window_s: int = 24 * 3600
    #: Touches older than this many seconds fire nothing; ``None``: no limit.
    max_age_s: float | None = 24 * 3600
    #: A missed call not followed by an answered call with the person within this many seconds fires.
    missed_call_window_s: int = 30 * 60

    def __post_init__(self) -> None:
        unknown = sorted(self.enabled - set(RULES))
        if unknown:
            raise ConfigurationError(f"unknown trigger rules {unknown}; known: {list(RULES)}")
        if any(t <= 0 for t in self.lead_thresholds):
            raise ConfigurationError("lead-score thresholds must be positive")
        if self.returning_window_s <= 0:
            raise ConfigurationError("the returning window must be positive")
        if self.missed_call_window_s <= 0:
            raise ConfigurationError("the missed-call window must be positive")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A trigger the rules want to fire, if its id (or an inherited one) has not fired yet."""

    trigger_id: str
    rule: str
    profile_id: str
    event_id: str
    occurred_at: str
    data: dict[str, Any]
    #: Ids that count as this one: when any of them has fired, this one has too.
    inherit: tuple[str, ...] = field(default=())


def trigger_id(rule: str, *cause: str) -> str:
    """``t_`` + a hash of the rule and its cause (netstrings, so no two causes collide)."""
    payload = b"".join(b"%d:%s," % (len(p), p) for p in (rule.encode(), *(c.encode() for c in cause)))
    return "t_" + hashlib.sha256(payload).hexdigest()[:32]


def _open_deals_before(profile: dict[str, Any], moment: str) -> list[dict[str, Any]]:
    """Open deals the person had by ``moment`` (ISO times of one offset compare as text only by
    accident, so compare parsed)."""
    at = datetime.fromisoformat(moment)
    deals = [
        d
        for d in profile.get("deals", {}).values()
        if d.get("status") == "open" and datetime.fromisoformat(d["updated_at"]) <= at
    ]
    deals.sort(key=lambda d: (datetime.fromisoformat(d["updated_at"]), d["deal_id"]), reverse=True)
    return deals


def candidates(
    touch: Touch,
    profile: dict[str, Any] | None,
    rules: TriggerRules,
    *,
    now: datetime,
    merged_from: Sequence[str] = (),
) -> list[Candidate]:
    """The triggers one applied touch may fire, given its person's profile after it."""
    if profile is None:
        return []
    if rules.max_age_s is not None and (now - touch.occurred_at).total_seconds() > rules.max_age_s:
        return []
    pid = profile["profile_id"]
    when = touch.occurred_at.isoformat()
    eid = touch.event_id
    out: list[Candidate] = []
    enabled = rules.enabled
    crm = touch.crm
    moved = crm is not None and crm.stage != crm.previous_stage
    if "stage_changed" in enabled and crm is not None and moved and touch.type is TouchType.CRM_STAGE:
        data = {
            "deal_id": crm.deal_id,
            "from": crm.previous_stage,
            "to": crm.stage,
            "pipeline": crm.pipeline,
            "amount": crm.amount,
            "status": profile.get("deals", {}).get(crm.deal_id, {}).get("status"),
            "source": touch.source,
        }
        out.append(Candidate(trigger_id("stage_changed", eid), "stage_changed", pid, eid, when, data))
    if touch.type in _RETURNING_TYPES:
        # strictly before the touch: the deal must already have been open when the person came back
        deals = [d for d in _open_deals_before(profile, when) if d.get("event_id") != eid]
        if deals:
            deal = deals[0]
            about = {"deal_id": deal["deal_id"], "stage": deal["stage"], "touch_type": touch.type.value,
                     "source": touch.source, "open_deals": [d["deal_id"] for d in deals]}  # fmt: skip
            if "returning_with_open_deal" in enabled and touch.type is not TouchType.FORM_SUBMIT:
                bucket = str(int(touch.occurred_at.timestamp()) // rules.returning_window_s)
                tid = trigger_id("returning_with_open_deal", deal["deal_id"], bucket)
                out.append(Candidate(tid, "returning_with_open_deal", pid, eid, when, about))
            if "repeat_inquiry" in enabled and touch.type in _INQUIRY_TYPES:
                out.append(Candidate(trigger_id("repeat_inquiry", eid), "repeat_inquiry", pid, eid, when, about))
    if "lead_score_crossed" in enabled:
        score = int(profile.get("lead_score", 0))
        for threshold in sorted(rules.lead_thresholds):
            if score >= threshold:
                cause = str(threshold)
                inherit = tuple(trigger_id("lead_score_crossed", old, cause) for old in merged_from)
                data = {"threshold": threshold, "lead_score": score}
                tid = trigger_id("lead_score_crossed", pid, cause)
                out.append(Candidate(tid, "lead_score_crossed", pid, eid, when, data, inherit))
    return out


# ----------------------------------------------------------------------------- missed calls


@dataclass(frozen=True, slots=True)
class MissedCall:
    """A missed call waiting for its window to pass: the store keeps it until then (by ``event_id``)."""

    event_id: str
    profile_id: str
    called_at: str  # ISO-8601
    due: float  # Unix seconds: when the window closes
    data: dict[str, Any]


def missed_call(touch: Touch, profile_id: str | None, rules: TriggerRules, *, now: datetime) -> MissedCall | None:
    """The pending check of an applied call that nobody answered (None for any other touch)."""
    if "missed_call_not_returned" not in rules.enabled or profile_id is None or touch.type is not TouchType.CALL:
        return None
    call = touch.call
    if call is None or call.status not in ("missed", "busy"):
        return None
    if rules.max_age_s is not None and (now - touch.occurred_at).total_seconds() > rules.max_age_s:
        return None
    data: dict[str, Any] = {"status": call.status, "within_minutes": rules.missed_call_window_s // 60,
                            "source": touch.source}  # fmt: skip
    if call.tracking_number:
        data["tracking_number"] = call.tracking_number
    if call.wait_s is not None:
        data["wait_s"] = call.wait_s
    due = touch.occurred_at.timestamp() + rules.missed_call_window_s
    return MissedCall(touch.event_id, profile_id, touch.occurred_at.isoformat(), due, data)


def not_returned(pending: MissedCall, profile: dict[str, Any] | None, rules: TriggerRules) -> Candidate | None:
    """Once its window has passed: the trigger, unless the person's profile shows an answered call after the
    missed one and within the window (or the person is gone: erased)."""
    if profile is None:
        return None
    called = datetime.fromisoformat(pending.called_at)
    window = rules.missed_call_window_s
    for touch in profile.get("recent_touches") or []:
        if touch.get("type") != "call" or (touch.get("call") or {}).get("status") != "answered":
            continue
        seconds = (datetime.fromisoformat(touch["occurred_at"]) - called).total_seconds()
        if 0 < seconds <= window:
            return None
    pid = profile["profile_id"]
    tid = trigger_id("missed_call_not_returned", pending.event_id)
    return Candidate(tid, "missed_call_not_returned", pid, pending.event_id, pending.called_at, pending.data)
