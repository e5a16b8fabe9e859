"""Explanations: why identifiers are one person, and why they are not.

Both stores describe an evidence group the same way (:class:`GroupView`: its evidence records, who
holds each identifier, which identifiers are shared and which pairs a manager unlinked), and this
module turns that into answers a person can read:

* :func:`explain_profile`: the evidence that holds a person together (a spanning tree of events,
  oldest first), what was kept apart from it and why, and the shared identifiers seen with it;
* :func:`explain_pair`: the shortest evidence path between two identifiers, each step with its event,
  source, time and rule, and, where the path crosses from one person to another, why it was not
  followed (a shared identifier, a manager's unlink, or a per-kind limit).

Paths are found with networkx on a bipartite graph of identifiers and evidence records, so a step
is always one real event (off the hot path: this runs per request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx

from identity.normalize import Identifier
from identity.policy import ResolutionPolicy
from identity.shared import AUTO, LINK, UNLINK, why_shared

__all__ = ["EvidenceRecord", "GroupView", "ViewSource", "explain", "explain_pair", "explain_profile"]

_RULES = {AUTO: "co_occurrence", LINK: "manual_link", UNLINK: "manual_unlink"}


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """The earliest event that showed one set of identifiers together (or, for an unlink, apart)."""

    ids: tuple[Identifier, ...]  # strongest first
    mode: int
    event_id: str
    source: str
    occurred_at: str  # ISO 8601
    names: tuple[str, ...] = ()  # name keys (identity.names) the events carried
    note: tuple[str, str] | None = None  # a manual link's or unlink's (actor, reason)

    def describe(self) -> dict[str, Any]:
        out = {
            "event_id": self.event_id,
            "source": self.source,
            "occurred_at": self.occurred_at,
            "rule": _RULES[self.mode],
        }
        if self.note is not None:
            out["actor"], out["reason"] = self.note
        return out


@dataclass(frozen=True, slots=True)
class GroupView:
    """One evidence group as a store holds it."""

    records: tuple[EvidenceRecord, ...]
    owner: Mapping[Identifier, str]  # identifier -> profile id
    shared: frozenset[Identifier]
    apart: frozenset[frozenset[Identifier]]  # pairs a manager said are different people


def _ident(i: Identifier) -> dict[str, str]:
    return {"kind": i.kind, "value": i.value}


def _sorted_records(view: GroupView) -> list[EvidenceRecord]:
    return sorted(view.records, key=lambda r: (r.occurred_at, r.event_id))


def _graph(view: GroupView, within: str | None = None) -> nx.Graph:
    """Identifiers and records, bipartite. ``within``: only links that hold that person together."""
    g = nx.Graph()
    for n, rec in enumerate(_sorted_records(view)):
        if rec.mode == UNLINK:
            continue
        ids = list(rec.ids)
        if within is not None:
            ids = [i for i in ids if view.owner.get(i) == within and (rec.mode == LINK or i not in view.shared)]
            if len(ids) < 2:
                continue
        node = ("record", n)
        g.add_node(node, record=rec)
        for i in ids:
            g.add_edge(node, ("id", i))
    return g


def _why_apart(
    view: GroupView, a: Identifier, b: Identifier, rec: EvidenceRecord, policy: ResolutionPolicy
) -> dict[str, Any]:
    """Why one record's ``a`` and ``b`` ended up in different persons."""
    if rec.mode != LINK:
        for side in (a, b):
            if side in view.shared:
                out: dict[str, Any] = {"reason": "shared_identifier", "identifier": _ident(side)}
                why = why_shared([(r.ids, r.mode, r.names) for r in view.records], policy).get(side)
                # the rule that found it shared; "names_differ": people with clearly different names gave it
                out["shared_by"] = why.to_dict() if why is not None else {"rule": "hub"}
                return out
    pa, pb = view.owner.get(a), view.owner.get(b)
    for pair in view.apart:
        x, y = tuple(pair)
        if {view.owner.get(x), view.owner.get(y)} == {pa, pb}:
            return {"reason": "unlinked", "identifiers": [_ident(x), _ident(y)]}
    counts: dict[str | None, dict[str, int]] = {pa: {}, pb: {}}
    for ident, pid in view.owner.items():
        if pid in counts:
            cls = policy.limit_key(ident)
            counts[pid][cls] = counts[pid].get(cls, 0) + 1
    for cls in sorted(counts[pa].keys() & counts[pb].keys()):
        limit = policy.limit(cls)
        if limit is not None and counts[pa][cls] + counts[pb][cls] > limit:
            return {"reason": "limit_exceeded", "kind": cls.partition(":")[0], "limit": limit}
    return {"reason": "refused_when_applied", "detail": "a limit held when this event was applied in time order"}


