"""The synthetic stream must contain the mess a real one does, the same way every time."""

from __future__ import annotations

import itertools
from collections import Counter

from identity import IdentityGraph, TouchType
from schemas import TouchEvent, decode_touch
from streams.generate import generate


def test_generation_is_deterministic_and_valid_on_the_wire() -> None:
    a, b = generate(200, seed=7), generate(200, seed=7)
    assert [t.event_id for t in a.touches] == [t.event_id for t in b.touches]
    assert generate(200, seed=8).touches != a.touches
    for touch in a.touches[:300]:
        assert decode_touch(TouchEvent.from_touch(touch).model_dump_json()).to_touch() == touch


def test_the_stream_has_redeliveries_late_crm_events_shared_phones_and_every_touch_type() -> None:
    stream = generate(600, seed=1)
    ids = Counter(t.event_id for t in stream.touches)
    assert sum(n - 1 for n in ids.values()) == stream.redeliveries > 0
    arrival = [t.key for t in stream.touches if t.type is TouchType.CRM_STAGE]
    assert any(later < earlier for earlier, later in itertools.pairwise(arrival))  # late ones
    assert {t.type for t in stream.touches} == {
        TouchType.SITE_VISIT,
        TouchType.FORM_SUBMIT,
        TouchType.CALL,
        TouchType.CRM_STAGE,
    }
    office_phones = Counter(
        value for t in stream.touches if t.type is TouchType.CALL for kind, value in t.identifiers if kind == "phone"
    )
    assert stream.shared_office_phones > 0
    spellings = {t.identifiers[1][1] for t in stream.touches if t.type is TouchType.FORM_SUBMIT}
    assert any(s.startswith("8 (") for s in spellings)
    assert any(s.startswith("+7 ") for s in spellings)
    assert office_phones


def test_resolving_the_stream_finds_each_person_with_a_form_at_most_once() -> None:
    """Every generated person left a form with their own phone: no person may be split across profiles."""
    stream = generate(300, seed=3)
    graph = IdentityGraph()
    graph.apply_many(stream.touches)
    forms: dict[int, set[str | None]] = {}
    for touch in stream.touches:
        if touch.type is TouchType.FORM_SUBMIT:
            phone = next(v for k, v in touch.identifiers if k == "phone")
            forms.setdefault(stream.truth[touch.event_id], set()).add(graph.lookup_raw("phone", phone))
    assert len(forms) == 300
    assert all(len(pids) == 1 and None not in pids for pids in forms.values())
