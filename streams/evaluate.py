"""Scoring a clustering of touch events against the truth, and the reference clusterings to score.

A clustering is a mapping from event id to a cluster label (any hashable value). :func:`pairwise` scores
one against another by pairs of events: a pair is *true* when the truth puts both events in one cluster,
*predicted* when the clustering does, and *correct* when both do. The counts come from cluster sizes
(``sum C(n, 2)``), so scoring a million events costs a pass over them, not a trillion pairs.

The reference clusterings, for any stream whose truth is known:

* :func:`resolvable`: the best any resolver can do from identifiers alone. Events join through an
  identifier only when every event using it belongs to one true person; an identifier used by two or
  more persons (an office switchboard, ``info@`` of an agency) links nothing. Its precision is 1 by
  construction; its recall is the ceiling for a resolver that sees no names or addresses.
* :func:`baseline`: the naive resolver: every shared normalized identifier links, with no limits and
  no shared-identifier detection. What a simple union of contact data produces.

:func:`senzing_stream` turns the Senzing demo truth set (customers, reference data, a watchlist) into a
touch stream with its truth, so that the same scoring applies to data nobody here generated.

Only identifiers of :data:`~identity.touch.LINKING_TYPES` touches link; an erase request or an unlink
names identifiers without being evidence that they belong together. A redelivered event (the same
event id again) is one event.
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, cast

from identity.graph import Match
from identity.normalize import Identifier, Normalizer
from identity.policy import ResolutionPolicy
from identity.touch import LINKING_TYPES, CrmInfo, Touch, TouchType

__all__ = [
    "SENZING_FILES",
    "SENZING_T0",
    "SENZING_TRUTH_FILE",
    "Erasures",
    "PairScores",
    "Resolver",
    "StoreResolver",
    "baseline",
    "evaluate",
    "largest",
    "pairwise",
    "plan_erasures",
    "resolvable",
    "senzing_stream",
    "shared_in_truth",
]


# --------------------------------------------------------------------------- pairwise scores


@dataclass(frozen=True, slots=True)
class PairScores:
    """Pairwise precision, recall and F1, with the pair counts they come from."""

    precision: float
    recall: float
    f1: float
    #: Pairs of events the truth puts in one cluster.
    true_pairs: int
    #: Pairs of events the predicted clustering puts in one cluster.
    predicted_pairs: int
    #: Pairs both put in one cluster.
    correct_pairs: int


def _pairs(sizes: Iterable[int]) -> int:
    return sum(n * (n - 1) // 2 for n in sizes)


def pairwise(truth: Mapping[str, Hashable], predicted: Mapping[str, Hashable]) -> PairScores:
    """Pairwise scores of ``predicted`` against ``truth`` over the events present in both.

    Precision is 1.0 when no pair is predicted (nothing claimed, nothing wrong) and recall is 1.0
    when the truth has no pair (nothing to find); F1 is 0.0 when both precision and recall are 0.
    """
    true_sizes: Counter[Hashable] = Counter()
    predicted_sizes: Counter[Hashable] = Counter()
    both: Counter[tuple[Hashable, Hashable]] = Counter()
    for event, true_label in truth.items():
        if event not in predicted:
            continue
        label = predicted[event]
        true_sizes[true_label] += 1
        predicted_sizes[label] += 1
        both[true_label, label] += 1
    true_pairs = _pairs(true_sizes.values())
    predicted_pairs = _pairs(predicted_sizes.values())
    correct_pairs = _pairs(both.values())
    precision = correct_pairs / predicted_pairs if predicted_pairs else 1.0
    recall = correct_pairs / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairScores(precision, recall, f1, true_pairs, predicted_pairs, correct_pairs)


def largest(predicted: Mapping[str, Hashable]) -> int:
    """Events in the largest cluster of ``predicted`` (0 when it is empty)."""
    sizes = Counter(predicted.values())
    return max(sizes.values(), default=0)


# --------------------------------------------------------------------------- reference clusterings


class _UnionFind:
    """Disjoint sets of event ids, with union by size and path halving."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._parent:
            self._parent[item] = item
            self._size[item] = 1

    def find(self, item: str) -> str:
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def labels(self) -> dict[str, int]:
        """Every event's cluster as 0, 1, 2, ... in the order the clusters' first events were added."""
        numbers: dict[str, int] = {}
        return {item: numbers.setdefault(self.find(item), len(numbers)) for item in self._parent}


def _event_identifiers(touches: Iterable[Touch], normalizer: Normalizer) -> dict[str, list[Identifier]]:
    """Each distinct event's accepted linking identifiers (none for non-linking types), in arrival order."""
    held: dict[str, list[Identifier]] = {}
    for touch in touches:
        idents = held.setdefault(touch.event_id, [])
        if touch.type in LINKING_TYPES:
            accepted, _ = normalizer.normalize_many(touch.identifiers)
            idents.extend(ident for ident in accepted if ident not in idents)
    return held


