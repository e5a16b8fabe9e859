"""Core benchmark: events/s of the pure identity core in one process.

    python benchmarks/bench_core.py [--events 200000] [--persons 40000] [--seed 1]

Prints one JSON line. The stream is synthetic but shaped like a real one: each
person has 1-3 devices (GA client ids), a Metrica id, a phone and an e-mail in
assorted spellings; touches are site visits, forms, calls and CRM stage changes;
3% of the values are junk and 1% of the events arrive late (out of order).

Every figure comes with a reference measured in the same run on the same
machine, so results compare across noisy, shared machines:

* ``reference_dict_events_per_s``: a loop over the same events doing one dict
  write per identifier, the floor of any Python implementation;
* ``normalize_cold_us``: microseconds to normalize one distinct raw value with
  an empty memo (the phone and e-mail libraries' cost).

``core_events_per_s`` is the steady state of a long-running process (raw values
already in the normalizer's memo) with the interpreter's default GC;
``core_events_per_s_tuned_gc`` the same with ``streams.runtime.tune_gc()``, as
idstream's own commands run; ``cold_events_per_s`` is the first pass, where every
raw value is new to the memo when first seen (this synthetic stream has far more
distinct spellings per event than a live one). ``--persons`` sets the shape:
200,000 events over 40,000 persons is a fresh audience (5 touches each), over
2,000 persons a returning one (100 touches each).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from identity import CrmInfo, IdentityGraph, Normalizer, NormalizerConfig, Touch, TouchType, Utm
from identity.touch import AttributeValue
from streams.runtime import tune_gc

T0 = datetime(2026, 11, 1, tzinfo=UTC)
UTMS = [Utm("yandex", "cpc", "brand"), Utm("google", "organic"), Utm("vk", "social", "autumn"), None]
PROJECTS = ["Северный", "Южный", "Речной", "Парковый"]


def phone_variants(digits: str) -> list[str]:
    d = digits
    return [f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}", f"+7 {d[:3]} {d[3:6]} {d[6:8]} {d[8:]}", f"7{d}", d]


def make_stream(n_events: int, n_persons: int, seed: int) -> list[Touch]:
    rng = random.Random(seed)
    persons: list[dict[str, Any]] = []
    for p in range(n_persons):
        digits = f"9{rng.randint(10, 99)}{rng.randint(1_000_000, 9_999_999)}"
        persons.append(
            {
                "ga": [f"GA1.2.{rng.randint(10**8, 10**9)}.{1_700_000_000 + p}" for _ in range(rng.randint(1, 3))],
                "ym": str(1_700_000_000_000_000_000 + p * 7919),
                "phones": phone_variants(digits),
                "emails": [f"user{p}@mail.ru", f"User{p}@Mail.RU", f"<user{p}@mail.ru>"],
                "crm": f"amo-{p}",
            }
        )
    stream = []
    for i in range(n_events):
        person = persons[min(int(rng.paretovariate(1.2)) - 1, n_persons - 1) if rng.random() < 0.3
                         else rng.randrange(n_persons)]  # fmt: skip
        roll = rng.random()
        ga = ("ga_client_id", rng.choice(person["ga"]))
        attributes: dict[str, AttributeValue] = {"project": rng.choice(PROJECTS), "page": f"/p/{rng.randint(1, 50)}"}
        ids: list[tuple[str, str]]
        crm = None
        if roll < 0.70:
            kind, ids = TouchType.SITE_VISIT, [ga, ("ym_client_id", person["ym"])]
        elif roll < 0.82:
            email = rng.choice(person["emails"]) if rng.random() > 0.03 else "test@test.ru"
            ids = [ga, ("phone", rng.choice(person["phones"])), ("email", email)]
            kind, attributes = (
                TouchType.FORM_SUBMIT,
                {"name": f"Person {i % 1000}", "project": rng.choice(PROJECTS)},
            )
        elif roll < 0.95:
            kind, ids = TouchType.CALL, [("phone", rng.choice(person["phones"])), ga]
            attributes = {"duration_s": rng.randint(5, 600)}
        else:
            kind, ids = (
                TouchType.CRM_STAGE,
                [("crm_contact_id", person["crm"]), ("phone", person["phones"][0])],
            )
            crm = CrmInfo(f"deal-{person['crm']}", rng.choice(["new", "qualified", "meeting", "won"]))
        late = rng.random() < 0.01
        moment = T0 + timedelta(seconds=i * 0.5 - (rng.randint(60, 3600) if late else 0))
        stream.append(Touch(f"ev-{i}", kind, moment, "bench", tuple(ids), attributes, rng.choice(UTMS), crm))
    return stream


def timed(fn: object) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--persons", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    stream = make_stream(args.events, args.persons, args.seed)

    def reference() -> None:
        index: dict[tuple[str, str], str] = {}
        for t in stream:
            for pair in t.identifiers:
                index[pair] = t.event_id

    normalizer = Normalizer()

    def run(graph: IdentityGraph) -> float:
        gc.collect()
        start = time.perf_counter()
        for t in stream:
            graph.apply(t)
        return time.perf_counter() - start

    distinct = sorted({pair for t in stream for pair in t.identifiers})

    def normalize_only() -> None:
        plain = Normalizer(NormalizerConfig(cache_size=0))
        for kind, raw in distinct[:20_000]:
            plain.normalize(kind, raw)

    ref_s = min(timed(reference) for _ in range(3))
    cold_graph = IdentityGraph(normalizer=normalizer)
    cold_s = run(cold_graph)  # every raw value is new to the memo the first time it is seen
    persons = cold_graph.persons()
    del cold_graph
    warm_s = run(IdentityGraph(normalizer=normalizer))  # a fresh graph; the memo knows the values
    tune_gc()  # what `idstream` does in its long-running commands
    graph = IdentityGraph(normalizer=normalizer)
    tuned_s = run(graph)
    norm_s = timed(normalize_only)
    assert graph.persons() == persons
    sizes = sorted((len(nodes) for nodes in graph.persons().values()), reverse=True)
    warm_eps = args.events / warm_s
    ref_eps = args.events / ref_s
    n_ids = sum(len(t.identifiers) for t in stream)
    print(
        json.dumps(
            {
                "bench": "core",
                "events": args.events,
                "persons_generated": args.persons,
                "persons_resolved": len(graph),
                "largest_person": sizes[0] if sizes else 0,
                "late_events_replayed": graph.reorders,
                "late_events_without_replay": graph.late_without_replay,
                "core_events_per_s": round(warm_eps),
                "core_events_per_s_tuned_gc": round(args.events / tuned_s),
                "cold_events_per_s": round(args.events / cold_s),
                "new_raw_values_per_event": round(len(distinct) / args.events, 3),
                "identifiers_per_event": round(n_ids / args.events, 3),
                "reference_dict_events_per_s": round(ref_eps),
                "core_to_reference": round(warm_eps / ref_eps, 4),
                "normalize_cold_us": round(norm_s / min(len(distinct), 20_000) * 1e6, 2),
                "target_events_per_s": 100_000,
                "python": platform.python_version(),
                "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            }
        )
    )


if __name__ == "__main__":
    main()
