"""Shared-identifier detection: which identifier values belong to several people.

An office switchboard, a family computer or ``info@company.ru`` is seen beside the identifiers of many
different people. Linking through it glues them into one "blob". This module decides, from the
evidence alone, which values are *shared*; the graph then lets them link nothing, and a lookup of one
answers ``ambiguous`` with the persons seen with it.

Definition. Within one evidence group:

* the **neighbours** of ``x`` are the identifiers seen with it on automatic evidence (manual links
  and unlinks are a manager's statements, not observations); ``x`` is a **candidate** when its kind is
  watched and it has at least two neighbours;
* the **clusters** of ``x`` are the connected components, in the evidence graph without ``x`` and
  without the identifiers already found shared, that hold a neighbour of ``x``. A cluster that holds a
  personal kind (``ResolutionPolicy.personal_kinds``) or a name is a **person cluster**; any other (a
  browser seen only with ``x``) is a **device cluster**;
* two person clusters **conflict** when they cannot be one person:
  - their names clearly differ (:func:`identity.names.compare_names`; a *definite* conflict), unless
    another pair of their names matches;
  - together they would pass a per-kind limit (two CRM contacts of one system);
  - they hold different values of a kind that is evidence of sharing for ``x``'s kind
    (``ResolutionPolicy.sharing_kinds``: two different phones or two different e-mails on one device,
    two different e-mails on one phone), unless their names match;
  a phone cluster and an e-mail cluster do not conflict: that is one person's phone and e-mail;
* the **persons** behind ``x`` are the colours of a greedy colouring of the conflict graph (clusters
  in a fixed order): the fewest people the evidence needs, found deterministically;
* ``x`` is **over**, by an *excess*, when any of these holds:
  - persons > ``shared_persons[kind]`` (a device: more than one person; a phone or e-mail: more than two);
  - two person clusters have clearly different names (and the kind is in ``shared_persons``): a phone
    or mailbox two differently named people gave;
  - ``x`` is *unclaimed* (no neighbour of a personal kind and no name on its evidence: a caller id seen
    only on calls) and has more clusters than ``shared_clusters[kind]``;
  - the *weighted* number of unconnected clusters, ``(persons + device clusters) × weight``, passes
    ``shared_devices[kind]``: a person-sized bound on how many separate devices one value may join. The
    weight of a phone is its number type's (``number_type_weights``: a landline or virtual PBX number is
    an office or a household far more often than a mobile); of any other value, 1;
* starting from no shared identifiers, every candidate is tested against the same shared set, and
  those over by the most (then of the strongest kind, with the most clusters, with the most
  neighbours; all of them on a tie) become shared; this repeats until none is over. One at a time
  matters: a visitor's device that called from the office switchboard bridges the switchboard's
  blob and the visitor's own identifiers, so it looks over too until the switchboard is taken out;
* a device identifier never seen without a shared device identifier (the same browser's other cookie) is
  shared with it (``same_device``).

The result depends only on the set of evidence (identifiers, modes and the names on each record), never
on arrival order, so the graph can replay an evidence group with it and stay order-independent. It is
not monotone in the evidence: a new event that connects a phone's neighbours (a CRM record showing two
e-mails are one client) can make it personal again, and the graph then merges back what the split
separated.

Cost: a union-find over the group's evidence per candidate and round. Groups are small except around
shared values (which become hubs and leave their groups), and this runs only when an event brings a new
combination of identifiers into a group that holds a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from identity.names import DIFFERENT, SAME, compare_names
from identity.normalize import Identifier
from identity.policy import ResolutionPolicy

__all__ = [
    "AUTO",
    "LINK",
    "UNLINK",
    "Reason",
    "Record",
    "candidates",
    "number_type",
    "shared_identifiers",
    "why_shared",
]

#: Evidence modes: observed together, stated together by a manager, stated apart by a manager.
AUTO, LINK, UNLINK = 0, 1, 2

#: One evidence record as this module needs it: its identifiers, its mode and the name keys it carried.
Record = tuple[Sequence[Identifier], int, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an identifier is shared: the rule that found it, with the figures it weighed."""

    #: ``names_differ``, ``persons``, ``unclaimed``, ``devices`` or ``same_device``
    rule: str
    persons: int
    clusters: int
    #: for ``names_differ``: two of the different names' keys (never raw values)
    names: tuple[str, ...] = ()
    #: for a phone: its number type (``mobile``, ``fixed_line``...), when known
    number_type: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"rule": self.rule, "persons": self.persons, "clusters": self.clusters}
        if self.names:
            out["names_differ"] = True
        if self.number_type:
            out["number_type"] = self.number_type
        return out


