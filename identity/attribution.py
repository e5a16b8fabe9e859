"""Attribution: which channels get the credit for a lead or a deal, from the touch path before it.

Pure functions over plain values, shared by the golden profile (live, in every store) and the
warehouse (reports), so the two never disagree.

* A **channel** is the (source, medium, campaign) of a touch's UTM tags, trimmed and lower-cased so that
  ``Yandex``/``yandex `` is one channel. A touch without a source is direct: ``(direct)/(none)``.
* A **path** is a person's marketing touches (site visits, calls, form submissions) in event order.
  CRM stage changes and manual corrections are not marketing touches.
* A **conversion** is a lead (the person's first call, form or deal) or a deal (credited by the path
  up to the deal's creation: what brought the client, not what happened while the manager worked).
* Every model gives credits that sum to 1 over the path's channels:

  ``first``, ``last``
      the first or the last touch takes it all;
  ``last_non_direct``
      the last touch that was not direct (Calltouch's default); all direct: the last touch;
  ``position``
      40% to the first touch, 40% to the last, 20% shared by the touches between (one touch: 100%,
      two: 50/50);
  ``linear``
      equal shares per touch;
  ``rank``
      an operator's dictionary ranks ``source/medium`` pairs (``*`` matches any); the touch with the
      highest rank takes it all, the earliest among equal ranks (unranked pairs rank 0, so a path of
      unranked touches goes to the first touch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from identity.errors import ConfigurationError
from identity.touch import Touch, TouchType

__all__ = [
    "DIRECT",
    "LEAD_TYPES",
    "MARKETING_TYPES",
    "MODELS",
    "NO_RULES",
    "Channel",
    "ChannelRanks",
    "ChannelRules",
    "Credits",
    "Model",
    "PathStep",
    "assists",
    "attribute",
    "attribute_all",
    "channel_of",
    "credits_view",
]

Model = Literal["first", "last", "last_non_direct", "position", "linear", "rank"]
#: Every model, in the order reports list them.
MODELS: Final[tuple[Model, ...]] = ("first", "last", "last_non_direct", "position", "linear", "rank")

#: Touch types that are marketing touches (part of a path).
MARKETING_TYPES: Final = frozenset(
    {TouchType.SITE_VISIT, TouchType.CALL, TouchType.FORM_SUBMIT, TouchType.MESSAGE, TouchType.EMAIL_EVENT}
)
#: Touch types that make a person a lead.
LEAD_TYPES: Final = frozenset({TouchType.CALL, TouchType.FORM_SUBMIT, TouchType.MESSAGE, TouchType.OFFLINE_VISIT})

_DIRECT_SOURCES: Final = frozenset({"(direct)", "direct", "(none)"})
_NOT_SET: Final = "(not set)"


def _clean(value: str | None) -> str:
    return " ".join(value.split()).lower() if value else ""


@dataclass(frozen=True, slots=True, order=True)
class Channel:
    """Where a touch came from, as reports group it."""

    source: str
    medium: str
    campaign: str

    @classmethod
    def of(cls, source: str | None, medium: str | None, campaign: str | None) -> Channel:
        """The channel of raw UTM values (trimmed, lower-cased, blanks defaulted)."""
        s, m, c = _clean(source), _clean(medium), _clean(campaign)
        if not s or s in _DIRECT_SOURCES:
            return DIRECT if not c else cls("(direct)", "(none)", c)
        return cls(s, m or _NOT_SET, c or _NOT_SET)

    @property
    def direct(self) -> bool:
        return self.source == "(direct)"

    @property
    def pair(self) -> str:
        """``source/medium``, the key of the rank dictionary."""
        return f"{self.source}/{self.medium}"

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "medium": self.medium, "campaign": self.campaign}


DIRECT: Final = Channel("(direct)", "(none)", _NOT_SET)

#: (event key, channel): one marketing touch of a path; only the order of the keys matters.
PathStep = tuple[Any, Channel]
#: channel -> share of one conversion (the shares sum to 1).
Credits = dict[Channel, float]


def tracking_key(number: str) -> str:
    """A phone number as the tracking-number table matches it: its last ten digits (``+7 495 ...``,
    ``8 (495) ...`` and ``7495...`` are one number)."""
    digits = "".join(c for c in number if c.isdigit())
    return digits[-10:]


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """The operator's part of channel rules: tracking numbers (:func:`tracking_key` -> channel) and the declared
    event types that are marketing touches, leads, or contacts of the person at all (see the policy)."""

    tracking: Mapping[str, Channel] = field(default_factory=dict)
    marketing: frozenset[str] = frozenset()
    leads: frozenset[str] = frozenset()
    contacts: frozenset[str] = frozenset()

    def is_contact(self, touch_type: TouchType) -> bool:
        return touch_type.value in self.contacts

    def is_lead(self, touch_type: TouchType) -> bool:
        return touch_type in LEAD_TYPES or touch_type.value in self.leads


NO_RULES: Final = ChannelRules()


def channel_of(touch: Touch, rules: ChannelRules | None = None) -> Channel | None:
    """The channel of a marketing touch; None for touches that are not marketing touches. A call without UTM tags
    takes the channel of the number it dialled (``rules.tracking``), if known."""
    rules = rules or NO_RULES
    if touch.type not in MARKETING_TYPES and touch.type.value not in rules.marketing:
        return None
    if touch.type is TouchType.EMAIL_EVENT and touch.attributes.get("action") != "click":
        return None  # a mail sent or opened brought nobody anywhere; its click did
    utm = touch.utm
    if utm is None and rules.tracking and touch.call is not None and touch.call.tracking_number:
        found = rules.tracking.get(tracking_key(touch.call.tracking_number))
        if found is not None:
            return found
    return DIRECT if utm is None else Channel.of(utm.source, utm.medium, utm.campaign)


def tracking_channels(numbers: Mapping[str, str]) -> dict[str, Channel]:
    """The operator's table of tracking numbers (``{"+7 495 123-45-67": "yandex/cpc/brand"}``) by match key."""
    out: dict[str, Channel] = {}
    for number, written in numbers.items():
        key = tracking_key(number)
        parts = written.split("/")
        if len(key) < 10 or not 2 <= len(parts) <= 3 or not parts[0].strip():
            raise ConfigurationError(
                f"tracking number {number!r} -> {written!r}: write a full number and 'source/medium[/campaign]'"
            )
        out[key] = Channel.of(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    return out


class ChannelRanks:
    """The operator's dictionary of ``source/medium`` ranks (higher wins); ``*`` matches any source or medium.

    An exact pair beats ``source/*``, which beats ``*/medium``; anything else ranks ``default``.
    """

    __slots__ = ("_exact", "_medium", "_source", "default")

    def __init__(self, ranks: Mapping[str, int] | None = None, default: int = 0) -> None:
        self.default = default
        self._exact: dict[tuple[str, str], int] = {}
        self._source: dict[str, int] = {}
        self._medium: dict[str, int] = {}
        for key, rank in (ranks or {}).items():
            source, slash, medium = key.partition("/")
            source, medium = _clean(source), _clean(medium)
            if not slash or not source or not medium or "/" in medium:
                raise ConfigurationError(f"channel rank {key!r}: write it as 'source/medium' ('*' matches any)")
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise ConfigurationError(f"channel rank {key!r}: the rank must be an integer, got {rank!r}")
            if source == "*" and medium == "*":
                self.default = rank
            elif medium == "*":
                self._source[source] = rank
            elif source == "*":
                self._medium[medium] = rank
            else:
                self._exact[(source, medium)] = rank

    def rank(self, channel: Channel) -> int:
        rank = self._exact.get((channel.source, channel.medium))
        if rank is None:
            rank = self._source.get(channel.source)
        if rank is None:
            rank = self._medium.get(channel.medium)
        return self.default if rank is None else rank

    def __bool__(self) -> bool:
        return bool(self._exact or self._source or self._medium or self.default)


def _add(credits: Credits, channel: Channel, share: float) -> None:
    credits[channel] = credits.get(channel, 0.0) + share


def attribute(path: Sequence[PathStep], model: Model, ranks: ChannelRanks | None = None) -> Credits:
    """The credit of each channel of ``path`` (in event order) under ``model``; empty for an empty path."""
    if not path:
        return {}
    channels = [channel for _, channel in path]
    n = len(channels)
    if model == "first":
        return {channels[0]: 1.0}
    if model == "last":
        return {channels[-1]: 1.0}
    if model == "last_non_direct":
        for channel in reversed(channels):
            if not channel.direct:
                return {channel: 1.0}
        return {channels[-1]: 1.0}
    if model == "rank":
        if not ranks:  # nothing ranked: every channel ties, and the earliest wins
            return {channels[0]: 1.0}
        best = max(range(n), key=lambda i: (ranks.rank(channels[i]), -i))
        return {channels[best]: 1.0}
    credits: Credits = {}
    if model == "linear":
        for channel in channels:
            _add(credits, channel, 1.0 / n)
        return credits
    if model == "position":
        if n == 1:
            return {channels[0]: 1.0}
        if n == 2:
            _add(credits, channels[0], 0.5)
            _add(credits, channels[1], 0.5)
            return credits
        _add(credits, channels[0], 0.4)
        _add(credits, channels[-1], 0.4)
        for channel in channels[1:-1]:
            _add(credits, channel, 0.2 / (n - 2))
        return credits
    raise ConfigurationError(f"unknown attribution model {model!r}; choose one of {', '.join(MODELS)}")


def attribute_all(path: Sequence[PathStep], ranks: ChannelRanks | None = None) -> dict[Model, Credits]:
    """Every model's credits for one path."""
    return {model: attribute(path, model, ranks) for model in MODELS}


def assists(path: Sequence[PathStep]) -> frozenset[Channel]:
    """Channels that appear on the path before its final touch (Google's "assisted conversions")."""
    return frozenset(channel for _, channel in path[:-1])


def credits_view(credits: Credits) -> list[dict[str, Any]]:
    """Credits as JSON-ready rows, the largest share first."""
    rows = sorted(credits.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{**channel.to_dict(), "credit": round(share, 6)} for channel, share in rows]