def _link(events: Mapping[str, Iterable[Identifier]], usable: set[Identifier] | None) -> dict[str, int]:
    """Union-find over ``events`` through the identifiers in ``usable`` (every identifier when None)."""
    sets = _UnionFind()
    first_holder: dict[Identifier, str] = {}
    for event, idents in events.items():
        sets.add(event)
        for ident in idents:
            if usable is not None and ident not in usable:
                continue
            holder = first_holder.setdefault(ident, event)
            if holder != event:
                sets.union(holder, event)
    return sets.labels()


def _owners(held: Mapping[str, list[Identifier]], truth: Mapping[str, Hashable]) -> dict[Identifier, set[Hashable]]:
    owners: defaultdict[Identifier, set[Hashable]] = defaultdict(set)
    for event, idents in held.items():
        if event in truth:
            for ident in idents:
                owners[ident].add(truth[event])
    return owners


def shared_in_truth(touches: Iterable[Touch], truth: Mapping[str, Hashable], normalizer: Normalizer) -> set[Identifier]:
    """Identifiers that events of two or more true persons use. Events missing from ``truth`` are ignored."""
    owners = _owners(_event_identifiers(touches, normalizer), truth)
    return {ident for ident, persons in owners.items() if len(persons) > 1}


def resolvable(touches: Iterable[Touch], truth: Mapping[str, Hashable], normalizer: Normalizer) -> dict[str, int]:
    """The clustering achievable from identifiers alone: the truth intersected with identifier connectivity.

    Two events join when they share an identifier that, over the whole stream, only events of one true
    person use; identifiers of two or more persons (see :func:`shared_in_truth`) link nothing. Covers the
    events of ``touches`` that are in ``truth``; an event with no personal identifier is a cluster alone.
    """
    held = {event: idents for event, idents in _event_identifiers(touches, normalizer).items() if event in truth}
    owners = _owners(held, truth)
    personal = {ident for ident, persons in owners.items() if len(persons) == 1}
    return _link(held, personal)


def baseline(touches: Iterable[Touch], normalizer: Normalizer) -> dict[str, int]:
    """The naive clustering: every accepted identifier links, with no limits and no shared detection.

    Every event of ``touches`` gets a cluster; one with no accepted identifier is a cluster alone.
    """
    return _link(_event_identifiers(touches, normalizer), None)


# --------------------------------------------------------------------------- the Senzing truth set

#: The record files of the Senzing demo truth set, in the order their events are timed.
SENZING_FILES: Final = ("customers.jsonl", "reference.jsonl", "watchlist.jsonl")
SENZING_TRUTH_FILE: Final = "actual_truthset_key.csv"
#: The first Senzing event's time; each next record is one minute later.
SENZING_T0: Final = datetime(2026, 1, 1, tzinfo=UTC)

#: Senzing feature attribute -> identifier kind. Other features (addresses, dates of birth, documents) are
#: not identifiers this service links on.
_SENZING_IDENTIFIERS: Final = {"PHONE_NUMBER": "phone", "EMAIL_ADDRESS": "email"}
_NAME_PARTS: Final = ("NAME_FIRST", "NAME_MIDDLE", "NAME_LAST")


def _senzing_folder(folder: Path) -> Path:
    """The folder holding the demo files: ``folder`` itself, or ``truthsets/demo`` of a repository checkout."""
    if (folder / SENZING_FILES[0]).is_file():
        return folder
    demo = folder / "truthsets" / "demo"
    return demo if (demo / SENZING_FILES[0]).is_file() else folder


def _text(value: Any) -> str:
    """A feature value as trimmed text; anything but a string is no value."""
    return value.strip() if isinstance(value, str) else ""


def _senzing_name(features: list[dict[str, Any]]) -> str:
    """The record's first name feature: a full name, an organization name, or first/middle/last joined."""
    for feature in features:
        for key in ("NAME_FULL", "NAME_ORG"):
            if name := _text(feature.get(key)):
                return name
        if name := " ".join(part for key in _NAME_PARTS if (part := _text(feature.get(key)))):
            return name
    return ""