_TYPE_NAMES = {
    value: name.lower() for name, value in vars(phonenumbers.PhoneNumberType).items() if isinstance(value, int)
}


@lru_cache(maxsize=65536)
def number_type(e164: str) -> str:
    """The type of a normalized phone number (``mobile``, ``fixed_line``, ``voip``, ``toll_free``...)."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return "unknown"
    return _TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown")


def _watched(policy: ResolutionPolicy) -> set[str]:
    return set(policy.shared_persons) | set(policy.shared_clusters) | set(policy.shared_devices)


def neighbours(records: Iterable[Record], policy: ResolutionPolicy) -> dict[Identifier, set[Identifier]]:
    """The neighbours of every identifier of a kind that can be shared."""
    out: dict[Identifier, set[Identifier]] = {}
    watched = _watched(policy)
    for ids, mode, _names in records:
        if mode != AUTO or len(ids) < 2:
            continue
        for x in ids:
            if x.kind in watched:
                out.setdefault(x, set()).update(y for y in ids if y != x)
    return out


def candidates(nbrs: dict[Identifier, set[Identifier]], policy: ResolutionPolicy) -> list[Identifier]:
    """Identifiers with at least two distinct neighbours (one neighbour is one cluster: never shared)."""
    return [x for x, seen in nbrs.items() if len(seen) > 1]


class _Cluster:
    __slots__ = ("names", "order", "personal", "values")

    def __init__(self) -> None:
        self.values: dict[str, int] = {}  # limit class -> distinct values held
        self.names: set[str] = set()
        self.personal = False
        self.order: tuple[tuple[int, str], str] | None = None  # its strongest identifier

    @property
    def person(self) -> bool:
        return self.personal or bool(self.names)


def _name_relation(a: set[str], b: set[str]) -> int:
    if not a or not b:
        return 0
    differ = False
    for x in a:
        for y in b:
            verdict = compare_names(x, y)
            if verdict == SAME:
                return SAME
            if verdict == DIFFERENT:
                differ = True
    return DIFFERENT if differ else 0


class _Verdict:
    __slots__ = ("clusters", "excess", "names", "persons", "rule")

    def __init__(self, excess: int, rule: str, persons: int, clusters: int, names: tuple[str, ...]) -> None:
        self.excess, self.rule, self.persons, self.clusters, self.names = excess, rule, persons, clusters, names


def _judge(
    x: Identifier,
    nbrs: set[Identifier],
    links: Sequence[tuple[Sequence[Identifier], Sequence[str]]],
    named: set[Identifier],
    removed: set[Identifier],
    *,
    policy: ResolutionPolicy,
) -> _Verdict | None:
    root = _components([ids for ids, _ in links], removed)
    clusters: dict[Identifier, _Cluster] = {}
    for y in nbrs:
        if y not in removed:
            clusters.setdefault(root.get(y, y), _Cluster())
    if len(clusters) < 2:
        return None
    personal, limit_key = policy.personal_kinds, policy.limit_key
    rank = policy.kind_rank
    for node, r in root.items():
        c = clusters.get(r)
        if c is None:
            continue
        cls = limit_key(node)
        c.values[cls] = c.values.get(cls, 0) + 1
        if node.kind in personal:
            c.personal = True
        order = (rank(node.kind), node.value)
        if c.order is None or order < c.order:
            c.order = order
    for y, c in clusters.items():
        if c.order is None:  # a neighbour with no link of its own: a cluster of one
            c.values[limit_key(y)] = 1
            c.personal = y.kind in personal
            c.order = (rank(y.kind), y.value)
    for ids, names in links:
        if not names:
            continue
        for i in ids:
            if i not in removed:
                c = clusters.get(root.get(i, i))
                if c is not None:
                    c.names.update(names)
                break
    people = sorted((c for c in clusters.values() if c.person), key=lambda c: c.order or ((0, ""), ""))
    devices = len(clusters) - len(people)
    evidence_kinds = policy.sharing_kinds.get(x.kind, frozenset())
    limit = policy.limit
    colours: list[list[_Cluster]] = []
    differ: tuple[str, ...] = ()
    for c in people:
        placed = False
        for colour in colours:
            clash = False
            for other in colour:
                relation = _name_relation(c.names, other.names)
                if relation == DIFFERENT:
                    if not differ:
                        differ = (min(c.names), min(other.names))
                    clash = True
                    break
                if any(
                    (cap := limit(cls)) is not None and n + other.values.get(cls, 0) > cap
                    for cls, n in c.values.items()
                    if cls in other.values
                ):
                    clash = True
                    break
                if relation != SAME and any(k in other.values for k in evidence_kinds if k in c.values):
                    clash = True
                    break
            if not clash:
                colour.append(c)
                placed = True
                break
        if not placed:
            colours.append([c])
    persons = len(colours)
    verdicts: list[tuple[int, str]] = []
    max_persons = policy.shared_persons.get(x.kind)
    if max_persons is not None:
        if persons > max_persons:
            verdicts.append((persons - max_persons, "persons"))
        if differ:
            verdicts.append((1, "names_differ"))
    max_clusters = policy.shared_clusters.get(x.kind)
    if (
        max_clusters is not None
        and x not in named
        and not any(y.kind in personal for y in nbrs)
        and len(clusters) > max_clusters
    ):
        verdicts.append((len(clusters) - max_clusters, "unclaimed"))
    bound = policy.shared_devices.get(x.kind)
    if bound is not None:
        weight = _weight(x, policy)
        weighted = (persons + devices) * weight
        if weighted > bound:
            verdicts.append(((weighted - bound + weight - 1) // weight, "devices"))
    if not verdicts:
        return None
    excess, rule = max(verdicts, key=lambda v: v[0])
    return _Verdict(excess, rule, persons, len(clusters), differ if rule == "names_differ" else ())


def _prepare(
    records: Sequence[Record], policy: ResolutionPolicy
) -> tuple[dict[Identifier, set[Identifier]], list[tuple[Sequence[Identifier], Sequence[str]]], set[Identifier]]:
    nbrs = neighbours(records, policy)
    links = [(ids, names) for ids, mode, names in records if mode != UNLINK and (len(ids) > 1 or names)]
    named = {x for ids, mode, names in records if names and mode == AUTO for x in ids}
    return nbrs, links, named


def _rounds(records: Sequence[Record], policy: ResolutionPolicy) -> dict[Identifier, _Verdict]:
    nbrs, links, named = _prepare(records, policy)
    cands = candidates(nbrs, policy)
    found: dict[Identifier, _Verdict] = {}
    if not cands:
        return found
    together = _together(records, policy)
    # judged without its own companions too: two cookies of one browser would otherwise hold it together
    companions: dict[Identifier, set[Identifier]] = {}
    for y, with_y in together.items():
        for x in with_y:
            companions.setdefault(x, set()).add(y)
    while True:
        best: tuple[int, int, tuple[int, str], int, int] | None = None
        winners: list[tuple[Identifier, _Verdict]] = []
        removed_base = set(found)
        for x in cands:
            if x in found:
                continue
            verdict = _judge(x, nbrs[x], links, named, removed_base | {x} | companions.get(x, set()), policy=policy)
            if verdict is None:
                continue
            # lowest first; on a tie, the value more often shared by nature first (a landline, then a browser,
            # then a mobile or a mailbox): a family computer's browser carries the wife's name to the
            # husband's mobile, which is his once the browser is out; an office line is out before the
            # browser of a colleague who called it
            rank = (
                -verdict.excess,
                -_prior(x, policy),
                policy.kind_rank(x.kind),
                -verdict.clusters,
                -len(nbrs[x]),
            )
            if best is None or rank < best:
                best, winners = rank, [(x, verdict)]
            elif rank == best:
                winners.append((x, verdict))
        if not winners:
            found.update(_companions(together, found, policy))
            return found
        found.update(winners)


def _weight(x: Identifier, policy: ResolutionPolicy) -> int:
    """A phone's number-type weight; 1 for any other value."""
    return policy.number_type_weights.get(number_type(x.value), 1) if x.kind == "phone" else 1


