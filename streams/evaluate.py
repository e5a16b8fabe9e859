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

The harness (:func:`evaluate`, :func:`evaluate_orders`) replays a stream through the real engine (a store, or
the running service) and scores what lookups answer: overall and per situation of the generated stream
(:func:`pairwise_involving`), the values several true persons used that still name one person
(:func:`value_counts`), the identifiers of erased persons still found (:func:`stream_erasures`), in the
stream's own arrival order and in shuffles of it, and why each missed resolvable pair was missed
(:func:`missed_pairs`, from the engine's own explanations).

Only identifiers of :data:`~identity.touch.LINKING_TYPES` touches link; an erase request or an unlink
names identifiers without being evidence that they belong together. A redelivered event (the same
event id again) is one event.
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, cast

from identity.graph import Match
from identity.normalize import Identifier, Normalizer
from identity.policy import ResolutionPolicy
from identity.touch import LINKING_TYPES, CrmInfo, Touch, TouchType

__all__ = [
    "MISSED_CAUSES",
    "SENZING_FILES",
    "SENZING_T0",
    "SENZING_TRUTH_FILE",
    "Erasures",
    "PairScores",
    "Resolver",
    "StoreResolver",
    "baseline",
    "evaluate",
    "evaluate_orders",
    "largest",
    "mask",
    "missed_pairs",
    "pairwise",
    "pairwise_by_group",
    "pairwise_involving",
    "plan_erasures",
    "render_run",
    "render_summary",
    "resolvable",
    "senzing_stream",
    "shared_in_truth",
    "shuffled",
    "stream_erasures",
    "value_counts",
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
    return _resolvable(_event_identifiers(touches, normalizer), truth)


def _resolvable(held: Mapping[str, list[Identifier]], truth: Mapping[str, Hashable]) -> dict[str, int]:
    held = {event: idents for event, idents in held.items() if event in truth}
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
    """Where the events go and how answers are read back: the running service, or a store in process.

    A resolver may also offer ``explain(a, b)`` (the answer of :func:`identity.explain.explain` for two
    identifiers): the harness then says why each missed pair was missed.
    """

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

    def explain(self, a: Identifier, b: Identifier) -> dict[str, Any] | None:
        """The store's own explanation of why ``a`` and ``b`` are (not) one person."""
        from identity.explain import explain  # noqa: PLC0415 - only the missed-pair analysis needs networkx

        return explain(self.store, self.store.policy, a=a, b=b)


@dataclass(frozen=True, slots=True)
class Erasures:
    """Erase requests for some true persons, and their history re-sent afterwards under new event ids."""

    requests: list[Touch]
    replay: list[Touch]
    persons: set[Hashable]
    targets: dict[Hashable, Identifier]  # person -> the identifier the request names


def plan_erasures(
    touches: Sequence[Touch],
    truth: Mapping[str, Hashable],
    normalizer: Normalizer,
    count: int,
    *,
    seed: int = 1,
    exclude: Iterable[Hashable] = (),
    held: Mapping[str, list[Identifier]] | None = None,
) -> Erasures:
    """Erase ``count`` persons (chosen by seed, none of ``exclude``) by their strongest identifier, one minute
    after the stream (``held``: the events' identifiers, if already known)."""
    held = _event_identifiers(touches, normalizer) if held is None else held
    owners = _owners(held, truth)
    excluded = set(exclude)
    by_person: defaultdict[Hashable, list[Touch]] = defaultdict(list)
    for touch in touches:
        if touch.event_id in truth and truth[touch.event_id] not in excluded:
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


def stream_erasures(
    touches: Iterable[Touch],
    truth: Mapping[str, Hashable],
    normalizer: Normalizer,
    held: Mapping[str, list[Identifier]] | None = None,
) -> dict[Hashable, set[Identifier]]:
    """The erase requests inside a stream: each erased true person, and the identifiers that must be unfindable.

    A request erases the true person who alone uses an identifier it names. What must go is every identifier
    only that person uses and that their own events connect to a named one (a device they also used on a form
    with the named e-mail, say), whenever those events arrive: an erasure is an event on the person's timeline,
    and a touch older than it stays erased. A value other people use too (an office switchboard) is not theirs
    to erase, and a device seen on nothing but its own visits was never known to be theirs.
    """
    touches = list(touches)
    held = _event_identifiers(touches, normalizer) if held is None else held
    owners = _owners(held, truth)
    named: defaultdict[Hashable, set[Identifier]] = defaultdict(set)
    for touch in touches:
        if touch.type is not TouchType.ERASE_REQUEST:
            continue
        accepted, _ = normalizer.normalize_many(touch.identifiers)
        for ident in accepted:
            persons = owners.get(ident, set())
            if len(persons) == 1:
                named[next(iter(persons))].add(ident)
    out: dict[Hashable, set[Identifier]] = {}
    for person, start in named.items():
        events = [
            [i for i in idents if owners[i] == {person}] for event, idents in held.items() if truth.get(event) == person
        ]
        reached, grew = set(start), True
        while grew:  # a person has a few events: a fixpoint is cheaper than building a graph
            grew = False
            for idents in events:
                if not reached.isdisjoint(idents) and not reached.issuperset(idents):
                    reached.update(idents)
                    grew = True
        out[person] = reached
    return out


def _prediction(
    resolver: Resolver, held: Mapping[str, list[Identifier]], policy: ResolutionPolicy
) -> tuple[dict[str, Hashable], dict[str, Identifier], dict[Identifier, Match | None]]:
    """Each event's person as the service answers it: the holder of its strongest identifier that is not
    shared (a shared identifier names nobody); an event with none is a person alone. Also the identifier each
    labelled event was answered by, and every answer asked."""
    answers: dict[Identifier, Match | None] = {}
    out: dict[str, Hashable] = {}
    by: dict[str, Identifier] = {}
    for event, idents in held.items():
        label: Hashable = ("alone", event)
        for ident in sorted(idents, key=lambda i: (policy.kind_rank(i.kind), i.value)):
            if ident not in answers:
                answers[ident] = resolver.match(ident)
            found = answers[ident]
            if found is not None and not found.shared:
                label = found.profile_id
                by[event] = ident
                break
        out[event] = label
    return out, by, answers


def pairwise_involving(
    truth: Mapping[str, Hashable], predicted: Mapping[str, Hashable], events: Iterable[str]
) -> PairScores:
    """Pairwise scores over the pairs with at least one event of ``events``.

    For a situation's events: recall is over the true pairs of its persons (a true pair never leaves a person),
    and precision also counts a merge of one of them with anybody else against it.
    """
    inside = set(events)
    return pairwise_by_group(truth, predicted, lambda event: event in inside).get(True, _NO_PAIRS)


_NO_PAIRS: Final = PairScores(1.0, 1.0, 1.0, 0, 0, 0)


def pairwise_by_group(
    truth: Mapping[str, Hashable], predicted: Mapping[str, Hashable], group: Callable[[str], Hashable]
) -> dict[Hashable, PairScores]:
    """:func:`pairwise_involving` for every group of events at once (``group``: event -> its group), in one pass.

    The pairs involving group g are all pairs less those with neither event in g, counted per cluster:
    ``C(n, 2) - C(n - n_g, 2)`` for a cluster of n events of which n_g are in g.
    """
    sizes: list[Counter[Hashable]] = [Counter(), Counter(), Counter()]  # true, predicted, both: cluster -> events
    of_group: list[defaultdict[Hashable, Counter[Hashable]]] = [defaultdict(Counter) for _ in range(3)]
    for event, true_label in truth.items():
        if event not in predicted:
            continue
        g = group(event)
        for n, label in enumerate((true_label, predicted[event], (true_label, predicted[event]))):
            sizes[n][label] += 1
            of_group[n][g][label] += 1
    out: dict[Hashable, PairScores] = {}
    for g in of_group[0]:
        counts = [
            sum(
                n * (n - 1) // 2 - (n - k) * (n - k - 1) // 2
                for label, k in of_group[i][g].items()
                if (n := sizes[i][label])
            )
            for i in range(3)
        ]
        true_pairs, predicted_pairs, correct = counts
        precision = correct / predicted_pairs if predicted_pairs else 1.0
        recall = correct / true_pairs if true_pairs else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[g] = PairScores(precision, recall, f1, true_pairs, predicted_pairs, correct)
    return out


def value_counts(
    resolver: Resolver,
    owners: Mapping[Identifier, Collection[Hashable]],
    names: Mapping[Any, str] | None = None,
    answers: dict[Identifier, Match | None] | None = None,
) -> dict[str, int | None]:
    """How many values of several true persons a lookup answers with one person (the target is none of them).

    ``many``: values that three or more true persons used; ``two_named_apart``: values exactly two true persons
    with different names (``names``: person -> name; None when unknown) used. "One person" is a lookup that
    answers a single person, neither shared nor contested.
    """
    answers = {} if answers is None else answers

    def one_person(ident: Identifier) -> bool:
        if ident not in answers:
            answers[ident] = resolver.match(ident)
        found = answers[ident]
        return found is not None and not found.ambiguous

    many = [i for i, persons in owners.items() if len(persons) >= 3]
    out: dict[str, int | None] = {
        "values_of_3_or_more_persons": len(many),
        "values_of_3_or_more_persons_resolved_to_one": sum(map(one_person, many)),
        "values_of_2_persons_named_apart": None,
        "values_of_2_persons_named_apart_resolved_to_one": None,
    }
    if names is not None:
        two = [
            i
            for i, persons in owners.items()
            if len(persons) == 2 and None not in (found := {names.get(p) for p in persons}) and len(found) == 2
        ]
        out["values_of_2_persons_named_apart"] = len(two)
        out["values_of_2_persons_named_apart_resolved_to_one"] = sum(map(one_person, two))
    return out


#: Why a resolvable pair was missed (see :func:`missed_pairs`).
MISSED_CAUSES: Final = (
    "shared_value",  # linked only through a value the engine judged shared
    "different_names",  # the engine kept them apart because their names differ
    "kind_limit",  # a merge refused by a per-kind limit (a second CRM id, a sixth phone)
    "erased_or_rejected",  # linked only through an identifier the engine does not hold (erased, rejected)
    "manual_unlink",  # a manager's identity_unlink
    "other",
)


def mask(ident: Identifier) -> str:
    """An identifier with most of its value hidden, for reports: ``phone:+7916*****67``, ``email:iv***@mail.ru``."""
    value = ident.value
    if ident.kind == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"email:{local[:2]}***@{domain}"
    if ident.kind == "phone":
        return f"phone:{value[:5]}{'*' * max(0, len(value) - 7)}{value[-2:]}"
    keep = value.rfind(":") + 1 if ident.kind in ("crm_contact_id", "messenger_id") else 0
    shown = value[: keep + 3]
    return f"{ident.kind}:{shown}{'*' * max(0, min(8, len(value) - len(shown) - 2))}{value[-2:]}"


def _explained(answer: Mapping[str, Any] | None) -> tuple[str, str]:
    """The cause an engine explanation gives for a break: its first step not linked."""
    if not answer or answer.get("path") is None:
        return "other", str((answer or {}).get("reason", "no_explanation"))
    for step in answer["path"]:
        if step.get("linked"):
            continue
        reason = str(step.get("reason", ""))
        shared_by = step.get("shared_by") or {}
        rule = str(shared_by.get("rule", "")) if isinstance(shared_by, Mapping) else ""
        if "name" in reason or "name" in rule or (isinstance(shared_by, Mapping) and shared_by.get("names_differ")):
            return "different_names", reason + (f" ({rule})" if rule else "")
        if reason == "shared_identifier":
            return "shared_value", reason + (f" ({rule})" if rule else "")
        if reason in ("limit_exceeded", "refused_when_applied"):
            detail = f"{reason} {step.get('kind', '')}".strip()
            return "kind_limit", detail
        if reason == "unlinked":
            return "manual_unlink", reason
        return "other", reason
    return "other", "explanation_links_them"


def missed_pairs(
    resolver: Resolver,
    held: Mapping[str, Sequence[Identifier]],
    truth: Mapping[str, Hashable],
    reachable: Mapping[str, Hashable],
    predicted: Mapping[str, Hashable],
    *,
    answered_by: Mapping[str, Identifier],
    answers: dict[Identifier, Match | None],
    examples: int = 3,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every missed resolvable pair (the truth and the resolvable ceiling join it, the resolver splits it), by cause.

    For each resolvable cluster the resolver split, and each two of its parts, the shortest path of the person's
    own identifiers from one part's events to the other's is walked, starting and ending with the identifiers
    the two parts were answered by; the first break on it is the cause: an identifier the engine holds no more
    (``erased_or_rejected``), or two neighbours that answer different persons, explained by the engine itself
    (``explain``: a shared value, different names, a kind limit, an unlink). Without ``explain``, a shared
    value is recognised from the lookup and any other break is ``other``. An example names the two parts' first
    and last events, how many pairs it stands for, the link that broke (masked) and the engine's reason, and
    the names the two parts' events carried (``names``: event -> its name attribute).
    """
    explain = getattr(resolver, "explain", None)

    def answer(ident: Identifier) -> Match | None:
        if ident not in answers:
            answers[ident] = resolver.match(ident)
        return answers[ident]

    owners = _owners({e: list(held.get(e, ())) for e in reachable}, truth)
    clusters: defaultdict[Hashable, list[str]] = defaultdict(list)
    for event in reachable:
        clusters[reachable[event]].append(event)
    counts: Counter[str] = Counter()
    shown: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    told: set[tuple[str, Hashable]] = set()
    for events in clusters.values():
        parts: defaultdict[Hashable, list[str]] = defaultdict(list)
        for event in events:
            parts[predicted[event]].append(event)
        if len(parts) < 2:
            continue
        person = truth[events[0]]
        links = {e: [i for i in held.get(e, ()) if owners.get(i) == {person}] for e in events}
        users: defaultdict[Identifier, list[str]] = defaultdict(list)
        for event, idents in links.items():
            for ident in idents:
                users[ident].append(event)
        groups = sorted(parts.values(), key=sorted)
        for n, first in enumerate(groups):
            for second in groups[n + 1 :]:
                steps = _path(first, set(second), links, users)
                start, end = answered_by.get(steps[0]), answered_by.get(steps[-1])
                chain = [*([start] if start else []), *steps[1:-1:2], *([end] if end else [])]
                chain = [i for k, i in enumerate(chain) if k == 0 or i != chain[k - 1]]
                cause, detail, link = _break(chain, answer, explain)
                pairs = len(first) * len(second)
                counts[cause] += pairs
                if len(shown[cause]) < examples and (cause, person) not in told:  # one per person and cause
                    told.add((cause, person))
                    shown[cause].append(
                        {
                            "events": [steps[0], steps[-1]],
                            "pairs": pairs,
                            "link": [mask(i) for i in link],
                            "detail": detail,
                            "names": [sorted({names[e] for e in part if e in names})[:3] for part in (first, second)]
                            if names is not None
                            else None,
                        }
                    )
    return {
        "pairs": sum(counts.values()),
        "by_cause": {cause: counts[cause] for cause in MISSED_CAUSES if counts[cause]},
        "examples": {cause: shown[cause] for cause in MISSED_CAUSES if shown[cause]},
    }


def _path(
    sources: Sequence[str],
    targets: set[str],
    links: Mapping[str, Sequence[Identifier]],
    users: Mapping[Identifier, Sequence[str]],
) -> list[Any]:
    """Shortest event, identifier, event, ... path from a source event to a target event (breadth first)."""
    previous: dict[Any, Any] = dict.fromkeys(sorted(sources))
    queue = deque(previous)
    while queue:
        node = queue.popleft()
        if isinstance(node, str) and node in targets:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])
            return path[::-1]
        for nxt in links[node] if isinstance(node, str) else users[node]:
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    raise ValueError("the events of a resolvable cluster are not connected")  # resolvable() joined them


def _break(
    chain: Sequence[Identifier],
    answer: Callable[[Identifier], Match | None],
    explain: Callable[[Identifier, Identifier], Mapping[str, Any] | None] | None,
) -> tuple[str, str, list[Identifier]]:
    """The first break on a chain of identifiers (each two neighbours seen on one event): cause, detail, link."""
    for k, ident in enumerate(chain):
        found = answer(ident)
        if found is None:
            return "erased_or_rejected", "not_found", [ident]
        if found.shared:
            other = chain[k - 1] if k else (chain[k + 1] if k + 1 < len(chain) else None)
            if explain is not None and other is not None:
                cause, detail = _explained(explain(other, ident))
                if cause != "other":
                    return cause, detail, [other, ident]
            return "shared_value", "shared", [ident]
        if k:
            before = answer(chain[k - 1])
            if before is not None and before.profile_id != found.profile_id:
                if explain is None:
                    return "other", "different_persons", [chain[k - 1], ident]
                cause, detail = _explained(explain(chain[k - 1], ident))
                return cause, detail, [chain[k - 1], ident]
    return "other", "no_break_found", list(chain[:2])


def evaluate(
    resolver: Resolver,
    touches: Sequence[Touch],
    truth: Mapping[str, Hashable],
    *,
    normalizer: Normalizer | None = None,
    policy: ResolutionPolicy | None = None,
    erase: int = 0,
    junk: Sequence[tuple[str, str]] = (),
    situations: Mapping[Any, str] | None = None,
    names: Mapping[Any, str] | None = None,
    missed: bool = False,
    examples: int = 3,
) -> dict[str, Any]:
    """Replay a stream through a resolver and score what it answers (see the README's accuracy section).

    Erase requests inside the stream are honoured as the stream delivers them: ``erased_in_stream_found`` counts
    the identifiers of their persons (see :func:`stream_erasures`) that a lookup finds afterwards. With ``erase``
    > 0, that many other persons are erased after the stream, their whole history is re-sent under new event
    ids, and ``erased_found`` counts the identifiers that erasure removed that a lookup finds again. The target
    for both is none. Erased persons' events leave the scores.

    ``situations`` (person -> situation) adds scores per situation (:func:`pairwise_involving`); ``names``
    (person -> name) adds the count of values two differently named persons used that resolve to one person;
    ``missed`` adds every missed resolvable pair by cause (:func:`missed_pairs`).
    """
    normalizer = normalizer or Normalizer()
    policy = policy or ResolutionPolicy()
    started = time.perf_counter()
    resolver.send(list(touches))
    applied = time.perf_counter() - started
    held = _event_identifiers(touches, normalizer)
    in_stream = stream_erasures(touches, truth, normalizer, held)
    plan = plan_erasures(touches, truth, normalizer, erase, exclude=in_stream, held=held) if erase else None
    erased_ids: set[Identifier] = set()
    if plan is not None:
        for person, target in plan.targets.items():  # what the erasure will remove: the person holding it
            before = resolver.match(target)
            mine = {i for t in touches if truth.get(t.event_id) == person for i in held[t.event_id]}
            if before is not None:
                erased_ids |= {i for i in mine if (m := resolver.match(i)) and m.profile_id == before.profile_id}
        resolver.send(plan.requests)
        resolver.send(plan.replay)
    gone = set(in_stream) | (plan.persons if plan else set())
    scored_truth = {e: person for e, person in truth.items() if e in held and person not in gone}
    kept = {e: ids for e, ids in held.items() if e not in truth or truth[e] not in gone}  # any event may link
    predicted, answered_by, answers = _prediction(resolver, kept, policy)
    reachable = _resolvable(kept, scored_truth)
    naive = _link(kept, None)
    owners = _owners(kept, scored_truth)
    shared = {ident for ident, persons in owners.items() if len(persons) > 1}
    shared_single = 0
    for ident in shared:
        found = resolver.match(ident)
        shared_single += found is not None and not found.ambiguous
    junk_found = 0
    for kind, raw in junk:
        value = normalizer.normalize(kind, raw)
        junk_found += isinstance(value, Identifier) and resolver.match(value) is not None
    in_stream_ids = {i for ids in in_stream.values() for i in ids}
    ours, theirs = pairwise(scored_truth, predicted), pairwise(scored_truth, naive)
    report: dict[str, Any] = {
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
            "erased_in_stream_persons": len(in_stream),
            "erased_in_stream_identifiers": len(in_stream_ids),
            "erased_in_stream_found": sum(1 for i in in_stream_ids if resolver.match(i) is not None),
            **value_counts(resolver, owners, names, answers),
        },
        "baseline_union_find": {
            **_scores(theirs),
            "recall_of_resolvable": round(pairwise(reachable, naive).recall, 4),
            "largest_profile_events": largest({e: naive[e] for e in scored_truth}),
        },
        "resolvable_ceiling": {"recall": round(pairwise(scored_truth, reachable).recall, 4)},
    }
    if situations is not None:
        report["situations"] = _by_situation(
            scored_truth, predicted, naive, reachable, situations=situations, erased=in_stream
        )
    if missed:
        report["missed_resolvable_pairs"] = missed_pairs(
            resolver,
            held,
            scored_truth,
            reachable,
            predicted,
            answered_by=answered_by,
            answers=answers,
            examples=examples,
            names={t.event_id: str(t.attributes["name"]) for t in touches if t.attributes.get("name")},
        )
    return report


def _by_situation(
    truth: Mapping[str, Hashable],
    predicted: Mapping[str, Hashable],
    naive: Mapping[str, Hashable],
    reachable: Mapping[str, Hashable],
    *,
    situations: Mapping[Any, str],
    erased: Mapping[Hashable, set[Identifier]],
) -> dict[str, Any]:
    def situation(event: str) -> str:
        return situations.get(truth[event], "ordinary")

    events: Counter[str] = Counter()
    persons: defaultdict[str, set[Hashable]] = defaultdict(set)
    for event, person in truth.items():
        events[situation(event)] += 1
        persons[situation(event)].add(person)
    ours, theirs = pairwise_by_group(truth, predicted, situation), pairwise_by_group(truth, naive, situation)
    ours_res, theirs_res = (
        pairwise_by_group(reachable, predicted, situation),
        pairwise_by_group(reachable, naive, situation),
    )
    ceiling = pairwise_by_group(truth, reachable, situation)
    out: dict[str, Any] = {}
    for name in sorted(events):
        out[name] = {
            "persons": len(persons[name]),
            "events": events[name],
            "idstream": {
                "precision": round(ours[name].precision, 4),
                "recall": round(ours[name].recall, 4),
                "recall_of_resolvable": round(ours_res[name].recall, 4),
            },
            "baseline_union_find": {
                "precision": round(theirs[name].precision, 4),
                "recall": round(theirs[name].recall, 4),
                "recall_of_resolvable": round(theirs_res[name].recall, 4),
            },
            "resolvable_ceiling": {"recall": round(ceiling[name].recall, 4)},
        }
    gone = Counter(situations.get(person, "ordinary") for person in erased)
    for name, count in sorted(gone.items()):  # erased persons are not scored: their erasure is
        out.setdefault(name, {"persons": 0, "events": 0})["erased_persons"] = count
    return out


def shuffled(touches: Sequence[Touch], seed: int) -> list[Touch]:
    """The same events in a seeded random arrival order (the whole stream: erasures and redeliveries too)."""
    out = list(touches)
    random.Random(seed).shuffle(out)  # noqa: S311 - an arrival order, not a secret
    return out


def evaluate_orders(
    make_resolver: Callable[[], Resolver],
    touches: Sequence[Touch],
    truth: Mapping[str, Hashable],
    *,
    orders: int = 3,
    shuffle_seed: int = 1,
    missed: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """:func:`evaluate` in ``orders`` arrival orders, each through a fresh resolver: the stream's own order, then
    ``orders - 1`` seeded shuffles of the whole stream (the engine must not depend on arrival order, erasures
    included). The full report is the stream order's (``missed`` pairs analysed there); ``orders`` sums up each."""
    runs: list[dict[str, Any]] = []
    stream_report: dict[str, Any] = {}
    for n in range(max(1, orders)):
        order = list(touches) if n == 0 else shuffled(touches, shuffle_seed * 1000 + n)
        report = evaluate(make_resolver(), order, truth, missed=missed and n == 0, **options)
        if n == 0:
            stream_report = report
        ours = report["idstream"]
        runs.append(
            {
                "order": "stream" if n == 0 else f"shuffle {n}",
                "seconds_to_apply": report["seconds_to_apply"],
                **{key: ours[key] for key in _ORDER_KEYS if key in ours},
            }
        )
    return {**stream_report, "orders": runs}


_ORDER_KEYS: Final = (
    "precision",
    "recall",
    "recall_of_resolvable",
    "values_of_3_or_more_persons",
    "values_of_3_or_more_persons_resolved_to_one",
    "values_of_2_persons_named_apart",
    "values_of_2_persons_named_apart_resolved_to_one",
    "erased_identifiers",
    "erased_found",
    "erased_in_stream_identifiers",
    "erased_in_stream_found",
)


def _scores(s: PairScores) -> dict[str, float]:
    return {"precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4)}


# --------------------------------------------------------------------------- the report, as text


_A, _B = "values_of_3_or_more_persons", "values_of_2_persons_named_apart"


def _ratio(found: Any, total: Any) -> str:
    return "-" if total is None else f"{found}/{total}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_run(title: str, report: Mapping[str, Any]) -> str:
    """One dataset's report as tables: overall and per situation, the counts per arrival order, missed pairs."""
    ours, theirs = report["idstream"], report["baseline_union_find"]
    lines = [
        f"{title}: {report['events']:,} events of {report['persons']:,} persons scored, "
        f"applied in {report['seconds_to_apply']:.1f} s",
        "",
        f"{'situation':<22} {'persons':>7} {'events':>7} | {'P':>6} {'R':>6} {'R(res)':>6} | "
        f"{'base P':>6} {'base R(res)':>11} | {'ceiling R':>9}",
    ]
    rows = [("overall", report["persons"], report["events"], ours, theirs, report["resolvable_ceiling"])]
    for name, row in report.get("situations", {}).items():
        if row.get("events"):
            rows.append((name, row["persons"], row["events"], row["idstream"], row["baseline_union_find"],
                         row["resolvable_ceiling"]))  # fmt: skip
    for name, persons, events, mine, base, ceiling in rows:
        lines.append(
            f"{name:<22} {persons:>7,} {events:>7,} | {_num(mine['precision']):>6} {_num(mine['recall']):>6} "
            f"{_num(mine['recall_of_resolvable']):>6} | {_num(base['precision']):>6} "
            f"{_num(base['recall_of_resolvable']):>11} | {_num(ceiling['recall']):>9}"
        )
    erased = {
        name: row["erased_persons"] for name, row in report.get("situations", {}).items() if "erased_persons" in row
    }
    if erased:
        lines.append("  (not scored, erased: " + ", ".join(f"{n} {name}" for name, n in erased.items()) + ")")
    lines += [
        "",
        "(a) values of 3+ persons -> one person   (b) values of 2 differently named persons -> one person",
        "(c) erased identifiers found: in-stream erasures (the target is 0), and after the re-sent history",
        f"{'arrival order':<14} {'P':>6} {'R(res)':>6} {'(a)':>9} {'(b)':>9} {'(c) in-stream':>13} {'(c) re-sent':>11}",
    ]
    for run in report.get("orders", [{"order": "stream", **ours}]):
        lines.append(
            f"{run['order']:<14} {_num(run['precision']):>6} {_num(run['recall_of_resolvable']):>6} "
            f"{_ratio(run[_A + '_resolved_to_one'], run[_A]):>9} {_ratio(run[_B + '_resolved_to_one'], run[_B]):>9} "
            f"{_ratio(run['erased_in_stream_found'], run['erased_in_stream_identifiers']):>13} "
            f"{_ratio(run['erased_found'], run['erased_identifiers']):>11}"
        )
    missed = report.get("missed_resolvable_pairs")
    if missed is not None:
        causes = ", ".join(f"{cause} {n:,}" for cause, n in missed["by_cause"].items()) or "none"
        lines += ["", f"missed resolvable pairs: {missed['pairs']:,} ({causes})"]
        for cause, shown in missed.get("examples", {}).items():
            for example in shown:
                named = example.get("names") or [[], []]
                written = " | ".join(", ".join(part) or "-" for part in named) if any(named) else ""
                lines.append(
                    f"  {cause:<18} {example['pairs']:>5} pairs  {' ~ '.join(example['events'])}  "
                    f"at {' / '.join(example['link'])}  ({example['detail']})"
                    + (f"  names: {written}" if written else "")
                )
    return "\n".join(lines)


def render_summary(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The runs side by side (one per seed): precision, recall of the resolvable and the counts, worst order."""
    lines = [
        f"{'run':<10} {'P':>6} {'R(res)':>6} {'min P':>6} {'min R(res)':>10} {'(a)':>9} {'(b)':>9} "
        f"{'(c) in-stream':>13} {'(c) re-sent':>11} {'missed':>7}"
    ]
    for name, report in reports.items():
        ours = report["idstream"]
        runs = report.get("orders", [ours])
        worst = {key: max(r[key] or 0 for r in runs) for key in _ORDER_KEYS if key.endswith(("_found", "_to_one"))}
        missed = report.get("missed_resolvable_pairs", {}).get("pairs")
        lines.append(
            f"{name:<10} {_num(ours['precision']):>6} {_num(ours['recall_of_resolvable']):>6} "
            f"{_num(min(r['precision'] for r in runs)):>6} {_num(min(r['recall_of_resolvable'] for r in runs)):>10} "
            f"{_ratio(worst[_A + '_resolved_to_one'], ours[_A]):>9} "
            f"{_ratio(worst[_B + '_resolved_to_one'], ours[_B]):>9} "
            f"{_ratio(worst['erased_in_stream_found'], ours['erased_in_stream_identifiers']):>13} "
            f"{_ratio(worst['erased_found'], ours['erased_identifiers']):>11} "
            f"{'-' if missed is None else f'{missed:,}':>7}"
        )
    lines.append("counts: the worst arrival order's; P and R(res): the stream order's, and the worst of every order")
    return "\n".join(lines)
