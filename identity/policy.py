"""Resolution policy: how identifiers link, which merges are refused, which profile survives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from identity.attribution import ChannelRanks
from identity.errors import ConfigurationError
from identity.touch import Touch, TouchType

__all__ = [
    "DEFAULT_KIND_PRIORITY",
    "DEFAULT_LEAD_POINTS",
    "DEFAULT_LIMITS",
    "DEFAULT_LOST_STAGES",
    "DEFAULT_PERSONAL_KINDS",
    "DEFAULT_SHARED_CLUSTERS",
    "DEFAULT_SHARED_PERSONS",
    "DEFAULT_TYPE_TRUST",
    "DEFAULT_WON_STAGES",
    "ResolutionPolicy",
]

#: Strongest evidence first: an event's identifiers are linked in this order and
#: its touch belongs to the person of its strongest identifier.
DEFAULT_KIND_PRIORITY: tuple[str, ...] = (
    "crm_contact_id",
    "email",
    "phone",
    "messenger_id",
    "ym_client_id",
    "ga_client_id",
)

#: Most distinct values of a kind one person may hold. A merge or link that would
#: exceed it is refused and reported as a conflict.
DEFAULT_LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "crm_contact_id": 1,
        "phone": 5,
        "email": 5,
        "messenger_id": 5,
        "ym_client_id": 25,
        "ga_client_id": 25,
    }
)

#: Kinds that say who a person is (a cluster holding one is a *person*, not just a device).
DEFAULT_PERSONAL_KINDS: frozenset[str] = frozenset({"crm_contact_id", "email", "phone", "messenger_id"})

#: Shared-identifier detection (see :mod:`identity.shared`): a value of a listed kind is *shared* when the
#: identifiers seen with it fall, without it, into more than this many distinct persons (clusters holding
#: a personal kind). A phone or e-mail needs three people behind it: two is too often one person the
#: CRM knows by phone and a form by e-mail. A device needs two (a family or office computer).
DEFAULT_SHARED_PERSONS: Mapping[str, int] = MappingProxyType(
    {"phone": 2, "email": 2, "messenger_id": 2, "ga_client_id": 1, "ym_client_id": 1}
)

#: ...or, for a value no person ever gave beside a personal identifier of theirs (a caller id seen only
#: on calls), into more than this many clusters of any kind: a caller id that three unrelated browsing
#: sessions called from is a switchboard, not a person's own phone.
DEFAULT_SHARED_CLUSTERS: Mapping[str, int] = MappingProxyType({"phone": 1})

#: Attribute survivorship: a higher number beats a lower one, then recency decides.
DEFAULT_TYPE_TRUST: Mapping[str, int] = MappingProxyType(
    {
        TouchType.IDENTITY_LINK: 50,
        TouchType.CRM_STAGE: 40,
        TouchType.FORM_SUBMIT: 30,
        TouchType.CALL: 20,
        TouchType.SITE_VISIT: 10,
    }
)

#: Lead-score points per action. A key is ``TYPE`` (every touch of that type), ``TYPE:ATTRIBUTE``
#: (touches whose attribute is present and not empty, e.g. a visit of a project page) or
#: ``TYPE:ATTRIBUTE=VALUE``; a touch scores the sum of every key it matches.
DEFAULT_LEAD_POINTS: Mapping[str, int] = MappingProxyType(
    {
        "form_submit": 30,
        "call": 20,
        "site_visit": 1,
        "site_visit:project": 4,
    }
)

#: Deal stages that close a deal (amoCRM's system statuses 142 and 143 included); any other stage is open.
DEFAULT_WON_STAGES: frozenset[str] = frozenset({"won", "closed_won", "142"})
DEFAULT_LOST_STAGES: frozenset[str] = frozenset({"lost", "closed_lost", "143"})


def _parse_point_rule(rule: str) -> tuple[str, str | None, str | None]:
    kind, _, condition = rule.partition(":")
    if kind not in {t.value for t in TouchType}:
        raise ConfigurationError(f"lead-score rule {rule!r}: {kind!r} is not a touch type")
    if not condition:
        return kind, None, None
    name, eq, value = condition.partition("=")
    if not name:
        raise ConfigurationError(f"lead-score rule {rule!r}: empty attribute name")
    return kind, name, value if eq else None


@dataclass(frozen=True, slots=True)
class ResolutionPolicy:
    """The operator's rules. Immutable: a change of policy is a new policy object."""

    #: Per-kind ceiling on distinct values per person; kinds not listed are unlimited.
    limits: Mapping[str, int] = field(default_factory=lambda: DEFAULT_LIMITS)
    #: Kinds in order of evidential strength; undeclared kinds come after, alphabetically.
    kind_priority: tuple[str, ...] = DEFAULT_KIND_PRIORITY
    #: Kinds that anchor the survivor of a merge: the person holding one keeps its id.
    anchor_kinds: frozenset[str] = frozenset({"crm_contact_id"})
    #: Trust of attribute values by touch type (see :data:`DEFAULT_TYPE_TRUST`).
    type_trust: Mapping[str, int] = field(default_factory=lambda: DEFAULT_TYPE_TRUST)
    #: Trust by producing system; overrides the type's trust when the source is listed.
    source_trust: Mapping[str, int] = field(default_factory=dict)
    #: How many recent touches the golden profile keeps.
    recent_touches: int = 20
    #: Lead-score points per action (see :data:`DEFAULT_LEAD_POINTS`); awarded when a touch is applied.
    lead_points: Mapping[str, int] = field(default_factory=lambda: DEFAULT_LEAD_POINTS)
    #: Deal stages that mean won and lost; a deal in any other stage is open.
    won_stages: frozenset[str] = DEFAULT_WON_STAGES
    lost_stages: frozenset[str] = DEFAULT_LOST_STAGES
    #: Shared-identifier thresholds (see :data:`DEFAULT_SHARED_PERSONS`); a kind in neither map is never shared.
    shared_persons: Mapping[str, int] = field(default_factory=lambda: DEFAULT_SHARED_PERSONS)
    shared_clusters: Mapping[str, int] = field(default_factory=lambda: DEFAULT_SHARED_CLUSTERS)
    personal_kinds: frozenset[str] = DEFAULT_PERSONAL_KINDS
    #: The operator's rank of ``source/medium`` pairs for the ``rank`` attribution model (see
    #: :class:`identity.attribution.ChannelRanks`).
    channel_ranks: Mapping[str, int] = field(default_factory=dict)
    #: Marketing touches per person kept for attribution in the golden profile (the earliest ones; a
    #: conversion after more touches is marked ``truncated`` there; the warehouse keeps every touch).
    attribution_touches: int = 100
    #: A shared identifier whose evidence group holds more identifiers than this becomes a *hub* (see
    #: :mod:`identity.graph`): it leaves the group for good and keeps only counts and a sample of the newest
    #: persons seen with it, so an evidence group (what a batch loads) stays about person-sized and an
    #: event's cost never depends on how often a switchboard or ``info@`` mailbox was seen. At least 8.
    hub_group_size: int = 64
    ranks: ChannelRanks = field(init=False, repr=False, compare=False)
    _point_rules: tuple[tuple[str, str | None, str | None, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind, limit in self.limits.items():
            if limit < 1:
                raise ConfigurationError(f"limit for {kind!r} must be at least 1, got {limit}")
        for kind, limit in (*self.shared_persons.items(), *self.shared_clusters.items()):
            if limit < 1:
                raise ConfigurationError(f"shared threshold for {kind!r} must be at least 1, got {limit}")
        if self.recent_touches < 0:
            raise ConfigurationError("recent_touches must not be negative")
        for name, trust in (*self.type_trust.items(), *self.source_trust.items()):
            if not 0 <= trust <= 999:
                raise ConfigurationError(f"trust of {name!r} must be 0-999, got {trust}")
        if self.won_stages & self.lost_stages:
            raise ConfigurationError(f"stages both won and lost: {sorted(self.won_stages & self.lost_stages)}")
        if self.attribution_touches < 0:
            raise ConfigurationError("attribution_touches must not be negative")
        if self.hub_group_size < 8:
            raise ConfigurationError(f"hub_group_size must be at least 8, got {self.hub_group_size}")
        object.__setattr__(self, "ranks", ChannelRanks(self.channel_ranks))
        rules = tuple((*_parse_point_rule(rule), points) for rule, points in sorted(self.lead_points.items()))
        object.__setattr__(self, "_point_rules", rules)

    def kind_rank(self, kind: str) -> tuple[int, str]:
        """Sort key: lower is stronger."""
        try:
            return (self.kind_priority.index(kind), "")
        except ValueError:
            return (len(self.kind_priority), kind)

    def trust(self, touch_type: str, source: str) -> int:
        trust = self.source_trust.get(source)
        return trust if trust is not None else self.type_trust.get(touch_type, 0)

    def points(self, touch: Touch) -> int:
        """The lead-score points one touch earns."""
        total = 0
        for kind, name, value, points in self._point_rules:
            if touch.type != kind:
                continue
            if name is not None:
                held = touch.attributes.get(name)
                if held is None or held == "" or (value is not None and str(held) != value):
                    continue
            total += points
        return total

    def deal_status(self, stage: str) -> str:
        """``won``, ``lost`` or ``open``."""
        if stage in self.won_stages:
            return "won"
        if stage in self.lost_stages:
            return "lost"
        return "open"