def _prior(x: Identifier, policy: ResolutionPolicy) -> int:
    """How often a value is shared by its nature, to order values over by as much: a phone its number type's
    weight (a mobile 1, a landline 4), a device identifier 2, anything else 1."""
    if x.kind == "phone":
        return _weight(x, policy)
    return 1 if x.kind in policy.personal_kinds else 2


def _together(records: Sequence[Record], policy: ResolutionPolicy) -> dict[Identifier, set[Identifier]]:
    """For each device identifier, the device identifiers seen on every one of its records (a browser's other
    cookie: a Metrica id is never seen without its GA id)."""
    personal = policy.personal_kinds
    common: dict[Identifier, set[Identifier]] = {}
    for ids, mode, _names in records:
        if mode == UNLINK:
            continue
        for y in ids:
            if y.kind in personal:
                continue
            seen = common.get(y)
            if seen is None:
                common[y] = {i for i in ids if i != y and i.kind not in personal}
            elif seen:
                seen.intersection_update(ids)
    return {y: c for y, c in common.items() if c}


def _companions(
    together: dict[Identifier, set[Identifier]], found: dict[Identifier, _Verdict], policy: ResolutionPolicy
) -> dict[Identifier, _Verdict]:
    """Device identifiers never seen without a shared one are shared with it (``same_device``): the browser's
    other cookie would otherwise name one of its people."""
    out: dict[Identifier, _Verdict] = {}
    for y, with_y in together.items():
        if y in found:
            continue
        shared = sorted((x for x in with_y if x in found), key=lambda x: (policy.kind_rank(x.kind), x.value))
        if shared:
            v = found[shared[0]]
            out[y] = _Verdict(v.excess, "same_device", v.persons, v.clusters, ())
    return out


