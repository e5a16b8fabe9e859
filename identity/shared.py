"""Shared-identifier detection: which identifier values belong to several people.

An office switchboard, a family phone or ``info@company.ru`` is seen beside the identifiers of many
different people. Linking through it glues them into one "blob". This module decides, from the
evidence alone, which values are *shared*; the graph then lets them link nothing.

Definition (the Redis script ``streams/lua/resolve.lua`` implements the same, the contract tests
hold them equal). Within one evidence group:

* the **neighbours** of ``x`` are the identifiers seen with it on automatic evidence (manual links
  and unlinks are a manager's statements, not observations);
* ``x`` is a **candidate** when its kind has a threshold and it has more distinct neighbours than the
  kind's smallest threshold (cheap, and necessary for what follows);
* the **clusters** of ``x`` are the connected components, in the evidence graph without ``x`` and
  without the identifiers already found shared, that hold a neighbour of ``x``; a cluster holding a
  personal kind (``ResolutionPolicy.personal_kinds``) is a **person**;
* ``x`` is **over** when it has more persons than ``shared_persons[kind]`` or, if it is *unclaimed*
  (no neighbour of a personal kind: nobody gave it beside their own e-mail, phone or CRM id, like
  a caller id seen only on calls), more clusters than ``shared_clusters[kind]``; its *excess* is by
  how many;
* starting from no shared identifiers, every candidate is tested against the same shared set, and
  those over by the most (then of the strongest kind, with the most clusters, with the most
  neighbours; all of them on a tie) become shared; this repeats until none is over. One at a time
  matters: a visitor's device that called from the office switchboard bridges the switchboard's
  blob and the visitor's own identifiers, so it looks over too until the switchboard is taken out.

The result depends only on the set of evidence, never on arrival order, so the graph can replay an
evidence group with it and stay order-independent. It is not monotone in the evidence: a new event
that connects a phone's neighbours (a CRM record showing two e-mails are one client) can make it
personal again, and the graph then merges back what the split separated.

Cost: a union-find over the group's evidence per candidate and round. Groups are small except
around shared values, and this runs only when an event brings a new combination of identifiers
into a group that holds a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from identity.normalize import Identifier
from identity.policy import ResolutionPolicy

__all__ = ["AUTO", "LINK", "UNLINK", "Record", "candidates", "shared_identifiers"]

#: Evidence modes: observed together, stated together by a manager, stated apart by a manager.
AUTO, LINK, UNLINK = 0, 1, 2

#: One evidence record as this module needs it: its identifiers and its mode.
Record = tuple[Sequence[Identifier], int]


def _thresholds(policy: ResolutionPolicy, kind: str) -> tuple[int | None, int | None]:
    return policy.shared_persons.get(kind), policy.shared_clusters.get(kind)


def neighbours(records: Iterable[Record], policy: ResolutionPolicy) -> dict[Identifier, set[Identifier]]:
    """The neighbours of every identifier of a kind that can be shared."""
    out: dict[Identifier, set[Identifier]] = {}
    watched = policy.shared_persons.keys() | policy.shared_clusters.keys()
    for ids, mode in records:
        if mode != AUTO or len(ids) < 2:
            continue
        for x in ids:
            if x.kind in watched:
                out.setdefault(x, set()).update(y for y in ids if y != x)
    return out


def candidates(nbrs: dict[Identifier, set[Identifier]], policy: ResolutionPolicy) -> list[Identifier]:
    """Identifiers with more distinct neighbours than their kind's smallest threshold."""
    out = []
    for x, seen in nbrs.items():
        limits = [n for n in _thresholds(policy, x.kind) if n is not None]
        if limits and len(seen) > min(limits):
            out.append(x)
    return out


def shared_identifiers(records: Sequence[Record], policy: ResolutionPolicy) -> frozenset[Identifier]:
    """The shared identifiers of one evidence group (see the module's definition)."""
    nbrs = neighbours(records, policy)
    cands = candidates(nbrs, policy)
    if not cands:
        return frozenset()
    links = [ids for ids, mode in records if mode != UNLINK and len(ids) > 1]
    personal = policy.personal_kinds
    shared: set[Identifier] = set()
    while True:
        best: tuple[int, tuple[int, str], int, int] | None = None
        found: list[Identifier] = []
        for x in cands:
            if x in shared:
                continue
            removed = shared | {x}
            root = _components(links, removed)
            holders: dict[Identifier, bool] = {}  # cluster root -> holds a personal kind
            for node, r in root.items():
                if node.kind in personal:
                    holders[r] = True
                else:
                    holders.setdefault(r, False)
            clusters = {root.get(y, y) for y in nbrs[x] if y not in removed}
            persons = sum(1 for r in clusters if holders.get(r, r.kind in personal))
            max_persons, max_clusters = _thresholds(policy, x.kind)
            if max_clusters is not None and any(y.kind in personal for y in nbrs[x]):
                max_clusters = None  # claimed: a person gave it beside their own e-mail, phone or CRM id
            excess = max(
                persons - max_persons if max_persons is not None else 0,
                len(clusters) - max_clusters if max_clusters is not None else 0,
            )
            if excess <= 0:
                continue
            rank = (-excess, policy.kind_rank(x.kind), -len(clusters), -len(nbrs[x]))  # lowest first
            if best is None or rank < best:
                best, found = rank, [x]
            elif rank == best:
                found.append(x)
        if not found:
            return frozenset(shared)
        shared.update(found)


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