def _steps(view: GroupView, g: nx.Graph, path: list[Any], policy: ResolutionPolicy) -> list[dict[str, Any]]:
    steps = []
    for n in range(0, len(path) - 2, 2):
        a, record_node, b = path[n][1], path[n + 1], path[n + 2][1]
        rec: EvidenceRecord = g.nodes[record_node]["record"]
        step = {"from": _ident(a), "to": _ident(b), **rec.describe()}
        same = view.owner.get(a) == view.owner.get(b) and view.owner.get(a) is not None
        linked = same and (rec.mode == LINK or (a not in view.shared and b not in view.shared))
        step["linked"] = linked
        if not linked:
            step.update(_why_apart(view, a, b, rec, policy))
        steps.append(step)
    return steps


def explain_profile(view: GroupView, profile_id: str, policy: ResolutionPolicy) -> dict[str, Any]:
    """What holds one person together, and what was kept apart from it."""
    nodes = sorted(i for i, pid in view.owner.items() if pid == profile_id)
    inside = _graph(view, within=profile_id)
    links = []
    for component in nx.connected_components(inside):
        tree = nx.bfs_tree(inside, min(component, key=_order_key))
        for parent, child in tree.edges:
            if child[0] == "record":
                rec: EvidenceRecord = inside.nodes[child]["record"]
                joined = sorted((i[1] for i in inside.neighbors(child) if i != parent), key=_order_key_ident)
                links.append({"identifiers": [_ident(parent[1]), *map(_ident, joined)], **rec.describe()})
    links.sort(key=lambda link: (link["occurred_at"], link["event_id"]))
    apart = []
    for rec in _sorted_records(view):
        mine = [i for i in rec.ids if i in nodes]
        theirs = [i for i in rec.ids if i not in nodes]
        if not mine or not theirs:
            continue
        if rec.mode == UNLINK:
            apart.append({"identifiers": [_ident(i) for i in rec.ids], "reason": "unlinked", **rec.describe()})
            continue
        other = theirs[0]
        apart.append(
            {
                "identifier": _ident(other),
                "profile_id": view.owner.get(other),
                **rec.describe(),
                **_why_apart(view, mine[0], other, rec, policy),
            }
        )
    seen_shared = sorted(
        {i for rec in view.records if any(n in nodes for n in rec.ids) for i in rec.ids if i in view.shared}
    )
    return {
        "profile_id": profile_id,
        "identifiers": [_ident(i) for i in nodes],
        "links": links,
        "kept_apart": apart,
        "shared_seen": [_ident(i) for i in seen_shared if i not in nodes],
    }


def explain_pair(view: GroupView, a: Identifier, b: Identifier, policy: ResolutionPolicy) -> dict[str, Any]:
    """The evidence path between two identifiers of one group, and whether it makes them one person."""
    pa, pb = view.owner.get(a), view.owner.get(b)
    same = pa is not None and pa == pb
    answer: dict[str, Any] = {"a": _ident(a), "b": _ident(b), "same_person": same, "profile_ids": [pa, pb]}
    g = _graph(view, within=pa) if same else _graph(view)
    try:
        path = nx.shortest_path(g, ("id", a), ("id", b))
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        if same:  # only possible for a person of one identifier
            answer["path"] = []
            return answer
        answer["path"] = None
        answer["reason"] = "no_evidence"
        return answer
    answer["path"] = _steps(view, g, path, policy)
    return answer


def _order_key(node: tuple[str, Any]) -> tuple[str, str, str]:
    if node[0] == "id":
        return ("0", node[1].kind, node[1].value)
    return ("1", str(node[1]), "")


def _order_key_ident(i: Identifier) -> tuple[str, str]:
    return (i.kind, i.value)


class ViewSource(Protocol):
    """What a store offers explanations (both stores implement it)."""

    def group_view(self, ident: Identifier) -> GroupView | None: ...

    def any_identifier(self, profile_id: str) -> Identifier | None: ...


def explain(
    source: ViewSource,
    policy: ResolutionPolicy,
    *,
    profile_id: str | None = None,
    a: Identifier | None = None,
    b: Identifier | None = None,
) -> dict[str, Any] | None:
    """Explain a profile, an identifier's person, or the link between two identifiers; None if unknown."""
    if profile_id is not None:
        a = source.any_identifier(profile_id)
    if a is None:
        return None
    view = source.group_view(a)
    if view is None:
        return None
    if b is None:
        return explain_profile(view, view.owner[a], policy)
    other = source.group_view(b)
    if other is None:
        return None
    if b not in view.owner:  # different evidence groups: nothing ever linked them
        return {
            "a": _ident(a),
            "b": _ident(b),
            "same_person": False,
            "profile_ids": [view.owner[a], other.owner[b]],
            "path": None,
            "reason": "no_evidence",
        }
    return explain_pair(view, a, b, policy)