def shared_identifiers(records: Sequence[Record], policy: ResolutionPolicy) -> frozenset[Identifier]:
    """The shared identifiers of one evidence group (see the module's definition)."""
    return frozenset(_rounds(records, policy))


def why_shared(records: Sequence[Record], policy: ResolutionPolicy) -> dict[Identifier, Reason]:
    """Each shared identifier of one evidence group with the rule that found it (for explanations)."""
    return {
        x: Reason(v.rule, v.persons, v.clusters, v.names, number_type(x.value) if x.kind == "phone" else None)
        for x, v in _rounds(records, policy).items()
    }


def _components(links: Sequence[Sequence[Identifier]], removed: set[Identifier]) -> dict[Identifier, Identifier]:
    """Every node's component root, in the graph of ``links`` without ``removed``."""
    parent: dict[Identifier, Identifier] = {}

    def find(node: Identifier) -> Identifier:
        while (up := parent[node]) != node:
            parent[node] = grand = parent[up]
            node = grand
        return node

    for ids in links:
        first: Identifier | None = None
        for node in ids:
            if node in removed:
                continue
            if node not in parent:
                parent[node] = node
            if first is None:
                first = find(node)
                continue
            other = find(node)
            if other != first:
                parent[other] = first
    return {node: find(node) for node in parent}