def _senzing_touch(record: dict[str, Any], index: int) -> Touch:
    source = _text(record.get("DATA_SOURCE"))
    record_id = _text(record.get("RECORD_ID"))
    if not source or not record_id:
        raise ValueError(f"Senzing record {index} has no DATA_SOURCE or RECORD_ID")
    features = [f for f in record.get("FEATURES", ()) if isinstance(f, dict)]
    identifiers: list[tuple[str, str]] = []
    crm = None
    if source == "CUSTOMERS":
        kind = TouchType.CRM_STAGE
        identifiers.append(("crm_contact_id", f"CUST-{record_id}"))
        crm = CrmInfo(deal_id=f"deal-CUST-{record_id}", stage="new")
    else:
        kind = TouchType.FORM_SUBMIT
    for feature in features:
        for key, ident_kind in _SENZING_IDENTIFIERS.items():
            if raw := _text(feature.get(key)):  # a feature with only PHONE_TYPE names no number
                identifiers.append((ident_kind, raw))
    name = _senzing_name(features)
    return Touch(
        event_id=f"{source}-{record_id}",
        type=kind,
        occurred_at=SENZING_T0 + timedelta(minutes=index),
        source=source.lower(),
        identifiers=tuple(identifiers),
        attributes={"name": name} if name else {},
        crm=crm,
    )


def senzing_stream(folder: Path) -> tuple[list[Touch], dict[str, str]]:
    """The Senzing demo truth set as touches, and its truth (event id -> ``CLUSTER_ID``).

    ``folder`` holds ``customers.jsonl``, ``reference.jsonl``, ``watchlist.jsonl`` and
    ``actual_truthset_key.csv`` (a checkout of Senzing's truth-sets repository works too: its
    ``truthsets/demo`` is used). Customers are CRM contacts (``crm_contact_id`` ``CUST-<id>``, a deal at
    stage ``new``); reference and watchlist records are form submissions. Phones and e-mails are the
    identifiers, raw as written; a record's name is its ``name`` attribute. Event ids are
    ``<DATA_SOURCE>-<RECORD_ID>``; times are :data:`SENZING_T0` plus one minute per record in file order.
    Raises ``ValueError`` when the records and the truth key do not name the same events.
    """
    demo = _senzing_folder(folder)
    touches: list[Touch] = []
    for name in SENZING_FILES:
        with (demo / name).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{name}:{number}: a record must be a JSON object")
                touches.append(_senzing_touch(record, len(touches)))
    truth: dict[str, str] = {}
    with (demo / SENZING_TRUTH_FILE).open(encoding="utf-8-sig", newline="") as key_file:
        for row in csv.DictReader(key_file):
            truth[f"{row['DATA_SOURCE'].strip()}-{row['RECORD_ID'].strip()}"] = row["CLUSTER_ID"].strip()
    events = {touch.event_id for touch in touches}
    if len(events) != len(touches):
        raise ValueError("Senzing records repeat a DATA_SOURCE and RECORD_ID")
    if events != truth.keys():
        missing, unknown = sorted(events - truth.keys()), sorted(truth.keys() - events)
        raise ValueError(f"Senzing truth key does not match the records: no truth for {missing}, unknown {unknown}")
    return touches, truth


# --------------------------------------------------------------------------- the accuracy harness


class Resolver(Protocol):
    """Where the events go and how answers are read back: the running service, or a store in process."""

    def send(self, touches: Sequence[Touch]) -> None:
        """Deliver events and return once they are all applied."""

    def match(self, ident: Identifier) -> Match | None:
        """Who holds an identifier now."""


class StoreResolver:
    """Applies events straight to an identity store (in memory or Redis), in batches."""

    def __init__(self, store: Any, batch: int = 500) -> None:
        self.store, self.batch = store, batch

    def send(self, touches: Sequence[Touch]) -> None:
        for i in range(0, len(touches), self.batch):
            self.store.apply_batch(touches[i : i + self.batch])

    def match(self, ident: Identifier) -> Match | None:
        return cast("Match | None", self.store.match(ident))


@dataclass(frozen=True, slots=True)
class Erasures:
    """Erase requests for some true persons, and their history re-sent afterwards under new event ids."""

    requests: list[Touch]
    replay: list[Touch]
    persons: set[Hashable]
    targets: dict[Hashable, Identifier]  # person -> the identifier the request names


def plan_erasures(
    touches: Sequence[Touch], truth: Mapping[str, Hashable], normalizer: Normalizer, count: int, seed: int = 1
) -> Erasures:
    """Erase ``count`` persons (chosen by seed) by their strongest identifier, one minute after the stream."""
    held = _event_identifiers(touches, normalizer)
    owners = _owners(held, truth)
    by_person: defaultdict[Hashable, list[Touch]] = defaultdict(list)
    for touch in touches:
        if touch.event_id in truth:
            by_person[truth[touch.event_id]].append(touch)
    rank = {"crm_contact_id": 0, "email": 1, "phone": 2}
    candidates: dict[Hashable, Identifier] = {}
    for person, events in by_person.items():
        personal = {i for t in events for i in held[t.event_id] if owners[i] == {person} and i.kind in rank}
        if personal:
            candidates[person] = min(personal, key=lambda i: (rank[i.kind], i.value))
    chosen = sorted(candidates, key=str)
    picks = random.Random(seed).sample(range(len(chosen)), min(count, len(chosen)))  # noqa: S311 - a sample, not a secret
    chosen = [chosen[i] for i in sorted(picks)]
    end = max(t.occurred_at for t in touches) + timedelta(minutes=1)
    requests = [
        Touch(f"erase-{n}", TouchType.ERASE_REQUEST, end, "crm", ((candidates[p].kind, candidates[p].value),))
        for n, p in enumerate(chosen)
    ]
    replay = [replace(t, event_id=f"resent-{t.event_id}") for p in chosen for t in by_person[p]]
    return Erasures(requests, replay, set(chosen), {p: candidates[p] for p in chosen})


