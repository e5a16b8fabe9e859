"""Resolution policy: how identifiers link, which merges are refused, which profile survives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from identity.errors import ConfigurationError
from identity.touch import TouchType

__all__ = ["DEFAULT_KIND_PRIORITY", "DEFAULT_LIMITS", "DEFAULT_TYPE_TRUST", "ResolutionPolicy"]

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

    def __post_init__(self) -> None:
        for kind, limit in self.limits.items():
            if limit < 1:
                raise ConfigurationError(f"limit for {kind!r} must be at least 1, got {limit}")
        if self.recent_touches < 0:
            raise ConfigurationError("recent_touches must not be negative")
        for name, trust in (*self.type_trust.items(), *self.source_trust.items()):
            if not 0 <= trust <= 999:
                raise ConfigurationError(f"trust of {name!r} must be 0-999, got {trust}")

    def kind_rank(self, kind: str) -> tuple[int, str]:
        """Sort key: lower is stronger."""
        try:
            return (self.kind_priority.index(kind), "")
        except ValueError:
            return (len(self.kind_priority), kind)

    def trust(self, touch_type: str, source: str) -> int:
        trust = self.source_trust.get(source)
        return trust if trust is not None else self.type_trust.get(touch_type, 0)
