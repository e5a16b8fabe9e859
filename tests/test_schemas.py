"""The touch-event wire format: what integrators may send, and what they hear back when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import IdentityGraph, TouchType
from schemas import MAX_IDENTIFIERS, MAX_MESSAGE_BYTES, InvalidMessage, TouchEvent, decode_touch, json_schema
from schemas.export import OPENAPI, SCHEMAS, render

GOOD: dict[str, Any] = {
    "event_id": "calltouch-1",
    "type": "call",
    "occurred_at": "2026-11-02T10:15:00+03:00",
    "source": "calltouch",
    "identifiers": [{"kind": "phone", "value": "8 (916) 123-45-67"}],
    "attributes": {"project": "Северный", "duration_s": 184, "rating": 4.5, "callback": False, "note": None},
    "utm": {"source": "yandex", "medium": "cpc"},
}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def errors_of(raw: bytes | str) -> list[tuple[str, str]]:
    with pytest.raises(InvalidMessage) as caught:
        decode_touch(raw)
    assert not caught.value.retriable
    body = caught.value.to_dict()
    assert body["code"] == "invalid_message"
    json.dumps(body)  # machine-readable means serializable
    return [(e["field"], e["code"]) for e in body["errors"]]


def test_a_good_event_decodes_and_converts_for_the_core() -> None:
    event = decode_touch(encode(GOOD))
    touch = event.to_touch()
    assert touch.type is TouchType.CALL
    assert touch.identifiers == (("phone", "8 (916) 123-45-67"),)
    assert touch.attributes["duration_s"] == 184
    assert touch.attributes["callback"] is False
    assert touch.utm is not None
    assert touch.utm.medium == "cpc"
    assert IdentityGraph().apply(touch).status == "applied"


def test_unknown_fields_are_kept_at_every_level() -> None:
    raw = {**GOOD, "tenant": "acme", "identifiers": [{"kind": "phone", "value": "89161234567", "confidence": 0.9}],
           "utm": {"source": "vk", "yclid": "123"}}  # fmt: skip
    dumped = decode_touch(encode(raw)).model_dump(mode="json")
    assert dumped["tenant"] == "acme"
    assert dumped["identifiers"][0]["confidence"] == 0.9
    assert dumped["utm"]["yclid"] == "123"
    assert decode_touch(encode(dumped)).model_dump(mode="json") == dumped  # round trip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"event_id": ""}, ("event_id", "string_too_short")),
        ({"event_id": "x" * 129}, ("event_id", "string_too_long")),
        ({"event_id": 5}, ("event_id", "string_type")),
        ({"event_id": "a\x1eb"}, ("event_id", "string_pattern_mismatch")),
        ({"occurred_at": "1969-12-31T23:00:00+00:00"}, ("occurred_at", "value_error")),
        ({"occurred_at": "2500-01-01T00:00:00+00:00"}, ("occurred_at", "value_error")),
        ({"type": "Page View"}, ("type", "enum")),
        ({"occurred_at": "2026-11-02T10:15:00"}, ("occurred_at", "timezone_aware")),
        ({"occurred_at": "yesterday"}, ("occurred_at", "datetime_from_date_parsing")),
        ({"source": ""}, ("source", "string_too_short")),
        ({"identifiers": []}, ("identifiers", "too_short")),
        ({"identifiers": [{"kind": "phone"}]}, ("identifiers.0.value", "missing")),
        (
            {"identifiers": [{"kind": "Phone", "value": "1"}]},
            ("identifiers.0.kind", "string_pattern_mismatch"),
        ),
        ({"identifiers": [{"kind": "phone", "value": 79161234567}]}, ("identifiers.0.value", "string_type")),
        (
            {"identifiers": [{"kind": "email", "value": f"{i}@mail.ru"} for i in range(MAX_IDENTIFIERS + 1)]},
            ("identifiers", "too_long"),
        ),
        ({"attributes": {"name": {"first": "Ivan"}}}, ("attributes.name", "attribute_type")),
        ({"attributes": {"tags": ["a", "b"]}}, ("attributes.tags", "attribute_type")),
        ({"attributes": {"note": "x" * 5000}}, ("attributes.note", "string_too_long")),
        ({"type": "crm_stage"}, ("crm", "value_error")),
        ({"type": "crm_stage", "crm": {"deal_id": "d1"}}, ("crm.stage", "missing")),
        ({"type": "identity_link"}, ("identifiers", "value_error")),
        ({"schema_version": 2}, ("schema_version", "literal_error")),
        ({"call": {"status": "lost"}}, ("call.status", "literal_error")),
        ({"call": {"wait_s": -1}}, ("call.wait_s", "greater_than_equal")),
        ({"call": {"talk_s": "5"}}, ("call.talk_s", "float_type")),
        ({"type": "site_visit", "call": {"status": "missed"}}, ("call", "value_error")),
    ],
)
def test_bad_fields_are_named(change: dict[str, Any], expected: tuple[str, str]) -> None:
    assert expected in errors_of(encode({**GOOD, **change}))


def test_every_missing_field_is_reported_at_once() -> None:
    fields = {f for f, _ in errors_of(b'{"event_id": "x"}')}
    assert fields == {"type", "occurred_at", "source", "identifiers"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "json_invalid"),
        (b"not json", "json_invalid"),
        (b"\xff\xfe{}", "json_invalid"),
        (b"[1, 2]", "model_type"),
        (b'"just a string"', "model_type"),
        (b"null", "model_type"),
        (b"[" * 5000 + b"]" * 5000, "json_invalid"),  # deep nesting within the size limit
    ],
)
def test_hostile_bytes_get_a_clear_rejection(raw: bytes, code: str) -> None:
    assert next(c for _, c in errors_of(raw)) == code


def test_non_finite_numbers_are_refused() -> None:
    raw = encode(GOOD).replace(b'"duration_s": 184', b'"duration_s": NaN')
    assert ("attributes.duration_s", "finite_number") in errors_of(raw)
    raw = encode({**GOOD, "type": "crm_stage", "crm": {"deal_id": "d", "stage": "s"}}).replace(
        b'"stage": "s"', b'"stage": "s", "amount": Infinity'
    )
    assert ("crm.amount", "finite_number") in errors_of(raw)


def test_oversized_messages_are_refused_before_parsing() -> None:
    big = {**GOOD, "attributes": {"blob": "x" * 4000, **{f"k{i}": "y" * 1000 for i in range(70)}}}
    raw = encode(big)
    assert len(raw) > MAX_MESSAGE_BYTES
    assert errors_of(raw) == [("(message)", "too_large")]


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_no_input_makes_the_decoder_raise_anything_else(raw: bytes) -> None:
    try:
        decode_touch(raw)
    except InvalidMessage as exc:
        assert exc.errors
        assert all(e.field and e.code for e in exc.errors)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(mutation=st.dictionaries(st.sampled_from([*GOOD, "crm", "extra"]), json_values, max_size=3))
def test_structurally_hostile_json_is_rejected_or_accepted_never_crashes(mutation: dict[str, Any]) -> None:
    raw = encode({**GOOD, **mutation})
    try:
        event = decode_touch(raw)
    except InvalidMessage as exc:
        assert exc.errors
    else:
        IdentityGraph().apply(event.to_touch())  # whatever passes the contract, the core can take


def test_published_json_schema_is_current() -> None:
    """schemas/json/ is what integrators read: it must equal what the models generate."""
    folder = Path(__file__).resolve().parents[1] / "schemas" / "json"
    for name in [*SCHEMAS, OPENAPI]:
        assert (folder / name).read_text(encoding="utf-8") == render(name), (
            f"schemas/json/{name} is stale: run `idstream schema export schemas/json`"
        )


def test_json_schema_agrees_with_the_models() -> None:
    """An integrator validating with the JSON Schema accepts and refuses what we do."""
    schema = json_schema("touch-event.v1.json")
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for example in schema["examples"]:
        validator.validate(example)
        decode_touch(encode(example))
    validator.validate(GOOD)
    for bad in (
        {**GOOD, "identifiers": []},
        {**GOOD, "type": "Page View"},
        {k: v for k, v in GOOD.items() if k != "source"},
    ):
        assert not validator.is_valid(bad)
        with pytest.raises(InvalidMessage):
            decode_touch(encode(bad))


def test_from_touch_round_trips() -> None:
    event = decode_touch(encode({**GOOD, "type": "crm_stage", "crm": {"deal_id": "d", "stage": "won", "amount": 5}}))
    assert TouchEvent.from_touch(event.to_touch()).to_touch() == event.to_touch()


def test_call_details_reach_the_core_and_leave_old_fingerprints_alone() -> None:
    details = {"status": "missed", "wait_s": 41, "talk_s": 0, "tracking_number": "+7 495 123-45-67", "operator": "7"}
    touch = decode_touch(encode({**GOOD, "call": details})).to_touch()
    assert touch.call is not None
    assert (touch.call.status, touch.call.wait_s, touch.call.tracking_number) == ("missed", 41.0, "+7 495 123-45-67")
    assert TouchEvent.from_touch(touch).to_touch() == touch
    plain = decode_touch(encode(GOOD)).to_touch()
    assert plain.fingerprint != touch.fingerprint
    # as computed before call details existed: applied-id records in Redis keep matching redeliveries
    assert plain.fingerprint == "ff27967e202a2882"


def test_the_published_openapi_description_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    document = json.loads(render(OPENAPI))
    validate(document)
    assert set(document["paths"]) == {
        "/v1/lookup",
        "/v1/lookup/batch",
        "/v1/profiles/{profile_id}",
        "/v1/explain",
        "/v1/preview",
        "/v1/touches",
        "/v1/hooks/{source}/{secret}",
        "/v1/reports/channels",
        "/v1/reports/calls",
        "/healthz",
        "/readyz",
        "/metrics",
    }
