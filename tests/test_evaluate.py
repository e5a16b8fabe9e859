"""Scoring clusterings: pair counts from cluster sizes, the reference clusterings, the Senzing truth set."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Hashable, Mapping
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from identity import CrmInfo, Touch, TouchType
from identity.normalize import Identifier, Normalizer
from streams.evaluate import PairScores, baseline, largest, pairwise, resolvable, senzing_stream, shared_in_truth
from streams.generate import generate
from tests.conftest import touch

SENZING_REPO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "senzing-truthsets"


def clusters(*groups: str) -> dict[str, int]:
    """``clusters("abc", "d")``: events a, b, c in cluster 0 and d in cluster 1."""
    return {event: label for label, group in enumerate(groups) for event in group}


# ----------------------------------------------------------------------------- pairwise


def test_pairwise_counts_pairs_by_hand() -> None:
    # true pairs ab ac bc; predicted ab cd; correct ab
    scores = pairwise(clusters("abc", "d"), clusters("ab", "cd"))
    assert (scores.true_pairs, scores.predicted_pairs, scores.correct_pairs) == (3, 2, 1)
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1 / 2, 1 / 3, 2 / 5))


def test_pairwise_over_events_in_both_only() -> None:
    truth = clusters("abc", "d", "x")
    predicted = clusters("abcd", "y")  # x has no prediction and y no truth: neither counts
    scores = pairwise(truth, predicted)
    assert (scores.true_pairs, scores.predicted_pairs, scores.correct_pairs) == (3, 6, 3)
    assert (scores.precision, scores.recall) == (0.5, 1.0)
    assert scores.f1 == pytest.approx(2 / 3)


def test_pairwise_without_pairs() -> None:
    assert pairwise(clusters("ab"), clusters("a", "b")) == PairScores(1.0, 0.0, 0.0, 1, 0, 0)
    assert pairwise(clusters("a", "b"), clusters("ab")) == PairScores(0.0, 1.0, 0.0, 0, 1, 0)
    assert pairwise(clusters("a", "b"), clusters("a", "b")) == PairScores(1.0, 1.0, 1.0, 0, 0, 0)
    assert pairwise({}, {}) == PairScores(1.0, 1.0, 1.0, 0, 0, 0)


def test_labels_are_any_hashable_and_only_their_grouping_matters() -> None:
    truth = {"a": "p1", "b": "p1", "c": ("p", 2)}
    assert pairwise(truth, {"a": 7, "b": 7, "c": 8}) == pairwise(truth, {"a": "x", "b": "x", "c": None})


def brute_force(truth: Mapping[str, Hashable], predicted: Mapping[str, Hashable]) -> tuple[int, int, int]:
    events = sorted(truth.keys() & predicted.keys())
    true_pairs = predicted_pairs = correct = 0
    for a, b in itertools.combinations(events, 2):
        same_truth, same_predicted = truth[a] == truth[b], predicted[a] == predicted[b]
        true_pairs += same_truth
        predicted_pairs += same_predicted
        correct += same_truth and same_predicted
    return true_pairs, predicted_pairs, correct


labelings = st.dictionaries(st.sampled_from([f"e{i}" for i in range(25)]), st.integers(0, 5), max_size=25)


@given(truth=labelings, predicted=labelings)
def test_pairwise_equals_counting_every_pair(truth: dict[str, int], predicted: dict[str, int]) -> None:
    scores = pairwise(truth, predicted)
    true_pairs, predicted_pairs, correct = brute_force(truth, predicted)
    assert (scores.true_pairs, scores.predicted_pairs, scores.correct_pairs) == (true_pairs, predicted_pairs, correct)
    assert scores.precision == (correct / predicted_pairs if predicted_pairs else 1.0)
    assert scores.recall == (correct / true_pairs if true_pairs else 1.0)
    assert 0.0 <= scores.f1 <= 1.0
    assert pairwise(predicted, truth).precision == scores.recall  # the roles are symmetric


def test_largest() -> None:
    assert largest(clusters("abc", "d", "ef")) == 3
    assert largest({}) == 0


# ----------------------------------------------------------------------------- reference clusterings

OFFICE = "+7 495 111-22-33"
ANNA = "8 (916) 123-45-67"
BORIS = "+7 903 765-43-21"


def office_stream() -> tuple[list[Touch], dict[str, str]]:
    """Anna calls from her mobile and from the office; Boris, her colleague, from the office and his mobile."""
    touches = [
        touch("anna-form", 0, ("phone", ANNA), ("email", "Anna <anna.k@mail.ru>"), type="form_submit"),
        touch("anna-call", 5, ("phone", "+79161234567"), type="call"),  # her phone again, another spelling
        touch("anna-office", 9, ("phone", OFFICE), ("email", "ANNA.K@mail.ru"), type="call"),
        touch("boris-office", 12, ("phone", "84951112233"), type="call"),
        touch("boris-form", 20, ("phone", BORIS), ("email", "test@test.ru"), type="form_submit"),  # junk e-mail
        touch("anna-call", 5, ("phone", "+79161234567"), type="call"),  # redelivered
        touch("visit", 30, ("ga_client_id", "GA1.2.111.222"), type="site_visit"),
        touch("nothing", 31, ("phone", "null"), type="form_submit"),
    ]
    truth = {
        "anna-form": "anna",
        "anna-call": "anna",
        "anna-office": "anna",
        "boris-office": "boris",
        "boris-form": "boris",
        "visit": "anna",
        "nothing": "boris",
    }
    return touches, truth


def groups(labels: Mapping[str, int]) -> set[frozenset[str]]:
    found: dict[int, set[str]] = {}
    for event, label in labels.items():
        found.setdefault(label, set()).add(event)
    return {frozenset(events) for events in found.values()}


def test_resolvable_links_personal_identifiers_and_never_shared_ones() -> None:
    touches, truth = office_stream()
    normalizer = Normalizer()
    assert shared_in_truth(touches, truth, normalizer) == {Identifier("phone", "+74951112233")}
    assert groups(resolvable(touches, truth, normalizer)) == {
        frozenset({"anna-form", "anna-call", "anna-office"}),  # phone and e-mail in any spelling
        frozenset({"boris-office"}),  # only the switchboard: joins no one, not even Boris
        frozenset({"boris-form"}),
        frozenset({"visit"}),  # a device seen nowhere else
        frozenset({"nothing"}),  # no accepted identifier
    }


def test_resolvable_covers_the_events_with_truth_and_is_never_wrong() -> None:
    touches, truth = office_stream()
    del truth["visit"]
    predicted = resolvable(touches, truth, Normalizer())
    assert predicted.keys() == truth.keys()
    assert pairwise(truth, predicted).precision == 1.0


def test_baseline_glues_people_through_a_shared_value() -> None:
    touches, truth = office_stream()
    predicted = baseline(touches, Normalizer())
    assert groups(predicted) == {
        frozenset({"anna-form", "anna-call", "anna-office", "boris-office"}),  # through the switchboard
        frozenset({"boris-form"}),  # his junk e-mail links nothing
        frozenset({"visit"}),
        frozenset({"nothing"}),
    }
    scores = pairwise(truth, predicted)
    assert (scores.true_pairs, scores.predicted_pairs, scores.correct_pairs) == (9, 6, 3)
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1 / 2, 1 / 3, 2 / 5))
    assert largest(predicted) == 4


def test_only_linking_touch_types_link() -> None:
    normalizer = Normalizer()
    touches = [
        touch("form", 0, ("phone", ANNA), type="form_submit"),
        touch("unlink", 1, ("phone", ANNA), type="identity_unlink"),
        touch("erase", 2, ("phone", ANNA), type="erase_request"),
    ]
    assert len(groups(baseline(touches, normalizer))) == 3


def test_baseline_on_a_generated_stream_is_less_precise_than_what_identifiers_allow() -> None:
    stream = generate(300, seed=3)
    normalizer = Normalizer()
    naive = pairwise(stream.truth, baseline(stream.touches, normalizer))
    ceiling = pairwise(stream.truth, resolvable(stream.touches, stream.truth, normalizer))
    assert shared_in_truth(stream.touches, stream.truth, normalizer)  # the office switchboards
    assert naive.precision < 0.97  # 0.952 for this seed; 0.78-0.95 over seeds 1-8
    assert naive.predicted_pairs > naive.correct_pairs
    assert ceiling.precision == 1.0
    assert naive.recall >= ceiling.recall > 0.8  # shared values may also join parts of one person


# ----------------------------------------------------------------------------- the Senzing truth set


@pytest.fixture(scope="module")
def senzing() -> tuple[list[Touch], dict[str, str]]:
    folder = Path(os.environ.get("IDSTREAM_SENZING_DIR") or SENZING_REPO)
    if not (folder / "truthsets" / "demo").is_dir() and not (folder / "customers.jsonl").is_file():
        pytest.skip(
            f"Senzing truth set not found at {folder}: clone github.com/Senzing/truth-sets into "
            "../shared/testdata/senzing-truthsets beside the repository, or set IDSTREAM_SENZING_DIR"
        )
    return senzing_stream(folder)


def test_senzing_stream_has_every_record_and_its_truth(senzing: tuple[list[Touch], dict[str, str]]) -> None:
    touches, truth = senzing
    assert len(touches) == len(truth) == 159
    assert len(set(truth.values())) == 85
    assert [t.event_id for t in touches] == list(dict.fromkeys(t.event_id for t in touches))
    assert all(earlier.occurred_at < later.occurred_at for earlier, later in itertools.pairwise(touches))
    customers = [t for t in touches if t.source == "customers"]
    assert len(customers) == 120
    assert all(t.type is TouchType.CRM_STAGE and t.crm is not None for t in customers)
    assert {t.source for t in touches if t.type is TouchType.FORM_SUBMIT} == {"reference", "watchlist"}
    first = touches[0]
    assert first.event_id == "CUSTOMERS-1001"
    assert truth[first.event_id] == "1001"
    assert first.identifiers == (("crm_contact_id", "CUST-1001"), ("phone", "702-919-1300"))
    assert first.crm == CrmInfo("deal-CUST-1001", "new")
    assert first.attributes == {"name": "Robert Smith"}
    assert all(value.strip() for t in touches for _, value in t.identifiers)  # no empty value is ever keyed


def test_senzing_generic_address_spans_many_people(senzing: tuple[list[Touch], dict[str, str]]) -> None:
    touches, truth = senzing
    users = {truth[t.event_id] for t in touches if ("email", "info@ca-state.gov") in t.identifiers}
    assert len(users) == 19
    normalizer = Normalizer()
    assert Identifier("email", "info@ca-state.gov") in shared_in_truth(touches, truth, normalizer)
    assert pairwise(truth, resolvable(touches, truth, normalizer)).precision == 1.0
    assert largest(baseline(touches, normalizer)) >= 19


# ----------------------------------------------------------------------------- the accuracy harness


def _harness(store: object, persons: int = 600) -> dict[str, object]:
    from streams.evaluate import StoreResolver, evaluate
    from streams.generate import JUNK_EMAILS

    stream = generate(persons, seed=4)
    junk = [("email", j) for j in JUNK_EMAILS]
    return evaluate(StoreResolver(store), stream.touches, stream.truth, erase=6, junk=junk)


def _meets_the_targets(report: dict[str, object]) -> None:
    ours, theirs = report["idstream"], report["baseline_union_find"]
    assert isinstance(ours, dict)
    assert isinstance(theirs, dict)
    assert ours["precision"] >= 0.995
    assert ours["recall_of_resolvable"] >= 0.99
    assert ours["shared_identifiers"] > 0  # the stream has switchboards to get wrong...
    assert ours["shared_resolved_to_one_person"] == 0  # ...and none of them names one person
    assert ours["junk_resolved_to_one_person"] == 0
    assert ours["erased_identifiers"] > 0
    assert ours["erased_found"] == 0  # not even after their history was sent again
    assert theirs["precision"] < ours["precision"] - 0.05  # the naive union-find glues colleagues
    assert ours["largest_profile_events"] < theirs["largest_profile_events"]


def test_the_accuracy_targets_hold_on_a_generated_stream_in_memory() -> None:
    from identity import IdentityGraph

    _meets_the_targets(_harness(IdentityGraph()))


def test_the_accuracy_targets_hold_on_a_generated_stream_in_redis(redis_client: redis.Redis) -> None:
    from streams.redis_store import RedisIdentityStore

    store = RedisIdentityStore(redis_client, prefix=f"eval-{uuid.uuid4().hex[:10]}")
    try:
        _meets_the_targets(_harness(store, persons=400))
    finally:
        store.clear()


def test_the_senzing_truth_set_never_glues_the_generic_address(senzing: tuple[list[Touch], dict[str, str]]) -> None:
    from identity import IdentityGraph
    from streams.evaluate import StoreResolver, evaluate

    touches, truth = senzing
    report = evaluate(StoreResolver(IdentityGraph()), touches, truth, erase=2)
    ours, theirs = report["idstream"], report["baseline_union_find"]
    assert ours["precision"] >= 0.995
    assert theirs["precision"] < 0.2  # info@ca-state.gov glues 19 people
    assert ours["shared_resolved_to_one_person"] == 0
    assert ours["erased_found"] == 0
