"""Resolution policy: how identifiers link, which merges are refused, which profile survives."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from identity.attribution import Channel, ChannelRanks, ChannelRules, tracking_channels
from identity.errors import ConfigurationError
from identity.normalize import DEFAULT_CRM_SYSTEMS, Identifier, validate_prefix_names
from identity.touch import DECLARED_TYPE_NAME, LINKING_TYPES, CrmInfo, Touch, TouchType

__all__ = [
    "DEFAULT_KIND_PRIORITY",
    "DEFAULT_LEAD_POINTS",
    "DEFAULT_LIMITS",
    "DEFAULT_LOST_STAGES",
    "DEFAULT_NUMBER_TYPE_WEIGHTS",
    "DEFAULT_PERSONAL_KINDS",
    "DEFAULT_SHARED_CLUSTERS",
    "DEFAULT_SHARED_DEVICES",
    "DEFAULT_SHARED_PERSONS",
    "DEFAULT_SHARING_KINDS",
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
#: exceed it is refused and reported as a conflict. A ``crm_contact_id`` counts per CRM system
#: (see :meth:`ResolutionPolicy.limit_key`): one ``amocrm:`` id, one ``dynamics:`` id and one
#: unprefixed id by default; a key ``crm_contact_id:<system>`` sets one system's own limit.
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

#: ...or when the clusters seen with it (persons and bare devices), weighted by the value's type, pass this
#: person-sized bound: one person's phone or e-mail is seen beside a handful of separate browsers, an office
#: switchboard or ``info@`` beside many.
DEFAULT_SHARED_DEVICES: Mapping[str, int] = MappingProxyType({"phone": 10, "email": 10, "messenger_id": 10})

#: The weight of a phone number's type (``phonenumbers``' types, lower case) in that bound: a landline or a
#: virtual PBX number belongs to an office or a household far more often than a mobile, so three separate
#: clusters behind a landline pass it (3 x 4 > 10) while a mobile needs eleven. Types not listed weigh 1.
DEFAULT_NUMBER_TYPE_WEIGHTS: Mapping[str, int] = MappingProxyType(
    {
        "fixed_line": 4,
        "voip": 4,
        "uan": 4,
        "fixed_line_or_mobile": 2,
        "toll_free": 6,
        "shared_cost": 6,
        "premium_rate": 6,
    }
)

#: Kinds whose different values, held by two clusters seen with a value of the key's kind, are evidence that
#: two people use it (unless their names match): two phones or two e-mails on one device, two e-mails on one
#: phone. A phone and an e-mail are not: that is one person's phone and e-mail.
DEFAULT_SHARING_KINDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "ga_client_id": frozenset({"phone", "email"}),
        "ym_client_id": frozenset({"phone", "email"}),
        "phone": frozenset({"email"}),
        "email": frozenset({"phone"}),
        "messenger_id": frozenset({"phone", "email"}),
    }
)

#: Attribute survivorship: a higher number beats a lower one, then recency decides.
DEFAULT_TYPE_TRUST: Mapping[str, int] = MappingProxyType(
    {
        TouchType.IDENTITY_LINK: 50,
        TouchType.CRM_STAGE: 40,
        TouchType.PURCHASE: 40,
        TouchType.FORM_SUBMIT: 30,
        TouchType.OFFLINE_VISIT: 30,
        TouchType.MESSAGE: 25,
        TouchType.CALL: 20,
        TouchType.SITE_VISIT: 10,
        TouchType.EMAIL_EVENT: 5,
    }
)

#: The flags of an operator-declared event type, and their defaults.
_EVENT_FLAGS: Mapping[str, bool] = MappingProxyType(
    {"links": True, "marketing": False, "lead": False, "conversion": False}
)
#: Types the engine knows without configuration.
BUILT_IN_TYPES: frozenset[TouchType] = frozenset(LINKING_TYPES | {TouchType.IDENTITY_UNLINK, TouchType.ERASE_REQUEST})

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


_CRM = "crm_contact_id"
#: CRM id values whose :meth:`ResolutionPolicy.limit_key` is remembered (then the memo starts over).
_KEY_CACHE_SIZE = 1 << 16


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

    #: Per-kind ceiling on distinct values per person; kinds not listed are unlimited. Keys are kinds or
    #: counting classes (``crm_contact_id:amocrm``, see :meth:`limit_key`); a class not listed has its kind's limit.
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
    #: See :data:`DEFAULT_SHARED_DEVICES`, :data:`DEFAULT_NUMBER_TYPE_WEIGHTS` and :data:`DEFAULT_SHARING_KINDS`.
    shared_devices: Mapping[str, int] = field(default_factory=lambda: DEFAULT_SHARED_DEVICES)
    number_type_weights: Mapping[str, int] = field(default_factory=lambda: DEFAULT_NUMBER_TYPE_WEIGHTS)
    sharing_kinds: Mapping[str, frozenset[str]] = field(default_factory=lambda: DEFAULT_SHARING_KINDS)
    #: CRM systems a ``crm_contact_id`` may name (``amocrm:501``); each counts on its own. Keep equal to the
    #: normalizer's (:attr:`identity.normalize.NormalizerConfig.crm_systems`): the settings build both from one list.
    crm_systems: frozenset[str] = DEFAULT_CRM_SYSTEMS
    #: Call-tracking numbers and the channel each stands for (``{"+7 495 123-45-67": "yandex/cpc/brand"}``): a
    #: call without UTM tags takes the channel of the number it dialled.
    tracking_numbers: Mapping[str, str] = field(default_factory=dict)
    tracking: Mapping[str, Channel] = field(init=False, repr=False, compare=False)
    #: Event types of the operator's own (``{"webinar": {"marketing": true, "lead": true}}``), each with flags:
    #: ``links`` (its identifiers are one person's; default true: false attaches the touch to the person of its
    #: strongest identifier only), ``marketing`` (a step of the attribution path), ``lead`` (a first one makes
    #: the person a lead), ``conversion`` (a won deal of its own: ``attributes.amount``, ``attributes.order_id``).
    event_types: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    channel_rules: ChannelRules = field(init=False, repr=False, compare=False)
    ranks: ChannelRanks = field(init=False, repr=False, compare=False)
    _point_rules: tuple[tuple[str, str | None, str | None, int], ...] = field(init=False, repr=False, compare=False)
    _declared: Mapping[str, Mapping[str, bool]] = field(init=False, repr=False, compare=False)
    #: Caches of :meth:`limit_key` and :meth:`limit` (not part of the value: equality and hashing ignore them).
    _system_keys: dict[str, str] = field(init=False, repr=False, compare=False)
    _value_keys: dict[str, str] = field(init=False, repr=False, compare=False)
    _class_limits: dict[str, int | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_prefix_names("CRM system", self.crm_systems)
        for kind, limit in self.limits.items():
            if limit < 1:
                raise ConfigurationError(f"limit for {kind!r} must be at least 1, got {limit}")
            base, sep, system = kind.partition(":")
            if sep and (base != _CRM or system not in self.crm_systems):
                raise ConfigurationError(
                    f"limit for {kind!r}: only a crm_contact_id takes a per-system limit, and only of a configured "
                    f"CRM system ({', '.join(sorted(self.crm_systems))})"
                )
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
        for kind, limit in self.shared_devices.items():
            if limit < 2:
                raise ConfigurationError(f"shared device bound for {kind!r} must be at least 2, got {limit}")
        for number_type, weight in self.number_type_weights.items():
            if not 1 <= weight <= 100:
                raise ConfigurationError(f"weight of number type {number_type!r} must be 1-100, got {weight}")
        if self.hub_group_size < 8:
            raise ConfigurationError(f"hub_group_size must be at least 8, got {self.hub_group_size}")
        object.__setattr__(self, "ranks", ChannelRanks(self.channel_ranks))
        object.__setattr__(self, "tracking", tracking_channels(self.tracking_numbers))
        for name, flags in self.event_types.items():
            if not DECLARED_TYPE_NAME.fullmatch(name) or name in {t.value for t in TouchType}:
                raise ConfigurationError(
                    f"event type {name!r}: a new name of 2-32 lower-case letters, digits and _ (not a built-in type)"
                )
            unknown = sorted(set(flags) - set(_EVENT_FLAGS))
            if unknown or not all(isinstance(v, bool) for v in flags.values()):
                raise ConfigurationError(f"event type {name!r}: flags are {', '.join(_EVENT_FLAGS)} (true or false)")
        declared = {name: {**_EVENT_FLAGS, **flags} for name, flags in self.event_types.items()}
        channel_rules = ChannelRules(
            self.tracking,
            frozenset(n for n, f in declared.items() if f["marketing"]),
            frozenset(n for n, f in declared.items() if f["lead"]),
            frozenset(declared),
        )
        object.__setattr__(self, "channel_rules", channel_rules)
        object.__setattr__(self, "_declared", declared)
        rules = tuple((*_parse_point_rule(rule), points) for rule, points in sorted(self.lead_points.items()))
        object.__setattr__(self, "_point_rules", rules)
        object.__setattr__(self, "_system_keys", {system: f"{_CRM}:{system}" for system in self.crm_systems})
        object.__setattr__(self, "_value_keys", {})
        object.__setattr__(self, "_class_limits", {})

    def applies(self, touch_type: TouchType) -> bool:
        """Is this type one the engine applies: built in, or declared by the operator?"""
        return touch_type in BUILT_IN_TYPES or touch_type.value in self._declared

    def prepare(self, touch: Touch) -> Touch:
        """A touch of a declared type as the engine takes it (idempotent; any other touch as it is): without
        links, only its strongest identifier; a conversion, a won deal of its own."""
        flags = self._declared.get(touch.type.value)
        if flags is None:
            return touch
        changes: dict[str, Any] = {}
        if not flags["links"] and len(touch.identifiers) > 1:
            strongest = min(touch.identifiers, key=lambda pair: self.kind_rank(pair[0]))
            changes["identifiers"] = (strongest,)
        if flags["conversion"] and touch.crm is None:
            amount = touch.attributes.get("amount")
            order = touch.attributes.get("order_id")
            value = float(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else None
            deal = f"{touch.type.value}:{order if isinstance(order, str) and order else touch.event_id}"
            changes["crm"] = CrmInfo(deal[:128], "won", None, touch.type.value, value)
        return dataclasses.replace(touch, **changes) if changes else touch

    def limit_key(self, ident: Identifier) -> str:
        """The class ``ident`` counts in against :attr:`limits`.

        ``crm_contact_id:<system>`` for a CRM id whose value names a configured system (``amocrm:501`` counts in
        ``crm_contact_id:amocrm``), ``crm_contact_id`` for any other CRM id (the unnamed system: ``501``,
        ``amo:501``), the kind itself for every other kind (a ``telegram:`` and a ``vk:`` messenger id both count
        as ``messenger_id``). Values are normalized ones: the system is matched exactly, in its stored lower-case
        spelling, so a value stored before prefixes existed (``AmoCRM:501``) stays in the unnamed class.
        """
        kind = ident.kind
        if kind != _CRM:
            return kind
        cache = self._value_keys
        key = cache.get(ident.value)
        if key is None:
            head, sep, _ = ident.value.partition(":")
            key = self._system_keys.get(head, kind) if sep else kind
            if len(cache) >= _KEY_CACHE_SIZE:  # bounded: a worker sees millions of CRM ids over its life
                cache.clear()
            cache[ident.value] = key
        return key

    def limit(self, key: str) -> int | None:
        """The most distinct values of one class (a :meth:`limit_key`) a person may hold; None: unlimited.

        ``limits[key]`` when configured, else the limit of the key's kind (``limits["crm_contact_id"]`` for
        ``crm_contact_id:amocrm``).
        """
        cache = self._class_limits
        try:
            return cache[key]
        except KeyError:
            pass
        limits = self.limits
        found = limits.get(key)
        if found is None and ":" in key:
            found = limits.get(key.partition(":")[0])
        if len(cache) < 4096:  # keys are kinds and configured classes; a bound for callers passing anything
            cache[key] = found
        return found

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