def _prediction(
    resolver: Resolver, touches: Sequence[Touch], normalizer: Normalizer, policy: ResolutionPolicy
) -> dict[str, Hashable]:
    """Each event's person as the service answers it: the holder of its strongest identifier that is not
    shared (a shared identifier names nobody); an event with none is a person alone."""
    held = _event_identifiers(touches, normalizer)
    answers: dict[Identifier, Match | None] = {}
    out: dict[str, Hashable] = {}
    for event, idents in held.items():
        label: Hashable = ("alone", event)
        for ident in sorted(idents, key=lambda i: (policy.kind_rank(i.kind), i.value)):
            if ident not in answers:
                answers[ident] = resolver.match(ident)
            found = answers[ident]
            if found is not None and not found.shared:
                label = found.profile_id
                break
        out[event] = label
    return out


def evaluate(
    resolver: Resolver,
    touches: Sequence[Touch],
    truth: Mapping[str, Hashable],
    *,
    normalizer: Normalizer | None = None,
    policy: ResolutionPolicy | None = None,
    erase: int = 0,
    junk: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Replay a stream through a resolver and score what it answers (see the README's accuracy section).

    With ``erase`` > 0, that many persons are erased after the stream, their whole history is re-sent
    under new event ids, and ``erased_found`` counts the identifiers the erasure removed that a lookup
    finds again (the target is none). Erased persons' events leave the scores.
    """
    normalizer = normalizer or Normalizer()
    policy = policy or ResolutionPolicy()
    started = time.perf_counter()
    resolver.send(list(touches))
    applied = time.perf_counter() - started
    plan = plan_erasures(touches, truth, normalizer, erase) if erase else None
    erased_ids: set[Identifier] = set()
    if plan is not None:
        held = _event_identifiers(touches, normalizer)
        for person, target in plan.targets.items():  # what the erasure will remove: the person holding it
            before = resolver.match(target)
            mine = {i for t in touches if truth.get(t.event_id) == person for i in held[t.event_id]}
            if before is not None:
                erased_ids |= {i for i in mine if (m := resolver.match(i)) and m.profile_id == before.profile_id}
        resolver.send(plan.requests)
        resolver.send(plan.replay)
    kept = [t for t in touches if plan is None or truth.get(t.event_id) not in plan.persons]
    scored_truth = {t.event_id: truth[t.event_id] for t in kept if t.event_id in truth}
    predicted = _prediction(resolver, kept, normalizer, policy)
    reachable = resolvable(kept, scored_truth, normalizer)
    naive = baseline(kept, normalizer)
    shared = shared_in_truth(kept, scored_truth, normalizer)
    shared_single = 0
    for ident in shared:
        found = resolver.match(ident)
        shared_single += found is not None and not found.ambiguous
    junk_found = 0
    for kind, raw in junk:
        value = normalizer.normalize(kind, raw)
        junk_found += isinstance(value, Identifier) and resolver.match(value) is not None
    ours, theirs = pairwise(scored_truth, predicted), pairwise(scored_truth, naive)
    return {
        "events": len(scored_truth),
        "persons": len(set(scored_truth.values())),
        "seconds_to_apply": round(applied, 2),
        "idstream": {
            **_scores(ours),
            "recall_of_resolvable": round(pairwise(reachable, predicted).recall, 4),
            "largest_profile_events": largest({e: predicted[e] for e in scored_truth}),
            "shared_identifiers": len(shared),
            "shared_resolved_to_one_person": shared_single,
            "junk_resolved_to_one_person": junk_found,
            "erased_persons": len(plan.persons) if plan else 0,
            "erased_identifiers": len(erased_ids),
            "erased_found": sum(1 for i in erased_ids if resolver.match(i) is not None),
        },
        "baseline_union_find": {
            **_scores(theirs),
            "recall_of_resolvable": round(pairwise(reachable, naive).recall, 4),
            "largest_profile_events": largest({e: naive[e] for e in scored_truth}),
        },
        "resolvable_ceiling": {"recall": round(pairwise(scored_truth, reachable).recall, 4)},
    }


def _scores(s: PairScores) -> dict[str, float]:
    return {"precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4)}
