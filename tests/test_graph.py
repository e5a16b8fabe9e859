"""Behaviour of the in-memory reference graph that the store contract does not cover (yet)."""

from __future__ import annotations

from identity import IdentityGraph
from tests.test_store_contract import E164, story


def test_evidence_explains_a_person() -> None:
    graph = IdentityGraph()
    graph.apply_many(story())
    evidence = graph.evidence(graph.lookup(E164) or "")
    pairs = {(e.event_id, e.a.kind, e.b.kind) for e in evidence}
    assert ("d1", "crm_contact_id", "phone") in pairs
    assert ("f1", "email", "phone") in pairs
    assert all(e.rule == "co_occurrence" for e in evidence)
    assert evidence[0].to_dict()["source"] == "site"
    assert graph.evidence("p_missing") == []
