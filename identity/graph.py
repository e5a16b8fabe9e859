"""The in-memory identity graph: the reference implementation of identity resolution.

Semantics (the Redis store must match them exactly)
----------------------------------------------------
* **Nodes** are normalized identifiers; an event whose identifiers are seen
  together is **evidence** (event id, source, time, rule) that they belong to
  one person. A **person** is a set of nodes joined by accepted evidence, with a
  stable ``profile_id``.
* **Canonical order.** The result of a set of events is defined as applying, one
  by one in ``(occurred_at, event_id)`` order, the earliest event of each distinct
  set of identifiers (with its manual flag); a later event with the same set adds
  its touch to the golden profile but is not evidence again. Within an event, identifiers
  are taken strongest kind first (``ResolutionPolicy.kind_priority``): the
  persons of already known identifiers are merged into the first one, then new
  identifiers join it. A merge or join that would give a person more distinct
  values of a kind than ``ResolutionPolicy.limits`` allow is **refused** and
  reported as a :class:`Conflict`; a refused new identifier becomes a person of
  its own. ``identity_link`` events link regardless of limits.
* **Order independence.** Events usually arrive in order and are applied
  incrementally. An event that is older than the newest event of the evidence
  group it touches (the nodes connected by any evidence, accepted or refused)
  makes the graph replay that group in canonical order, so the final persons
  never depend on arrival order.
* **Stable ids.** A new person's id derives from the event that created it and
  its first identifier. When two persons merge, the one holding an anchor kind
  (``crm_contact_id`` by default) survives, else the older one; the other id is
  retired and redirects to the survivor.
* **Idempotence.** A repeated ``event_id`` changes nothing.
* **Contested identifiers.** An identifier is contested when an event showed it
  beside a stronger identifier of *another* person that the policy kept apart
  (two CRM contacts calling from one office switchboard). :meth:`IdentityGraph.match`
  then names every such person, so no single profile is claimed for it.
* A touch belongs to the person holding its strongest identifier. Touches are
  folded per strongest identifier (:mod:`identity.golden`), and a person's
  golden profile is the fold of its identifiers' aggregates, so re-resolving
  never has to replay touches.

Cost model
----------
* Only the earliest event per distinct identifier set is evidence (see above), so
  memory grows with identifiers and their combinations, not with touches. (This is
  the definition, not a shortcut: when that first event had identifiers refused
  into persons of their own, plain greedy application of a repeat could link those
  pieces, and this graph does not.)
* A *history forest* (union by size, never path-compressed, each link stamped
  with the key of the event that made it) answers "were these identifiers one
  person at time k?" exactly. A late event whose identifiers already were one
  person at its time needs no replay; only a late event that brings new
  structure replays its evidence group.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol

from identity.attribution import ChannelRules
from identity.errors import UnsupportedEvent
from identity.explain import EvidenceRecord, GroupView
from identity.golden import Golden, render
from identity.names import name_key, touch_name
from identity.normalize import Identifier, Normalizer, Rejection
from identity.policy import BUILT_IN_TYPES, ResolutionPolicy
from identity.shared import AUTO, LINK, UNLINK, shared_identifiers
from identity.touch import Touch, TouchType

__all__ = [
    "ApplyResult",
    "ChangeKind",
    "Conflict",
    "Evidence",
    "IdentityGraph",
    "Match",
    "ProfileChange",
    "erasure_hash",
    "manual_note",
    "profile_id_for",
]

ChangeKind = Literal["created", "updated", "merged", "split", "erased"]
Status = Literal["applied", "reordered", "duplicate", "unresolved"]
#: Types the graph applies: evidence, manual corrections and erasure.
#: Types the engine applies without configuration (declared ones: :meth:`ResolutionPolicy.applies`).
APPLIED_TYPES = BUILT_IN_TYPES


def unsupported(touch: Touch) -> str:
    """Why a touch of a type the engine does not apply is refused."""
    return (
        f"event type {touch.type.value!r} is neither built in nor declared (IDSTREAM_EVENT_TYPES declares types "
        "of your own)"
    )


#: The key the in-memory graph hashes erased identifiers with when none is given (tests, demos).
DEFAULT_ERASURE_KEY = b"idstream-development-erasure-key"
EventKey = tuple[int, str]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Later than any event key (for identifiers without a birth).
_NEVER: EventKey = (1 << 62, "")
_MODES = {TouchType.IDENTITY_LINK: LINK, TouchType.IDENTITY_UNLINK: UNLINK}
_RULES = {AUTO: "co_occurrence", LINK: "manual_link", UNLINK: "manual_unlink"}


def _evidence_key(ev: _Evidence) -> EventKey:
    return ev.key


def profile_id_for(event_id: str, ident: Identifier, shared: bool = False) -> str:
    """The id of a person first created by ``event_id`` around ``ident``.

    A hash, so the same events give the same ids on every replay and in every
    store, and no identifier value leaks into an id. SHA-1 over netstrings,
    because Redis scripts can compute exactly that (``redis.sha1hex``).
    """
    parts: tuple[bytes, ...] = (event_id.encode(), ident.kind.encode(), ident.value.encode())
    if shared:  # the person of its own a shared identifier gets: never the id of the person it glued
        parts += (b"shared",)
    payload = b"".join(b"%d:%s," % (len(part), part) for part in parts)
    return "p_" + hashlib.sha1(payload, usedforsecurity=False).hexdigest()[:20]


def erasure_hash(key: bytes, ident: Identifier) -> str:
    """The keyed hash an erased identifier is remembered by (HMAC-SHA256, 128 bits, hex).

    Keyed, so that a copy of the store cannot be searched for a phone number by hashing every
    possible number: without the key the hashes say nothing.
    """
    message = f"{ident.kind}\x1f{ident.value}".encode()
    return hmac.new(key, message, "sha256").hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Evidence:
    """An edge of the identity graph: two identifiers seen together on one event."""

    a: Identifier
    b: Identifier
    event_id: str
    source: str
    occurred_at: datetime
    rule: str  # "co_occurrence", "manual_link" or "manual_unlink"

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"kind": self.a.kind, "value": self.a.value},
            "b": {"kind": self.b.kind, "value": self.b.value},
            "event_id": self.event_id,
            "source": self.source,
            "occurred_at": self.occurred_at.isoformat(),
            "rule": self.rule,
        }


@dataclass(frozen=True, slots=True)
class Conflict:
    """A merge the policy refused: ``identifier`` could not join ``profile_id``."""

    event_id: str
    kind: str
    limit: int
    profile_id: str
    other_profile_id: str
    identifier: Identifier
    #: "limit_exceeded" (a per-kind limit) or "unlinked" (a manager said these are different people)
    reason: str = "limit_exceeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "reason": self.reason,
            "kind": self.kind,
            "limit": self.limit,
            "profile_id": self.profile_id,
            "other_profile_id": self.other_profile_id,
            "identifier": {"kind": self.identifier.kind, "value": self.identifier.value},
        }


class ProfileChange(NamedTuple):
    """What happened to one person because of one event."""

    kind: ChangeKind
    profile_id: str
    event_id: str
    merged_from: tuple[str, ...] = ()
    split_from: tuple[str, ...] = ()
    #: for a split: the identifiers this person took over from the persons in ``split_from``
    moved: tuple[Identifier, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "profile_id": self.profile_id,
            "event_id": self.event_id,
            "merged_from": list(self.merged_from),
            "split_from": list(self.split_from),
            "moved": [{"kind": i.kind, "value": i.value} for i in self.moved],
        }


class Match(NamedTuple):
    """Who holds an identifier: its person and every person with a claim on it (the holder first)."""

    profile_id: str
    candidates: tuple[str, ...]
    #: the identifier was found shared by several people (see :mod:`identity.shared`)
    shared: bool = False

    @property
    def ambiguous(self) -> bool:
        """More than one person claims the identifier, or it is shared (e.g. an office switchboard)."""
        return self.shared or len(self.candidates) > 1


class ApplyResult(NamedTuple):
    """The outcome of one event (a tuple: cheap to make on the hot path)."""

    event_id: str
    status: Status
    profile_id: str | None = None
    changes: tuple[ProfileChange, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    #: identifiers this event made shared (their merges were split back)
    shared: tuple[Identifier, ...] = ()
    #: a "duplicate" whose event id came before with other content (a reused id): the first event's source
    reused_by: str | None = None


class Aggregate(Protocol):
    """A golden aggregate: :class:`identity.golden.Golden` in memory, :class:`identity.golden.Stored` in a store."""

    def add(
        self,
        touch: Touch,
        key: EventKey,
        trust: int,
        keep: int,
        *,
        points: int = 0,
        path_keep: int = 0,
        rules: ChannelRules | None = None,
    ) -> None: ...

    def serialize(self) -> dict[str, Any]: ...

    def last_key(self) -> EventKey | None: ...


Signature = tuple[frozenset[Identifier], int]
_Holdings = dict[str, frozenset[Identifier]]  # profile id -> its identifiers


#: Name keys one evidence record keeps (the smallest, so the set is a function of the events, not their order).
MAX_RECORD_NAMES = 4


class _Evidence:
    """The earliest event that showed one set of identifiers together (or apart: ``mode``), with the names
    every event showing that set carried (:mod:`identity.names` keys)."""

    __slots__ = ("ids", "key", "mode", "names", "note", "source")

    def __init__(
        self,
        key: EventKey,
        source: str,
        ids: tuple[Identifier, ...],
        mode: int,
        *,
        names: tuple[str, ...] = (),
        note: tuple[str, str] | None = None,
    ) -> None:
        self.key = key
        self.source = source
        self.ids = ids  # distinct, strongest first
        self.mode = mode  # identity.shared.AUTO, LINK or UNLINK
        self.names = names  # sorted, at most MAX_RECORD_NAMES
        self.note = note  # a manual link's or unlink's (actor, reason)

    @property
    def record(self) -> tuple[tuple[Identifier, ...], int, tuple[str, ...]]:
        """As :mod:`identity.shared` reads it."""
        return self.ids, self.mode, self.names

    @property
    def occurred_at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.key[0])

    @property
    def signature(self) -> Signature:
        return frozenset(self.ids), self.mode


def _union_names(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    if not b or set(b) <= set(a):
        return a
    return tuple(sorted({*a, *b})[:MAX_RECORD_NAMES])


def _keep(records: dict[Signature, _Evidence], ev: _Evidence) -> None:
    """File ``ev`` among ``records``: the earliest event of a signature, with the names of all of them."""
    signature = ev.signature
    held = records.get(signature)
    if held is None:
        records[signature] = ev
        return
    first, later = (ev, held) if ev.key < held.key else (held, ev)
    names = _union_names(first.names, later.names)
    if first is held and names is held.names:
        return
    records[signature] = (
        first
        if names is first.names
        else _Evidence(first.key, first.source, first.ids, first.mode, names=names, note=first.note)
    )


def _without(
    records: Iterable[_Evidence], gone: set[Identifier], *, keep_names: bool = False
) -> dict[Signature, _Evidence]:
    """The records with the ``gone`` identifiers taken out (a record left empty is dropped; a record that lost an
    identifier loses its names too: they may be the erased person's), by signature."""
    kept: dict[Signature, _Evidence] = {}
    for record in records:
        ev = record
        if not gone.isdisjoint(ev.ids):
            ids = tuple(i for i in ev.ids if i not in gone)
            if not ids:
                continue
            ev = _Evidence(ev.key, ev.source, ids, ev.mode, names=ev.names if keep_names else (), note=ev.note)
        _keep(kept, ev)
    return kept


def _export_record(ev: _Evidence, index: dict[Identifier, int]) -> list[Any]:
    out: list[Any] = [ev.key[0], ev.key[1], ev.mode, ev.source, [index[i] for i in ev.ids]]
    if ev.names or ev.note:
        out.append(list(ev.names))
    if ev.note:
        out.append(list(ev.note))
    return out


#: Longest actor and reason a manual correction keeps.
MAX_ACTOR, MAX_REASON = 100, 500


def manual_note(touch: Touch) -> tuple[str, str]:
    """Who made a manual link or unlink and why (``attributes.actor``, ``attributes.reason``), as given."""
    attrs = touch.attributes
    actor, reason = attrs.get("actor"), attrs.get("reason")
    return (
        (actor.strip()[:MAX_ACTOR] if isinstance(actor, str) else "") or "unknown",
        reason.strip()[:MAX_REASON] if isinstance(reason, str) else "",
    )


class _Person:
    __slots__ = ("counts", "created", "hroot", "id", "nodes")  # counts: per limit class (ResolutionPolicy.limit_key)

    def __init__(self, pid: str, created: EventKey, hroot: Identifier) -> None:
        self.id = pid
        self.created = created
        self.hroot = hroot  # root of its tree in the history forest
        self.nodes: list[Identifier] = []
        self.counts: dict[str, int] = {}


#: Persons a hub remembers by name: the newest ones seen with it (what a lookup lists and explains).
HUB_SAMPLE = 100


class _Hub:
    """What a hub keeps of its sightings: how many persons were seen with it, the newest few by id."""

    __slots__ = ("count", "sample")

    def __init__(self, count: int = 0, sample: dict[str, EventKey] | None = None) -> None:
        self.count = count
        self.sample: dict[str, EventKey] = sample if sample is not None else {}  # profile id -> newest key

    def see(self, pid: str, key: EventKey) -> None:
        sample = self.sample
        held = sample.get(pid)
        if held is None:
            self.count += 1
            sample[pid] = key
            if len(sample) > HUB_SAMPLE:
                del sample[min(sample, key=lambda p: (sample[p], p))]
        elif held < key:
            sample[pid] = key


@dataclass(slots=True)
class _Group:
    """An evidence group: nodes joined by any evidence, accepted or refused."""

    max_key: EventKey
    nodes: list[Identifier] = field(default_factory=list)
    evidence: dict[Signature, _Evidence] = field(default_factory=dict)


@dataclass(slots=True)
class _Step:
    """What one in-order application did (collected into changes)."""

    created: list[_Person] = field(default_factory=list)
    absorbed: dict[str, str] = field(default_factory=dict)  # retired id -> survivor id
    conflicts: list[Conflict] = field(default_factory=list)


class IdentityGraph:
    """Identity resolution over an in-memory graph. Not thread-safe; no I/O."""

    def __init__(
        self,
        policy: ResolutionPolicy | None = None,
        normalizer: Normalizer | None = None,
        erasure_key: bytes = DEFAULT_ERASURE_KEY,
        aggregate: Callable[[], Aggregate] = Golden,
    ) -> None:
        self.policy = policy or ResolutionPolicy()
        self._aggregate = aggregate
        #: identifiers whose aggregate a touch or an erasure changed (what a store commits)
        self.folded: set[Identifier] = set()
        #: profile ids (re)created since the store last cleared it: a redirect they had is gone (what a store commits)
        self.born: set[str] = set()
        self.normalizer = normalizer or Normalizer()
        self._erasure_key = erasure_key
        self._owner: dict[Identifier, _Person] = {}
        self._persons: dict[str, _Person] = {}
        self._redirects: dict[str, str] = {}
        self._seen: dict[str, tuple[str, str]] = {}  # event id -> (fingerprint, source) of its first event
        self._aggs: dict[Identifier, Aggregate] = {}  # touches, by their strongest identifier
        # evidence groups: a disjoint-set forest over nodes, group data at the roots
        self._parent: dict[Identifier, Identifier] = {}
        self._groups: dict[Identifier, _Group] = {}
        # the history forest (see the module's cost model)
        self._born: dict[Identifier, EventKey] = {}
        self._hparent: dict[Identifier, Identifier] = {}
        self._hkey: dict[Identifier, EventKey] = {}
        self._hsize: dict[Identifier, int] = {}
        self._ranks: dict[str, tuple[int, str]] = {}
        self._trust: dict[tuple[str, str], int] = {}
        # constraints, a function of each group's evidence (recomputed when it replays)
        self._shared: set[Identifier] = set()
        self._apart: dict[Identifier, set[Identifier]] = {}
        self._hubs: dict[Identifier, _Hub] = {}  # shared identifiers out of every group (see "Hubs")
        # erasure: keyed hash -> newest event key the erased person held; and the newest of those
        self._erased: dict[str, EventKey] = {}
        self._erase_max: EventKey = (-1, "")
        #: late events that made the graph replay an evidence group
        self.reorders = 0
        #: late events that brought no new structure and needed no replay
        self.late_without_replay = 0

    # ------------------------------------------------------------------ public API

    def apply(self, touch: Touch, normalized: tuple[list[Identifier], list[Rejection]] | None = None) -> ApplyResult:
        """Apply one touch event and say what changed (``normalized``: its identifiers, if already normalized)."""
        eid = touch.event_id
        first = self._seen.get(eid)
        if first is not None:
            fingerprint, source = first
            reused = source if fingerprint != touch.fingerprint else None
            return ApplyResult(eid, "duplicate", self._primary_of(touch), reused_by=reused)
        if not self.policy.applies(touch.type):
            raise UnsupportedEvent(unsupported(touch))
        if normalized is None:  # a store passes touches it prepared, with their identifiers normalized
            touch = self.policy.prepare(touch)
        accepted, rejected = normalized or self.normalizer.normalize_many(touch.identifiers)
        self._seen[eid] = (touch.fingerprint, touch.source[:200])
        bad = tuple(rejected)
        key = touch.key
        if touch.type is TouchType.ERASE_REQUEST:
            return self._erase(touch, accepted, bad)
        if accepted and key <= self._erase_max:
            gone = [i for i in accepted if self._erased_at(i, key)]
            if gone:
                if touch.type is TouchType.IDENTITY_UNLINK:
                    accepted = [i for i in accepted if i not in gone]
                else:
                    return self._erase_late(touch, gone, [i for i in accepted if i not in gone], bad)
        if not accepted:
            return ApplyResult(eid, "unresolved", rejected=bad)
        hubs = self._hubs
        if hubs and any(i in hubs for i in accepted):
            return self._apply_with_hubs(touch, accepted, bad)
        result = self._apply_accepted(touch, accepted, bad)
        if self._shared:
            return self._detach_hubs(accepted, result)
        return result

    def _apply_accepted(
        self, touch: Touch, accepted: list[Identifier], bad: tuple[Rejection, ...], *, fold: bool = True
    ) -> ApplyResult:
        """Apply a non-erasing event whose identifiers (no hub among them) are normalized and not erased
        (``fold``: its touch goes to the strongest of them; else the caller folds it elsewhere)."""
        eid, key = touch.event_id, touch.key
        mode = _MODES.get(touch.type, AUTO)
        if mode == UNLINK:
            ordered = tuple(sorted(accepted, key=self._order))
            event = _Evidence(key, touch.source[:200], ordered, mode, note=manual_note(touch))
            roots = {self._find(i) for i in event.ids if i in self._parent}
            return self._replay(event, roots, bad, self._status(roots, key))
        strongest = accepted[0] if len(accepted) == 1 else min(accepted, key=self._order)
        if fold:
            self._fold(touch, key, strongest)
        names = self._names_of(touch)
        owner = self._owner
        person = owner.get(strongest)
        if person is not None and mode == AUTO:
            # The steady state: the identifiers are known. Often nothing structural can change.
            root = self._find(strongest)
            group = self._groups[root]
            signature = (frozenset(accepted), mode)
            held = group.evidence.get(signature)
            if held is not None and held.key < key:
                if names and not set(names) <= set(held.names):  # a name this set of identifiers never carried
                    more = _Evidence(held.key, held.source, held.ids, mode, names=_union_names(held.names, names))
                    if self._shared_shift(more, {root}):
                        return self._replay(more, {root}, bad, self._status({root}, key))
                    group.evidence[signature] = more
                return ApplyResult(eid, "applied", person.id, (ProfileChange("updated", person.id, eid),), (), bad)
            if (held is not None or all(owner.get(i) is person for i in accepted)) and (
                group.max_key < key or self._already_joined(accepted, key)
            ):
                ordered = tuple(sorted(accepted, key=self._order))  # replays take identifiers strongest first
                event = _Evidence(key, touch.source[:200], ordered, mode, names=names)
                if held is not None and names and not set(names) <= set(held.names):
                    held = None  # new names: judged as new evidence
                if held is None and self._shared_shift(event, {root}):
                    return self._replay(event, {root}, bad, self._status({root}, key))
                if group.max_key < key:
                    group.max_key = key
                else:
                    self.late_without_replay += 1
                _keep(group.evidence, event)
                return ApplyResult(eid, "applied", person.id, (ProfileChange("updated", person.id, eid),), (), bad)
        ids = tuple(sorted(accepted, key=self._order))
        event = _Evidence(
            key, touch.source[:200], ids, mode, names=names, note=manual_note(touch) if mode == LINK else None
        )
        roots = {self._find(i) for i in ids if i in self._parent}
        if mode == LINK and self._unlinked_among(ids):
            return self._replay(event, roots, bad, self._status(roots, key))  # a newer link may lift an unlink
        if self._new_signature(event, roots) and self._shared_shift(event, roots):
            return self._replay(event, roots, bad, self._status(roots, key))
        if all(self._groups[r].max_key < key for r in roots):
            step = self._apply_in_order(event)
            self._record(event, roots)
            return self._result(event, step, bad)
        if self._already_joined(ids, key):
            self.late_without_replay += 1
            self._record(event, roots)
            primary = owner[ids[0]].id
            return ApplyResult(eid, "applied", primary, (ProfileChange("updated", primary, eid),), (), bad)
        return self._replay(event, roots, bad, "reordered")

    # ------------------------------------------------------------------ hubs
    #
    # A shared identifier (an office switchboard, ``info@``, a shared device) whose evidence group holds
    # more than ``policy.hub_group_size`` identifiers is a *hub*. It leaves its neighbours' evidence group for
    # good: its evidence is filed without it, it stays shared (sticky: no later evidence makes it personal
    # again), touches still go to the strongest identifier (the hub's own person when it is the strongest,
    # as before), and of the persons seen with it it keeps only how many and the newest :data:`HUB_SAMPLE`
    # by profile id. So no event's cost depends on how often it was seen.

    def _apply_with_hubs(self, touch: Touch, accepted: list[Identifier], bad: tuple[Rejection, ...]) -> ApplyResult:
        hubs = self._hubs
        eid = touch.event_id
        rest = [i for i in accepted if i not in hubs]
        strongest = min(accepted, key=self._order)
        if not rest:  # the hub alone (a call from the switchboard): its own touch
            self._fold(touch, touch.key, strongest)
            pid = self._owner[strongest].id
            return ApplyResult(eid, "applied", pid, (ProfileChange("updated", pid, eid),), (), bad)
        # the touch goes to the strongest identifier as it did before the value became a hub (so touches
        # land where they would in any arrival order); the evidence is filed without the hub
        into_hub = strongest in hubs
        result = self._apply_accepted(touch, rest, bad, fold=not into_hub)
        seen_with = result.profile_id
        if seen_with is not None and touch.type is not TouchType.IDENTITY_UNLINK:
            for hub in accepted:
                if hub in hubs:
                    hubs[hub].see(seen_with, touch.key)
        if into_hub and touch.type is not TouchType.IDENTITY_UNLINK:
            self._fold(touch, touch.key, strongest)
            pid = self._owner[strongest].id
            extra = () if any(c.profile_id == pid for c in result.changes) else (ProfileChange("updated", pid, eid),)
            result = result._replace(profile_id=pid, changes=result.changes + extra)
        if self._shared:
            return self._detach_hubs(rest, result)
        return result

    def _detach_hubs(self, ids: Sequence[Identifier], result: ApplyResult) -> ApplyResult:
        """Detach the shared identifiers of the event's evidence groups that grew past the hub bound."""
        bound = self.policy.hub_group_size
        parent, groups = self._parent, self._groups
        for root in {self._find(i) for i in ids if i in parent}:
            group = groups.get(root)
            if group is None or len(group.nodes) <= bound:
                continue
            shared = sorted((n for n in group.nodes if n in self._shared and n not in self._hubs), key=self._order)
            for x in shared:  # each detachment may split the group: only a part still too large goes on
                if len(groups[self._find(x)].nodes) <= bound:
                    continue
                changes = self._detach(x, result.event_id)
                named = {c.profile_id for c in result.changes}
                extra = tuple(c for c in changes if c.profile_id not in named)
                result = result._replace(changes=result.changes + extra)
        return result

    def _detach(self, x: Identifier, eid: str) -> tuple[ProfileChange, ...]:
        """Make a shared identifier a hub: take it out of its group's evidence, into a group of its own."""
        own = self._owner[x]
        pid, created, born = own.id, own.created, self._born[x]
        nodes, records, before = self._unfile({self._find(x)})
        sightings = [
            (ev.key, ids)
            for ev in records.values()
            if ev.mode == AUTO and x in ev.ids and (ids := tuple(i for i in ev.ids if i != x))
        ]
        kept = _without(records.values(), {x}, keep_names=True)
        self._constrain(kept.values(), nodes)
        self._refile(kept.values(), None)
        self._shared.add(x)
        person = _Person(pid, created, x)
        self._persons[pid] = person
        self._redirects.pop(pid, None)
        self.born.add(pid)
        self._hparent[x] = x
        self._hsize[x] = 0
        self._add_node(person, x, born)
        self._parent[x] = x
        self._groups[x] = _Group(max((k for k, _ in sightings), default=born), [x])
        hub = self._hubs[x] = _Hub()
        for key, ids in sorted(sightings):
            firm = [i for i in ids if i not in self._shared]
            hub.see(self._owner[firm[0] if firm else ids[0]].id, key)
        after: dict[str, frozenset[Identifier]] = {}
        for node in nodes:
            holder = self._owner[node]
            if holder.id not in after:
                after[holder.id] = frozenset(holder.nodes)
        return self._diff(before, after, eid, None)

    def hub(self, ident: Identifier) -> tuple[int, tuple[str, ...]] | None:
        """For a hub: how many persons were seen with it, and the profile ids of the newest ones (as
        recorded: some may have merged into others or been erased since)."""
        hub = self._hubs.get(ident)
        return (hub.count, tuple(sorted(hub.sample))) if hub is not None else None

    def apply_many(self, touches: Iterable[Touch]) -> list[ApplyResult]:
        return [self.apply(t) for t in touches]

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        """Apply touches in order (see :class:`identity.store.IdentityStore`)."""
        for touch in touches:
            if not self.policy.applies(touch.type):
                raise UnsupportedEvent(unsupported(touch))
        return [self.apply(t) for t in touches]

    def lookup(self, ident: Identifier) -> str | None:
        """The profile id of the person holding a normalized identifier."""
        person = self._owner.get(ident)
        return person.id if person is not None else None

    def lookup_raw(self, kind: str, raw: str) -> str | None:
        """Normalize a raw value the same way as the stream, then look it up."""
        ident = self.normalizer.normalize(kind, raw)
        return self.lookup(ident) if isinstance(ident, Identifier) else None

    def match(self, ident: Identifier) -> Match | None:
        """The holder of a normalized identifier and every person contesting it (see the module doc)."""
        person = self._owner.get(ident)
        if person is None:
            return None
        owner = self._owner
        hub = self._hubs.get(ident)
        if hub is not None:  # the newest persons seen with it, as they are now
            live = {self.resolve(pid) for pid in hub.sample}
            return Match(person.id, tuple(sorted(p for p in live if p is not None and p != person.id)), shared=True)
        records = self._groups[self._find(ident)].evidence.values()
        if ident in self._shared:  # everyone it was seen with, on observed evidence
            others = {
                owner[other].id
                for ev in records
                if ev.mode == AUTO and ident in ev.ids
                for other in ev.ids
                if other != ident and other not in self._shared
            }
            others.discard(person.id)
            holder = (person.id,) if len(person.nodes) > 1 else ()  # a person of its own is no one's
            return Match(person.id, (*holder, *sorted(others)), shared=True)
        others = {
            home.id
            for ev in records
            if ev.mode != UNLINK and ev.ids[0] != ident and ident in ev.ids and (home := owner[ev.ids[0]]) is not person
        }
        return Match(person.id, (person.id, *sorted(others)))

    def group_view(self, ident: Identifier) -> GroupView | None:
        """The evidence group of an identifier, as :mod:`identity.explain` reads it."""
        if ident not in self._parent:
            return None
        group = self._groups[self._find(ident)]
        records = tuple(
            EvidenceRecord(ev.ids, ev.mode, ev.key[1], ev.source, ev.occurred_at.isoformat(), ev.names, ev.note)
            for ev in group.evidence.values()
        )
        owner = {n: self._owner[n].id for n in group.nodes}
        shared = frozenset(n for n in group.nodes if n in self._shared)
        apart = frozenset(frozenset((a, b)) for a in group.nodes for b in self._apart.get(a, ()))
        return GroupView(records, owner, shared, apart)

    def any_identifier(self, profile_id: str) -> Identifier | None:
        """One identifier of a live or retired profile id (to find its evidence group)."""
        live = self.resolve(profile_id)
        return self._persons[live].nodes[0] if live is not None else None

    def shared(self) -> frozenset[Identifier]:
        """The identifiers found shared by several people (they link nothing)."""
        return frozenset(self._shared)

    def is_erased(self, ident: Identifier) -> bool:
        """Was this identifier erased (and not seen again since)?"""
        return ident not in self._owner and erasure_hash(self._erasure_key, ident) in self._erased

    def resolve(self, profile_id: str) -> str | None:
        """The live id for a profile id, following redirects of retired ids."""
        seen = 0
        while profile_id not in self._persons:
            nxt = self._redirects.get(profile_id)
            if nxt is None or seen > len(self._redirects):
                return None
            profile_id, seen = nxt, seen + 1
        return profile_id

    def profile(self, profile_id: str) -> dict[str, Any] | None:
        """The golden profile of a live or retired id, or None."""
        live = self.resolve(profile_id)
        return self._render(self._persons[live]) if live is not None else None

    def persons(self) -> dict[str, frozenset[Identifier]]:
        """The partition: profile id -> its identifiers."""
        return {pid: frozenset(p.nodes) for pid, p in self._persons.items()}

    def profiles(self) -> Iterator[dict[str, Any]]:
        for pid in sorted(self._persons):
            yield self._render(self._persons[pid])

    def evidence(self, profile_id: str) -> list[Evidence]:
        """The evidence around a person (accepted and refused), oldest first.

        For each distinct set of identifiers seen together, the earliest event.
        """
        live = self.resolve(profile_id)
        if live is None:
            return []
        group = self._groups[self._find(self._persons[live].nodes[0])]
        out: list[Evidence] = []
        for ev in sorted(group.evidence.values(), key=_evidence_key):
            rule = _RULES[ev.mode]
            out.extend(Evidence(ev.ids[0], other, ev.key[1], ev.source, ev.occurred_at, rule) for other in ev.ids[1:])
        return out

    @property
    def redirects(self) -> dict[str, str]:
        return dict(self._redirects)

    def __len__(self) -> int:
        return len(self._persons)

    # ------------------------------------------------------------------ resolution

    def _order(self, ident: Identifier) -> tuple[tuple[int, str], str]:
        rank = self._ranks.get(ident.kind)
        if rank is None:
            rank = self._ranks[ident.kind] = self.policy.kind_rank(ident.kind)
        return rank, ident.value

    def _names_of(self, touch: Touch) -> tuple[str, ...]:
        """The name key an event carries, as evidence (see :mod:`identity.names`)."""
        raw = touch_name(touch.attributes) if touch.attributes else None
        if raw is None:
            return ()
        name = name_key(raw)
        return (name,) if name is not None else ()

    def _fold(self, touch: Touch, key: EventKey, strongest: Identifier) -> None:
        trust = self._trust.get((touch.type, touch.source))
        if trust is None:
            trust = self._trust[(touch.type, touch.source)] = self.policy.trust(touch.type, touch.source)
        agg = self._aggs.get(strongest)
        if agg is None:
            agg = self._aggs[strongest] = self._aggregate()
        self.folded.add(strongest)
        policy = self.policy
        agg.add(
            touch,
            key,
            trust,
            policy.recent_touches,
            points=policy.points(touch),
            path_keep=policy.attribution_touches,
            rules=policy.channel_rules,
        )

    def _root_at(self, node: Identifier, key: EventKey) -> Identifier:
        """The root of ``node``'s tree in the history forest as it stood just before ``key``."""
        hparent, hkey = self._hparent, self._hkey
        while (up := hparent[node]) != node and hkey[node] < key:
            node = up
        return node

    def _already_joined(self, ids: Sequence[Identifier], key: EventKey) -> bool:
        """Did every identifier exist, all in one person, just before ``key``?

        Then an event at ``key`` would have linked nothing new in canonical order,
        so no later decision can differ.
        """
        born = self._born
        if any(born.get(i, key) >= key for i in ids):
            return False
        first = self._root_at(ids[0], key)
        return all(self._root_at(i, key) == first for i in ids[1:])

    def _apply_in_order(self, event: _Evidence) -> _Step:
        step = _Step()
        owner = self._owner
        mode = event.mode
        if mode == UNLINK:  # a statement that these are different people: it links nothing
            for ident in event.ids:
                if ident not in owner:
                    self._new_person(event, ident, step)
            return step
        manual = mode == LINK
        shared = self._shared
        acc: _Person | None = None
        fresh: list[Identifier] = []
        refused_ids: set[str] = set()  # one conflict per refused person, not per identifier of it
        for ident in event.ids:
            person = owner.get(ident)
            if not manual and ident in shared:  # links nothing; a person of its own
                if person is None:
                    self._new_person(event, ident, step, shared=True)
                continue
            if person is None:
                fresh.append(ident)
            elif acc is None:
                acc = person
            elif person is not acc and person.id not in refused_ids:
                if self._apart and self._apart_between(acc, person):
                    refused: tuple[str, int, str] | None = (ident.kind, 0, "unlinked")
                else:
                    refused = None if manual else self._refusal(acc, person)
                if refused is None:
                    acc = self._merge(acc, person, step, event.key)
                else:
                    kind, limit, reason = refused
                    refused_ids.add(person.id)
                    step.conflicts.append(Conflict(event.key[1], kind, limit, acc.id, person.id, ident, reason))
        limit_key, limit_of = self.policy.limit_key, self.policy.limit
        apart = self._apart
        for ident in fresh:
            if acc is None:  # named after the event's strongest identifier even if that is shared now,
                acc = self._new_person(event, ident, step, named_by=event.ids[0])  # so a split keeps the id
                continue
            cls = limit_key(ident)
            cap = limit_of(cls)
            if apart and any(owner.get(m) is acc for m in apart.get(ident, ())):
                other = self._new_person(event, ident, step)
                step.conflicts.append(Conflict(event.key[1], ident.kind, 0, acc.id, other.id, ident, "unlinked"))
            elif manual or cap is None or acc.counts.get(cls, 0) < cap:
                self._add_node(acc, ident, event.key)
            else:
                other = self._new_person(event, ident, step)
                step.conflicts.append(Conflict(event.key[1], ident.kind, cap, acc.id, other.id, ident))
        return step

    def _apart_between(self, a: _Person, b: _Person) -> bool:
        """Did a manager say a node of ``a`` and a node of ``b`` are different people?"""
        small, big = (a, b) if len(a.nodes) <= len(b.nodes) else (b, a)
        owner, apart = self._owner, self._apart
        return any(owner.get(m) is big for n in small.nodes for m in apart.get(n, ()))

    def _refusal(self, a: _Person, b: _Person) -> tuple[str, int, str] | None:
        """The first kind (alphabetically by limit class: a CRM id counts per system) that both hold and would
        exceed its limit together."""
        limit_of = self.policy.limit
        for cls in sorted(a.counts.keys() & b.counts.keys()):
            limit = limit_of(cls)
            if limit is not None and a.counts[cls] + b.counts[cls] > limit:
                return cls.partition(":")[0], limit, "limit_exceeded"
        return None

    def _new_person(
        self,
        event: _Evidence,
        ident: Identifier,
        step: _Step,
        named_by: Identifier | None = None,
        shared: bool = False,
    ) -> _Person:
        person = _Person(profile_id_for(event.key[1], named_by or ident, shared), event.key, ident)
        self._persons[person.id] = person
        self._redirects.pop(person.id, None)
        self.born.add(person.id)
        self._hparent[ident] = ident
        self._hsize[ident] = 0
        self._add_node(person, ident, event.key)
        step.created.append(person)
        return person

    def _add_node(self, person: _Person, ident: Identifier, key: EventKey) -> None:
        person.nodes.append(ident)
        cls = self.policy.limit_key(ident)
        person.counts[cls] = person.counts.get(cls, 0) + 1
        self._owner[ident] = person
        self._born[ident] = key
        if ident != person.hroot:
            self._hparent[ident] = person.hroot
            self._hkey[ident] = key
        self._hsize[person.hroot] += 1

    def _survivor_is_first(self, a: _Person, b: _Person) -> bool:
        anchors = self.policy.anchor_kinds
        a_anchored = any(n and k.partition(":")[0] in anchors for k, n in a.counts.items())
        b_anchored = any(n and k.partition(":")[0] in anchors for k, n in b.counts.items())
        if a_anchored != b_anchored:
            return a_anchored
        return (a.created, a.id) < (b.created, b.id)

    def _merge(self, a: _Person, b: _Person, step: _Step, key: EventKey) -> _Person:
        """Union by size: relabel the smaller node set; the policy picks the surviving id."""
        survivor, retired = (a, b) if self._survivor_is_first(a, b) else (b, a)
        survivor_id, survivor_created, retired_id = survivor.id, survivor.created, retired.id
        big, small = (a, b) if len(a.nodes) >= len(b.nodes) else (b, a)
        owner = self._owner
        for node in small.nodes:
            owner[node] = big
        big.nodes.extend(small.nodes)
        for kind, n in small.counts.items():
            big.counts[kind] = big.counts.get(kind, 0) + n
        big.id, big.created = survivor_id, survivor_created
        hsize = self._hsize
        high, low = (a.hroot, b.hroot) if hsize[a.hroot] >= hsize[b.hroot] else (b.hroot, a.hroot)
        self._hparent[low] = high
        self._hkey[low] = key
        hsize[high] += hsize.pop(low)
        big.hroot = high
        del self._persons[retired_id]
        self._persons[survivor_id] = big
        self._redirects[retired_id] = survivor_id
        for older, into in step.absorbed.items():  # chains within one step
            if into == retired_id:
                step.absorbed[older] = survivor_id
        step.absorbed[retired_id] = survivor_id
        return big

    # ------------------------------------------------------------------ evidence groups

    def _find(self, node: Identifier) -> Identifier:
        parent = self._parent
        while (up := parent[node]) != node:
            parent[node] = grand = parent[up]  # path halving
            node = grand
        return node

    def _record(self, event: _Evidence, roots: set[Identifier]) -> None:
        """Join the event's nodes into one evidence group and file the event there."""
        parent = self._parent
        groups = self._groups
        fresh = [i for i in event.ids if i not in parent]
        if roots:
            root = next(iter(roots)) if len(roots) == 1 else max(roots, key=lambda r: len(groups[r].nodes))
            group = groups[root]
            for other in roots:
                if other != root:
                    absorbed = groups.pop(other)
                    parent[other] = root
                    group.nodes.extend(absorbed.nodes)
                    group.evidence.update(absorbed.evidence)
            group.nodes.extend(fresh)
        else:
            root = fresh[0]
            group = groups[root] = _Group(event.key, fresh)
        for ident in fresh:
            parent[ident] = root
        _keep(group.evidence, event)
        group.max_key = max(group.max_key, event.key)

    # ------------------------------------------------------------------ constraints and replays

    def _status(self, roots: set[Identifier], key: EventKey) -> Status:
        return "applied" if all(self._groups[r].max_key < key for r in roots) else "reordered"

    def _new_signature(self, event: _Evidence, roots: set[Identifier]) -> bool:
        signature = event.signature
        return all(signature not in self._groups[r].evidence for r in roots)

    def _shared_shift(self, event: _Evidence, roots: set[Identifier]) -> bool:
        """Would filing this new evidence change which identifiers of its group are shared?"""
        groups = [self._groups[r] for r in roots]
        records = [ev.record for g in groups for ev in g.evidence.values()]
        records.append(event.record)
        now = shared_identifiers(records, self.policy)
        if not self._shared:
            return bool(now)
        before = {n for g in groups for n in g.nodes if n in self._shared}
        return now != before

    def _unlinked_among(self, ids: Sequence[Identifier]) -> bool:
        apart = self._apart
        return bool(apart) and any(other in ids for i in ids for other in apart.get(i, ()))

    def _constrain(self, records: Iterable[_Evidence], nodes: Iterable[Identifier]) -> frozenset[Identifier]:
        """Recompute the shared identifiers and the unlinked pairs of a group from its evidence."""
        records = list(records)
        for node in nodes:
            self._shared.discard(node)
            self._apart.pop(node, None)
        shared = shared_identifiers([ev.record for ev in records], self.policy)
        self._shared |= shared
        links = [ev for ev in records if ev.mode == LINK]
        for ev in records:
            if ev.mode != UNLINK:
                continue
            for i, a in enumerate(ev.ids):
                for b in ev.ids[i + 1 :]:
                    # a manager's newer statement that they are one person lifts this one
                    if not any(link.key > ev.key and a in link.ids and b in link.ids for link in links):
                        self._apart.setdefault(a, set()).add(b)
                        self._apart.setdefault(b, set()).add(a)
        return shared

    def _erased_at(self, ident: Identifier, key: EventKey) -> bool:
        """Was ``ident`` erased with data as new as ``key`` (so this event must not bring it back)?"""
        erased = self._erased.get(erasure_hash(self._erasure_key, ident))
        return erased is not None and key <= erased

    def _unfile(self, roots: set[Identifier]) -> tuple[list[Identifier], dict[Signature, _Evidence], _Holdings]:
        """Take evidence groups apart: their nodes, their records and who held what before."""
        groups = [self._groups.pop(r) for r in roots]
        nodes = [n for g in groups for n in g.nodes]
        records = {sig: ev for g in groups for sig, ev in g.evidence.items()}
        before: dict[str, frozenset[Identifier]] = {}
        for node in nodes:
            person = self._owner.pop(node)
            if person.id not in before:
                before[person.id] = frozenset(person.nodes)
                del self._persons[person.id]
            del self._parent[node], self._born[node], self._hparent[node]
            self._hubs.pop(node, None)
            self._hkey.pop(node, None)
            self._hsize.pop(node, None)
        return nodes, records, before

    def _refile(self, records: Iterable[_Evidence], event: _Evidence | None) -> list[Conflict]:
        """Apply records in canonical order; the conflicts of ``event``."""
        conflicts: list[Conflict] = []
        for ev in sorted(records, key=_evidence_key):
            step = self._apply_in_order(ev)
            self._record(ev, {self._find(i) for i in ev.ids if i in self._parent})
            if ev is event:
                conflicts = step.conflicts
        return conflicts

    def _replay(
        self, event: _Evidence, roots: set[Identifier], rejected: tuple[Rejection, ...], status: Status
    ) -> ApplyResult:
        """Re-resolve the evidence groups an event touches, in canonical order, under their constraints."""
        if status == "reordered":
            self.reorders += 1
        nodes, records, before = self._unfile(roots)
        _keep(records, event)
        was_shared = {n for n in (*nodes, *event.ids) if n in self._shared}
        shared = self._constrain(records.values(), (*nodes, *event.ids))
        conflicts = self._refile(records.values(), event)
        after: dict[str, frozenset[Identifier]] = {}
        for node in (*nodes, *event.ids):
            person = self._owner[node]
            if person.id not in after:
                after[person.id] = frozenset(person.nodes)
        primary = self._owner[event.ids[0]].id
        changes = self._diff(before, after, event.key[1], primary)
        newly = tuple(sorted(shared - was_shared))
        return ApplyResult(event.key[1], status, primary, changes, self._live(conflicts), rejected, newly)

    def _erase_late(
        self, touch: Touch, gone: Sequence[Identifier], rest: Sequence[Identifier], rejected: tuple[Rejection, ...]
    ) -> ApplyResult:
        """An event older than an erasure of one of its identifiers, arriving after it.

        An erasure is an event on the person's timeline: in time order this event came first and put its
        identifiers in the person the erasure then deleted. So it is erased itself (its touch is dropped),
        and so is what it would have joined: the identifiers it names, each one's person if that identifier
        was there before the erasure, and (remembered as erased up to the erasure) those it names for the
        first time, so that their own late events are erased in turn. Shared identifiers are left alone:
        they were nobody's; so are identifiers a manager unlinked from the erased ones. An identifier first
        seen after the erasure keeps what came after.
        """
        eid = touch.event_id
        erasure = max(self._erased[erasure_hash(self._erasure_key, i)] for i in gone)
        targets: list[Identifier] = []
        for ident in rest:
            if ident in self._shared or self._unlinked_from_erased(ident):
                continue
            born = self._born.get(ident)
            if born is None or born < erasure:
                targets.append(ident)
            else:  # in time order it was erased, then seen again: its own older late events are erased too
                digest = erasure_hash(self._erasure_key, ident)
                self._erased[digest] = max(self._erased.get(digest, erasure), erasure)
        if not targets:
            return ApplyResult(eid, "applied", None, (), (), rejected)
        return self._erase_ids(eid, erasure, targets, rejected)

    def _unlinked_from_erased(self, ident: Identifier) -> bool:
        """Did a manager unlink ``ident`` from identifiers since erased (an unlink record left holding it alone)?
        Then a late event showing them together would not have joined them: it takes nothing of ``ident``'s."""
        if ident not in self._parent:
            return False
        group = self._groups[self._find(ident)]
        return any(ev.mode == UNLINK and ev.ids == (ident,) for ev in group.evidence.values())

    def _erase(self, touch: Touch, accepted: Sequence[Identifier], rejected: tuple[Rejection, ...]) -> ApplyResult:
        """Delete every identifier, touch and attribute of the persons holding these identifiers."""
        if not accepted:
            return ApplyResult(touch.event_id, "unresolved", rejected=rejected)
        if len(accepted) > 1 and any(i in self._shared and i not in self._hubs for i in accepted):
            accepted = [*accepted, *self._claimed(accepted)]
        return self._erase_ids(touch.event_id, touch.key, accepted, rejected)

    def _claimed(self, accepted: Sequence[Identifier]) -> list[Identifier]:
        """What a request naming several identifiers as one person's claims beyond their persons.

        A caller id seen only on calls from two browsers is judged shared (nobody claimed it); the request
        naming it beside the person's e-mail claims it, as the form that showed them together would have.
        If the claim makes it personal, the identifiers it then joins are the person's too and are erased
        with it, so the result does not depend on whether that form arrived before the erasure or after.
        """
        roots = {self._find(i) for i in accepted if i in self._parent}
        records = [ev for r in roots for ev in self._groups[r].evidence.values()]
        now = shared_identifiers([*(ev.record for ev in records), (tuple(accepted), AUTO, ())], self.policy)
        free = {i for i in accepted if i in self._shared and i not in now}
        if not free:
            return []
        reached, grew = set(free), True
        linking = [[i for i in ev.ids if i not in now] for ev in records if ev.mode != UNLINK]
        while grew:
            grew = False
            for ids in linking:
                if not reached.isdisjoint(ids) and not reached.issuperset(ids):
                    reached.update(ids)
                    grew = True
        return sorted(reached - set(accepted), key=self._order)

    def _erase_ids(
        self, eid: str, key: EventKey, accepted: Sequence[Identifier], rejected: tuple[Rejection, ...]
    ) -> ApplyResult:
        targets = {self._owner[i].id: self._owner[i] for i in accepted if i in self._owner}
        erased = {*accepted, *(n for p in targets.values() for n in p.nodes)}
        roots = {self._find(n) for n in erased if n in self._parent}
        nodes, records, before = self._unfile(roots)
        # remembered as of the newest thing erased, so that no replayed older event brings it back
        newest = key
        for ev in records.values():
            if ev.key > newest and not erased.isdisjoint(ev.ids):
                newest = ev.key
        for node in erased:
            agg = self._aggs.pop(node, None)
            if agg is not None:
                self.folded.add(node)
            last = agg.last_key() if agg is not None else None
            if last is not None and last > newest:
                newest = last
        for node in erased:
            digest = erasure_hash(self._erasure_key, node)
            self._erased[digest] = max(self._erased.get(digest, newest), newest)
        self._erase_max = max(self._erase_max, newest)
        kept = _without(records.values(), erased)  # what it showed about the others, nothing of the erased
        remaining = [n for n in nodes if n not in erased]
        self._constrain(kept.values(), nodes)
        self._refile(kept.values(), None)
        others = {pid: ids for pid, ids in before.items() if pid not in targets}  # every node of a target is erased
        after: dict[str, frozenset[Identifier]] = {}
        for node in remaining:
            person = self._owner[node]
            if person.id not in after:
                after[person.id] = frozenset(person.nodes)
        changes = [ProfileChange("erased", pid, eid) for pid in sorted(targets)]
        changes.extend(self._diff(others, after, eid, None))
        return ApplyResult(eid, "applied", None, tuple(changes), (), rejected)

    def _diff(
        self,
        before: dict[str, frozenset[Identifier]],
        after: dict[str, frozenset[Identifier]],
        eid: str,
        primary: str | None,
    ) -> tuple[ProfileChange, ...]:
        old_owner = {n: pid for pid, nodes in before.items() for n in nodes}
        home: dict[str, str] = {}
        for pid, nodes in before.items():
            if pid in after:
                continue
            # a retired id follows its oldest identifier: the same person in every arrival order (which person
            # held most of it when it was retired depends on what had arrived)
            born = self._born
            oldest = min(nodes, key=lambda n: (born.get(n, _NEVER), self._order(n)))
            home[pid] = self._owner[oldest].id
            self._redirects[pid] = home[pid]
        changes = []
        for pid in sorted(after):
            nodes = after[pid]
            sources = {old_owner[n] for n in nodes if n in old_owner}
            merged_from = tuple(sorted(o for o, h in home.items() if h == pid))
            split_from = tuple(sorted(o for o in sources if o != pid and (o in after or home.get(o) != pid)))
            if pid in before and before[pid] - nodes:
                split_from = tuple(sorted({*split_from, pid}))
            kind: ChangeKind
            if split_from:
                kind = "split"
            elif merged_from:
                kind = "merged"
            elif pid not in before:
                kind = "created"
            elif before[pid] != nodes or pid == primary:
                kind = "updated"
            else:
                continue
            moved: tuple[Identifier, ...] = ()
            if kind == "split":
                moved = tuple(sorted(n for n in nodes if n in old_owner and old_owner[n] != pid))
            changes.append(ProfileChange(kind, pid, eid, merged_from, split_from, moved))
        return tuple(changes)

    # ------------------------------------------------------------------ output

    def _result(self, event: _Evidence, step: _Step, rejected: tuple[Rejection, ...]) -> ApplyResult:
        eid = event.key[1]
        primary = self._owner[event.ids[0]].id
        created = [p.id for p in step.created]
        if not step.absorbed and (not created or created == [primary]):  # the common case: one person
            change = ProfileChange("created" if created else "updated", primary, eid)
            return ApplyResult(eid, "applied", primary, (change,), self._live(step.conflicts), rejected)
        # In order, an event merges known persons into one before it creates any, so every
        # absorbed id went to one survivor, and a person it creates is never absorbed by it.
        changes: list[ProfileChange] = []
        if step.absorbed:
            survivor = next(iter(step.absorbed.values()))
            changes.append(ProfileChange("merged", survivor, eid, tuple(sorted(step.absorbed))))
        changes.extend(ProfileChange("created", pid, eid) for pid in sorted(created))
        if primary not in created and not (step.absorbed and primary == changes[0].profile_id):
            changes.append(ProfileChange("updated", primary, eid))
        return ApplyResult(eid, "applied", primary, tuple(changes), self._live(step.conflicts), rejected)

    def _live(self, conflicts: list[Conflict]) -> tuple[Conflict, ...]:
        """Conflicts naming the ids as they are after the event (a later merge may retire one)."""
        return tuple(
            replace(
                c,
                profile_id=self.resolve(c.profile_id) or c.profile_id,
                other_profile_id=self.resolve(c.other_profile_id) or c.other_profile_id,
            )
            for c in conflicts
        )

    def _primary_of(self, touch: Touch) -> str | None:
        accepted, _ = self.normalizer.normalize_many(touch.identifiers)
        return self.lookup(min(accepted, key=self._order)) if accepted else None

    def _render(self, person: _Person) -> dict[str, Any]:
        identifiers: dict[str, list[str]] = {}
        for node in person.nodes:
            identifiers.setdefault(node.kind, []).append(node.value)
        aggs = self._aggs
        rank = self.policy.kind_rank
        return {
            "profile_id": person.id,
            "created_at": (_EPOCH + timedelta(microseconds=person.created[0])).isoformat(),
            "identifiers": {k: sorted(identifiers[k]) for k in sorted(identifiers, key=rank)},
            **render((aggs[n].serialize() for n in person.nodes if n in aggs), self.policy),
        }

    # ------------------------------------------------------------------ units: how a store holds the graph
    #
    # A store keeps the graph as *units*, one per evidence group: everything a replay of the group needs
    # (its identifiers, evidence, persons, history forest and constraints) in plain data. A worker loads the
    # units its batch touches into an empty graph, applies the batch with the same code as the in-memory
    # graph, and commits what changed. Resolution never looks outside the groups of an event's identifiers,
    # so a graph holding just those units decides exactly as the whole graph would.

    def unit_roots(self) -> list[Identifier]:
        """The root identifier of every evidence group held."""
        return list(self._groups)

    def root_of(self, ident: Identifier) -> Identifier | None:
        """The root of an identifier's evidence group, if it has one."""
        return self._find(ident) if ident in self._parent else None

    def unit_nodes(self, root: Identifier) -> list[Identifier]:
        return self._groups[root].nodes

    def export_unit(self, root: Identifier) -> dict[str, Any]:
        """An evidence group as plain data (:meth:`load_unit` reads it back); identifiers as nodes."""
        group = self._groups[root]
        nodes = group.nodes
        if nodes[0] != root:  # the root first: loading takes it as the root
            nodes.remove(root)
            nodes.insert(0, root)
        index = {n: i for i, n in enumerate(nodes)}
        records = list(group.evidence.values())
        at = {ev.key: j for j, ev in enumerate(records)}

        def key(k: EventKey) -> int | list[Any]:
            j = at.get(k)
            return j if j is not None else [k[0], k[1]]

        persons: list[list[Any]] = []
        listed: set[str] = set()
        owner = self._owner
        for n in nodes:
            p = owner[n]
            if p.id not in listed:
                listed.add(p.id)
                persons.append([p.id, key(p.created), index[p.hroot], [index[m] for m in p.nodes]])
        history: list[list[Any]] = []
        hparent, hkey, hsize, born = self._hparent, self._hkey, self._hsize, self._born
        for n in nodes:
            up = hparent[n]
            if up == n:
                history.append([key(born[n]), hsize[n]])
            else:
                history.append([key(born[n]), index[up], key(hkey[n])])
        out: dict[str, Any] = {
            "n": [f"{n.kind}\x1f{n.value}" for n in nodes],
            "mk": key(group.max_key),
            "e": [_export_record(ev, index) for ev in records],
            "p": persons,
            "h": history,
        }
        shared = [index[n] for n in nodes if n in self._shared]
        if shared:
            out["s"] = shared
        hub = self._hubs.get(root)
        if hub is not None:
            out["hub"] = [hub.count, [[pid, k[0], k[1]] for pid, k in hub.sample.items()]]
        apart = self._apart
        if apart:
            pairs = sorted(
                {(min(index[a], index[b]), max(index[a], index[b])) for a in nodes for b in apart.get(a, ())}
            )
            if pairs:
                out["a"] = [list(p) for p in pairs]
        return out

    def load_unit(self, unit: dict[str, Any]) -> Identifier:
        """Take in an evidence group exported by :meth:`export_unit`; its root."""
        nodes = [Identifier(*n.split("\x1f", 1)) for n in unit["n"]]
        records = [
            _Evidence(
                (r[0], r[1]),
                r[3],
                tuple(nodes[i] for i in r[4]),
                r[2],
                names=tuple(r[5]) if len(r) > 5 else (),
                note=(r[6][0], r[6][1]) if len(r) > 6 and r[6] else None,
            )
            for r in unit["e"]
        ]

        def key(x: int | list[Any]) -> EventKey:
            return records[x].key if isinstance(x, int) else (x[0], x[1])

        root = nodes[0]
        self._groups[root] = _Group(key(unit["mk"]), list(nodes), {ev.signature: ev for ev in records})
        parent, owner = self._parent, self._owner
        for n in nodes:
            parent[n] = root
        for pid, created, hroot, members in unit["p"]:
            person = _Person(pid, key(created), nodes[hroot])
            person.nodes = [nodes[i] for i in members]
            counts = person.counts
            limit_key = self.policy.limit_key
            for n in person.nodes:
                cls = limit_key(n)
                counts[cls] = counts.get(cls, 0) + 1
                owner[n] = person
            self._persons[pid] = person
        for n, h in zip(nodes, unit["h"], strict=True):
            self._born[n] = key(h[0])
            if len(h) == 2:
                self._hparent[n] = n
                self._hsize[n] = h[1]
            else:
                self._hparent[n] = nodes[h[1]]
                self._hkey[n] = key(h[2])
        self._shared.update(nodes[i] for i in unit.get("s", ()))
        if "hub" in unit:
            count, sample = unit["hub"]
            self._hubs[root] = _Hub(count, {pid: (micros, eid) for pid, micros, eid in sample})
        for i, j in unit.get("a", ()):
            self._apart.setdefault(nodes[i], set()).add(nodes[j])
            self._apart.setdefault(nodes[j], set()).add(nodes[i])
        return root

    def load_aggregate(self, ident: Identifier, aggregate: Aggregate) -> None:
        self._aggs[ident] = aggregate

    def aggregate_of(self, ident: Identifier) -> Aggregate | None:
        return self._aggs.get(ident)

    def load_seen(self, event_id: str, fingerprint: str, source: str) -> None:
        """An event id applied before (by another batch or worker)."""
        self._seen[event_id] = (fingerprint, source)

    def load_erased(self, digest: str, key: EventKey) -> None:
        self._erased[digest] = key

    @property
    def erase_max(self) -> EventKey:
        """The newest data any erasure covered (events up to it are checked against the erased hashes)."""
        return self._erase_max

    @erase_max.setter
    def erase_max(self, key: EventKey) -> None:
        self._erase_max = key

    def erased(self) -> dict[str, EventKey]:
        return dict(self._erased)

    def seen_ids(self) -> dict[str, tuple[str, str]]:
        return dict(self._seen)

    def unit_persons(self, root: Identifier) -> dict[str, frozenset[Identifier]]:
        """The persons of one evidence group: profile id -> identifiers."""
        owner = self._owner
        out: dict[str, frozenset[Identifier]] = {}
        for n in self._groups[root].nodes:
            p = owner[n]
            if p.id not in out:
                out[p.id] = frozenset(p.nodes)
        return out

    def claims(self, root: Identifier) -> dict[Identifier, tuple[bool, frozenset[str]]]:
        """What :meth:`match` answers for every contested or shared identifier of one group, in one pass:
        (shared, the other persons with a claim on it). Identifiers claimed by their person alone are left out."""
        owner, shared = self._owner, self._shared
        hub = self._hubs.get(root)
        if hub is not None:  # the newest persons seen with it, by the ids they had then
            return {root: (True, frozenset(hub.sample) - {owner[root].id})}
        found: dict[Identifier, set[str]] = {}
        for ev in self._groups[root].evidence.values():
            if ev.mode == UNLINK:
                continue
            ids = ev.ids
            head = owner[ids[0]]
            for x in ids:
                if x in shared:
                    if ev.mode == AUTO:
                        found.setdefault(x, set()).update(owner[o].id for o in ids if o != x and o not in shared)
                elif x != ids[0] and owner[x] is not head:
                    found.setdefault(x, set()).add(head.id)
        out: dict[Identifier, tuple[bool, frozenset[str]]] = {}
        for x in self._groups[root].nodes:
            is_shared = x in shared
            others = found.get(x)
            if others:
                others.discard(owner[x].id)
            if is_shared or others:
                out[x] = (is_shared, frozenset(others or ()))
        return out

    def live_profile(self, profile_id: str) -> dict[str, Any] | None:
        """The golden profile of a live id (no redirects followed), or None."""
        person = self._persons.get(profile_id)
        return self._render(person) if person is not None else None
