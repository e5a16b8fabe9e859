"""Fuzzing the edges (issue #8): random and hostile bytes at the decoder, the worker and the lookup API.

Every input gets a clear rejection and the service stays up:

* the decoder returns a valid event or raises :class:`schemas.InvalidMessage` with machine-readable
  codes and a short message (a 60 KB payload is not echoed back), never anything else, and what it
  accepts is what the published JSON Schema describes (a number is not silently a time or a text);
* the worker's processor turns each bad message into exactly one dead letter that keeps its bytes,
  applies every good one, and identifier values that look like Lua, Redis keys or RESP are stored as
  data under the graph's fixed keys;
* the lookup API answers every request with JSON and a 2xx/4xx status, never a 5xx or a dropped
  connection, refuses every /v1 request without the token, and still answers a good lookup afterwards.

Redis is real (tests/conftest.py); the API runs on aiohttp's TestServer with a real TCP socket.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gzip
import json
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import jsonschema
import orjson
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from identity import CrmInfo, Identifier, Normalizer, Rejection, Touch, Utm
from identity.graph import APPLIED_TYPES
from identity.normalize import NormalizerConfig
from schemas import (
    MAX_MESSAGE_BYTES,
    DeadLetter,
    IdentityChange,
    InvalidMessage,
    ProfileUpdate,
    TouchEvent,
    decode_touch,
    json_schema,
)
from schemas.api import (
    MAX_VALUE,
    BatchLookupResponse,
    ErrorResponse,
    Explanation,
    LookupResult,
    ProfileResponse,
)
from streams.generate import generate
from streams.lookup_api import ApiConfig, create_lookup_app
from streams.processor import Inbound, Processor
from streams.redis_store import KEY_NAMES, RedisIdentityStore
from tests.conftest import touch
from tests.test_store_contract import story

T = TypeVar("T")

#: Identifier values (and query strings) that look like code, keys or protocol to Redis, Lua or a terminal.
HOSTILE = [
    "]] redis.call('FLUSHALL') --[[",
    "'); redis.call('FLUSHALL'); --",
    "]]..redis.call('DEL', KEYS[1])..[[",
    "{idstream}:owner",
    "{fuzz}:person",
    "*",
    "KEYS *",
    "\x1e\x1f",
    "a\x1fb",
    "a\x1ebc\x1d",
    "*3\r\n$3\r\nDEL\r\n$1\r\n*\r\n",
    "\x00",
    "a\x00b",
    "\u200f\u202eevil\u202c",
    "\u200b\ufeff",
    "\u2028\u2029",
    "%FF%FE%00",
    "\\ud800",
    "cjson.decode('[')",
    "null",
    " ",
    "x" * 300,
    "ы" * 200,
    "9" * 600,
    "ы" * 600,
    "𝕏" * 70,
    "+7 916 123-45-67\u200f",
    "ivan@mail.ru\x00",
]
#: Characters a plain text strategy rarely produces: controls, format marks, separators, surrogates.
ODD_CHARS = st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Zs", "Lu", "Ll", "Nd", "Po", "Sm"])
PLAIN_ODD_CHARS = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs", "Lu", "Ll", "Nd", "Po", "Sm"])
#: Hostile values a client can actually send (no lone surrogates: they cannot be encoded at all).
hostile_text = st.sampled_from(HOSTILE) | st.text(max_size=40) | st.text(PLAIN_ODD_CHARS, max_size=300)
#: Byte strings spliced into real events.
TOKENS = [
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"\\ud800", b"\\udfff", b"\\u0000",
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9" * 40, b"[" * 300, b"{", b"}", b'"', b",", b":",
    b"null", b"true", b"\\", b'"event_id": "dup", ',
]  # fmt: skip

CODE = re.compile(r"[a-z][a-z0-9_]*")
#: No answer (a dead letter's error, an API message) may echo a huge input back.
MAX_MESSAGE_CHARS = 2000
#: The type-level contract an integrator validates with (formats aside: ISO 8601 is read more leniently).
CONTRACT = jsonschema.Draft202012Validator(json_schema("touch-event.v1.json"))

#: Derandomized: CI runs the same examples every time (a failure there is reproducible, not luck); the
#: exploring runs are `pytest tests/test_fuzz.py --hypothesis-seed=N` with this flag set to False locally.
fuzz_settings = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ============================================================================= the decoder


@functools.cache
def real_events() -> tuple[bytes, ...]:
    """Events as producers send them: the synthetic stream, plus one with every optional part."""
    full = touch(
        "full-1", 5, ("phone", "8 (916) 123-45-67"), ("email", "Ivan.Petrov@gmail.com"), ("crm_contact_id", "amo-1"),
        type="crm_stage", source="amocrm", attributes={"name": "Иван", "duration_s": 184, "rating": 4.5, "vip": True,
                                                       "note": None},
        utm=Utm("yandex", "cpc", "brand", "ad-1", "квартира"), crm=CrmInfo("deal-1", "won", "new", "sales", 1.5e7),
    )  # fmt: skip
    touches = [*generate(persons=25, seed=8).touches[:120], full]
    return tuple(TouchEvent.from_touch(t).model_dump_json().encode() for t in touches)


def assert_clear_rejection(exc: InvalidMessage) -> None:
    """A machine-readable code per bad field, and a message that says what is wrong without echoing the input."""
    assert exc.code == "invalid_message"
    assert not exc.retriable
    message = str(exc)
    assert message.startswith("invalid message: ")
    assert len(message) > len("invalid message: ")
    assert len(message) < MAX_MESSAGE_CHARS, f"a {len(message)}-character message: {message[:300]!r}..."
    assert exc.errors
    for error in exc.errors:
        assert CODE.fullmatch(error.code), error.code
        assert error.field
        assert error.message
    body = json.dumps(exc.to_dict(), ensure_ascii=False)  # machine-readable: it serializes
    assert len(body) < 10 * MAX_MESSAGE_CHARS, f"a {len(body)}-character error body: {body[:300]}..."


def decoded(raw: bytes | str) -> TouchEvent | None:
    """The decoder's answer, checked: a valid event, or a clear rejection (None); quickly; nothing else."""
    started = time.perf_counter()
    try:
        event = decode_touch(raw)
    except InvalidMessage as exc:
        assert_clear_rejection(exc)
        event = None
    assert time.perf_counter() - started < 2.0
    if event is None:
        return None
    # what was accepted is what the published schema describes: no number slipped in as a time or a text
    document = json.loads(raw)
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in CONTRACT.iter_errors(document)]
    assert not problems, problems
    # and the core's view of it survives a producer's re-encoding (an empty UTM field is an absent one)
    core = event.to_touch()
    again = decode_touch(TouchEvent.from_touch(core).model_dump_json()).to_touch()
    assert core_view(again) == core_view(core)
    return event


def core_view(t: Touch) -> tuple[Touch, dict[str, str]]:
    return dataclasses.replace(t, utm=None), t.utm.to_dict() if t.utm else {}


@settings(fuzz_settings, max_examples=1000)
@given(
    raw=st.binary(max_size=4096)
    | st.text(ODD_CHARS, max_size=512)
    | st.text(ODD_CHARS).map(lambda s: s.encode("utf-8", "surrogatepass"))
)
def test_random_bytes_and_text_get_a_clear_rejection(raw: bytes | str) -> None:
    assert decoded(raw) is None


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A real event with bytes flipped, hostile tokens spliced in, spans deleted or repeated."""
    raw = bytearray(draw(st.sampled_from(real_events())))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["flip", "splice", "delete", "repeat"]))
        if op == "flip" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "splice":
            raw[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 16))]
        else:
            raw[at:at] = raw[at : at + draw(st.integers(1, 64))]
    return bytes(raw)


@pytest.mark.slow
@settings(fuzz_settings, max_examples=1500)
@given(raw=mutated_events())
def test_mutated_real_events_are_decoded_or_clearly_rejected(raw: bytes) -> None:
    decoded(raw)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(1, 400).map(nested)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | st.floats() | st.text(ODD_CHARS)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ODD_CHARS), inner, max_size=4)
)


def swapped(value: Any) -> st.SearchStrategy[Any]:
    """The same datum in the wrong JSON type, or blown up: numbers as strings and vice versa."""
    if isinstance(value, bool):
        return st.sampled_from(["true", 1, 0, "1", None])
    if isinstance(value, int | float):
        return st.sampled_from([str(value), f"{value}", True, [value], float("nan"), float("inf"), 2**70, -0.0])
    if isinstance(value, str):
        numeric = [int(value)] if value.isdigit() and len(value) < 30 else []
        epoch = st.integers(946_684_800, 7_258_118_399) | st.integers(946_684_800_000, 7_258_118_399_999)  # 2000-2199
        return (
            st.sampled_from([*numeric, 12345, 1.5, True, [value], {"value": value}, "", value * 200])
            | epoch
            | epoch.map(str)
        )
    if isinstance(value, list):
        return st.sampled_from([{}, "[]", [], value * 60, [value]])
    if isinstance(value, dict):
        return st.sampled_from([[], "{}", {}, [value]])
    return st.sampled_from([0, "", "null", []])


def places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from places(child, (*path, key))


@st.composite
def edited_events(draw: st.DrawFn) -> bytes:
    """A real event with values retyped, blown up, deleted or replaced by arbitrary JSON."""
    event = json.loads(draw(st.sampled_from(real_events())))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in places(event) if p]))
        parent = functools.reduce(lambda node, key: node[key], path[:-1], event)
        if isinstance(parent, dict) and draw(st.integers(0, 5)) == 0:
            del parent[path[-1]]
            continue
        parent[path[-1]] = draw(swapped(parent[path[-1]]) | deep | json_values)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))  # NaN and Infinity as JavaScript writes them
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: as an escape, or as invalid UTF-8


@pytest.mark.slow
@settings(fuzz_settings, max_examples=1500)
@given(raw=edited_events())
def test_retyped_and_blown_up_fields_are_decoded_or_clearly_rejected(raw: bytes) -> None:
    decoded(raw)


GOOD: dict[str, Any] = json.loads(real_events()[-1])


def with_(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}, ensure_ascii=False).encode()


def spliced(field: bytes, replacement: bytes) -> bytes:
    """GOOD with a field's JSON value replaced byte for byte (for what json.dumps cannot write)."""
    raw = with_(**{field.decode(): "@@"})
    return raw.replace(b'"@@"', replacement, 1)


IDENTIFIER = {"kind": "phone", "value": "89161234567"}
HOSTILE_MESSAGES: list[tuple[str, bytes | str, str]] = [
    ("100k nested arrays in attributes", spliced(b"attributes", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
     "too_large"),
    ("30k nested arrays within the size limit",
     spliced(b"attributes", b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"), "json_invalid"),
    ("8k nested objects in an unknown field", spliced(b"tenant", b'{"a": ' * 8_000 + b"1" + b"}" * 8_000),
     "json_invalid"),
    ("a 10 MB event id", with_(event_id="e" * 10_000_000), "too_large"),
    ("a 10 MB string of NULs", b"\x00" * 10_000_000, "too_large"),
    ("10,000 identifiers", with_(identifiers=[IDENTIFIER] * 10_000), "too_large"),
    ("12,000 empty identifiers within the size limit", with_(identifiers=[{}] * 12_000), "too_long"),
    ("a 60 KB attribute name", with_(attributes={"k" * 60_000: 1}), "string_too_long"),
    ("a 70 KB unknown field", with_(tenant="t" * 70_000), "too_large"),
    ("invalid UTF-8 in a value", spliced(b"source", b'"\xff\xfe"'), "json_invalid"),
    ("a truncated UTF-8 sequence", spliced(b"source", b'"\xd0"'), "json_invalid"),
    ("a UTF-8-encoded surrogate", spliced(b"source", b'"\xed\xa0\x80"'), "json_invalid"),
    ("overlong UTF-8", spliced(b"source", b'"\xc0\xaf"'), "json_invalid"),
    ("a lone leading surrogate escape", spliced(b"event_id", b'"\\ud800"'), "json_invalid"),
    ("a lone trailing surrogate escape in an attribute", spliced(b"attributes", b'{"a": "\\udc00"}'), "json_invalid"),
    ("a lone surrogate in a str", with_().decode().replace("full-1", "\ud800"), "json_invalid"),
    ("a byte-order mark", b"\xef\xbb\xbf" + with_(), "json_invalid"),
    ("NaN", spliced(b"attributes", b'{"a": NaN}'), "finite_number"),
    ("Infinity", spliced(b"attributes", b'{"a": Infinity}'), "finite_number"),
    ("-Infinity as an amount", with_(crm={**GOOD["crm"], "amount": "@@"}).replace(b'"@@"', b"-Infinity"),
     "finite_number"),
    ("1e400", spliced(b"attributes", b'{"a": 1e400}'), "finite_number"),
    ("a 5,000-digit integer", spliced(b"attributes", b'{"a": ' + b"9" * 5000 + b"}"), "json_invalid"),
    ("event_id as a number", with_(event_id=5), "string_type"),
    ("an identifier value as a number", with_(identifiers=[{"kind": "phone", "value": 89161234567}]), "string_type"),
    ("source as a boolean", with_(source=True), "string_type"),
    ("type as a number", with_(type=1), "enum"),
    ("occurred_at as Unix seconds", with_(occurred_at=1_700_000_000), "datetime_type"),
    ("occurred_at as Unix milliseconds", with_(occurred_at=1_700_000_000_000), "datetime_type"),
    ("occurred_at as a numeric string", with_(occurred_at="1700000000"), "datetime_type"),
    ("an amount as a numeric string", with_(crm={**GOOD["crm"], "amount": "5"}), "float_type"),
    ("schema_version as true", with_(schema_version=True), "literal_error"),
    ("schema_version as a string", with_(schema_version="1"), "literal_error"),
    ("an attribute as a list", with_(attributes={"tags": ["a"]}), "attribute_type"),
    ("an event id with a record separator", with_(event_id="a\x1eb"), "string_pattern_mismatch"),
    ("an identifier value over 256 characters", with_(identifiers=[{"kind": "phone", "value": "9" * 300}]),
     "string_too_long"),
    ("empty", b"", "json_invalid"),
    ("a NUL", b"\x00", "json_invalid"),
    ("a JSON string", b'"event"', "model_type"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "code"), [c[1:] for c in HOSTILE_MESSAGES], ids=[c[0] for c in HOSTILE_MESSAGES])
def test_hostile_messages_are_refused_with_the_right_code(raw: bytes | str, code: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidMessage) as caught:
        decode_touch(raw)
    assert time.perf_counter() - started < 1.0
    assert_clear_rejection(caught.value)
    assert code in {e.code for e in caught.value.errors}, caught.value.errors


def test_a_flood_of_bad_fields_is_summarized_not_echoed() -> None:
    """900 bad attributes under 60-character names, or under names of escaped NULs: a short answer all the same."""
    floods: list[dict[str, Any]] = [
        {"k" * 60 + str(i): [] for i in range(900)},
        {"\x00" * 1000 + str(i): [] for i in range(10)},
    ]
    for attributes in floods:
        raw = with_(attributes=attributes)
        assert len(raw) <= MAX_MESSAGE_BYTES
        with pytest.raises(InvalidMessage) as caught:
            decode_touch(raw)
        assert_clear_rejection(caught.value)
        assert re.search(r"\(\+\d+ more\)$", str(caught.value))  # it says how many it did not list


def test_duplicate_keys_take_the_last_value_as_every_mainstream_parser_does() -> None:
    """Deterministic and the same as the JSON Schema tooling's view (json.loads), so the DLQ and a replay agree."""
    first = b'{"event_id": "first", "source": 5, ' + with_()[1:]
    assert decoded(first) is not None
    assert decode_touch(first).event_id == GOOD["event_id"]
    last = with_()[:-1] + b', "event_id": 5}'
    assert decoded(last) is None
    assert ("event_id", "string_type") in [(e.field, e.code) for e in _rejection(last).errors]


def _rejection(raw: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        decode_touch(raw)
    return caught.value


# ============================================================================= the worker's processor

#: A kind an operator declared: normalized only by trimming and NFC, so hostile values are kept as they are.
CUSTOM_KIND = "loyalty_card"
NORMALIZER = Normalizer(NormalizerConfig(extra_kinds=frozenset({CUSTOM_KIND})))
DLQ = "touches.dlq"


def original_bytes(letter: DeadLetter) -> bytes:
    if letter.value_base64 is not None:
        return base64.b64decode(letter.value_base64, validate=True)
    assert letter.value_utf8 is not None
    return letter.value_utf8.encode()


#: Messages that are never a valid event, plus whatever random bytes and mutations bring.
BAD_MESSAGES: list[bytes | None] = [
    None,  # a Kafka tombstone
    b"\x00" * 60_000,
    b'"' * 60_000,
    b"\\" * 60_000,
    b"\xff" * 60_000,
    spliced(b"attributes", b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
    with_(identifiers=[IDENTIFIER] * 10_000),
    with_(attributes={"k" * 60 + str(i): [] for i in range(900)}),
    spliced(b"event_id", b'"\\ud800"'),
    spliced(b"attributes", b'{"a": NaN}'),
    with_(identifiers=[]),
    with_(event_id="]] redis.call('FLUSHALL') --[[\x1e"),
    with_(identifiers=[{"kind": "{idstream}:owner", "value": "1"}]),
    with_(identifiers=[{"kind": "phone", "value": "*3\r\n$3\r\nDEL\r\n" * 30}]),
    with_(type="identity_link", identifiers=[IDENTIFIER]),
]
bad_messages = (
    st.sampled_from(BAD_MESSAGES)
    | st.binary(max_size=300)
    | mutated_events()
    | st.text(ODD_CHARS, max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass"))
)
#: Hostile values go under kinds with no shared-identifier rules, and phones and e-mails, which refuse them.
HOSTILE_KINDS = ["crm_contact_id", CUSTOM_KIND, "phone", "email"]


@dataclass
class Planned:
    """A good event built for the batch: its own anchor identifier, and the hostile ones it carries."""

    event_id: str
    anchor: tuple[str, str]
    hostile: list[tuple[str, str]]


def _node_key(kind: str, value: str) -> tuple[str, str]:
    normalized = NORMALIZER.normalize(kind, value)
    return (kind, normalized.value) if isinstance(normalized, Identifier) else (kind, value)


def _draw_batch(data: st.DataObject) -> tuple[list[bytes | None], dict[int, Planned]]:
    messages: list[bytes | None] = []
    planned: dict[int, Planned] = {}
    used: set[tuple[str, str]] = set()
    for i in range(data.draw(st.integers(1, 10), label="size")):
        if not data.draw(st.booleans(), label="good"):
            messages.append(data.draw(bad_messages, label="bad"))
            continue
        event = json.loads(data.draw(st.sampled_from(real_events()), label="base"))
        pairs = data.draw(st.lists(st.tuples(st.sampled_from(HOSTILE_KINDS), hostile_text), max_size=3,
                                   unique_by=lambda p: p[0]), label="hostile")  # fmt: skip
        hostile = []
        for kind, value in pairs:  # each value in one event only: no merges, so the oracle stays exact
            if _node_key(kind, value) not in used:
                used.add(_node_key(kind, value))
                hostile.append((kind, value[:256]))
        anchor = ("ga_client_id", f"{i + 1}.{1_700_000_000 + i}")
        event["event_id"] = f"good-{i}"
        event["identifiers"] = [{"kind": k, "value": v} for k, v in [anchor, *hostile]]
        planned[i] = Planned(event["event_id"], anchor, hostile)
        messages.append(json.dumps(event, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode())
    return messages, planned


def _check_batch(store: RedisIdentityStore, messages: list[bytes | None], planned: dict[int, Planned]) -> None:
    inbound = [Inbound(value, "touches.site", 3, 1000 + i) for i, value in enumerate(messages)]
    out = Processor(store).process(inbound)  # never raises for bad input

    good: dict[int, TouchEvent] = {}
    for i, message in enumerate(messages):
        try:
            event = decode_touch(message or b"")
        except InvalidMessage:
            continue
        if event.type in APPLIED_TYPES:
            good[i] = event
    assert set(planned) <= set(good)  # the events built to be good are good

    # every bad message: exactly one dead letter, in order, with its bytes and a short reason
    letters = [(o, DeadLetter.model_validate_json(o.value or b"")) for o in out if o.topic == DLQ]
    assert [d.offset - 1000 for _, d in letters] == [i for i in range(len(messages)) if i not in good]
    for o, d in letters:
        raw = messages[d.offset - 1000] or b""
        assert (d.topic, d.partition) == ("touches.site", 3)
        assert original_bytes(d) == raw
        assert d.error["code"] in ("invalid_message", "unsupported_event")
        assert 0 < len(d.error["message"]) < MAX_MESSAGE_CHARS
        # a dead letter fits where its message fit, give or take base64: no 6x blow-up from JSON escapes
        size, bound = len(o.value or b""), len(raw) * 4 // 3 + 16_384
        assert size <= bound, f"a {len(raw)}-byte message became a {size}-byte dead letter"

    # every good message: applied, its hostile identifiers kept as data or reported as rejected
    updates = [ProfileUpdate.model_validate_json(o.value) for o in out if o.topic == "profiles.updates" and o.value]
    updated = {e for u in updates for e in u.event_ids}
    changes = [IdentityChange.model_validate_json(o.value or b"") for o in out if o.topic == "identity.changes"]
    rejected = {c.event_id: c.rejected for c in changes if c.type == "rejected_identifiers"}
    persons = store.persons()
    everything = {ident for held in persons.values() for ident in held}
    for i, plan in planned.items():
        assert plan.event_id in updated
        refused = NORMALIZER.normalize_many(good[i].to_touch().identifiers)[1]
        assert rejected.get(plan.event_id, []) == [r.to_dict() for r in refused]
        pid = store.lookup_raw(*plan.anchor)
        assert pid is not None
        for kind, value in plan.hostile:
            normalized = NORMALIZER.normalize(kind, value)
            if isinstance(normalized, Rejection):
                assert Identifier(kind, value) not in everything
                continue
            assert store.lookup(normalized) == pid  # found under its normalized value, with its event's person
            assert normalized in persons[pid]
            if kind in ("crm_contact_id", CUSTOM_KIND):  # kept as it came: only trimmed and NFC-composed
                assert normalized.value == unicodedata.normalize("NFC", value).strip()


@pytest.mark.slow
def test_the_worker_dead_letters_every_bad_message_and_applies_every_good_one(redis_client: redis.Redis) -> None:
    sentinel = f"fuzz-sentinel-{uuid.uuid4().hex}"
    redis_client.set(sentinel, b"a FLUSHALL would take me")
    before = set(redis_client.scan_iter(count=1000))

    @settings(fuzz_settings, max_examples=200)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        store = RedisIdentityStore(redis_client, normalizer=NORMALIZER, prefix=f"fuzz-{uuid.uuid4().hex[:12]}")
        try:
            messages, planned = _draw_batch(data)
            _check_batch(store, messages, planned)
            # no key is named after a value: the graph is the fixed set of hashes under its prefix
            allowed = {f"{{{store.prefix}}}:{name}".encode() for name in (*KEY_NAMES, "fired")}
            allowed |= {key.encode() for key in store._seen_keys()}  # applied ids, one hash per day
            created = set(redis_client.scan_iter(count=1000)) - before
            assert created <= allowed, created - allowed
        finally:
            store.clear()

    try:
        fuzz()
        assert redis_client.get(sentinel) == b"a FLUSHALL would take me"
        assert set(redis_client.scan_iter(count=1000)) == before
    finally:
        redis_client.delete(sentinel)


# ============================================================================= the lookup API

TOKEN = "fuzz-token-0123456789abcdef"  # noqa: S105 - a test token
BAD_BODIES: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("100k nested arrays", b"[" * 100_000 + b"]" * 100_000, {}, 400, "invalid"),
    ("100k nested objects in a value",
     b'{"identifiers": [{"kind": "phone", "value": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}]}", {}, 400,
     "invalid"),
    ("a body over 1 MiB", b'{"identifiers": [{"kind": "phone", "value": "' + b"9" * (1 << 20) + b'"}]}', {}, 413,
     "large"),
    ("10,000 identifiers", json.dumps({"identifiers": [IDENTIFIER] * 10_000}).encode(), {}, 400, "1000"),
    ("invalid UTF-8", b'{"identifiers": [{"kind": "phone", "value": "\xff\xfe"}]}', {}, 400, "invalid"),
    ("a lone surrogate escape", b'{"identifiers": [{"kind": "phone", "value": "\\ud800"}]}', {}, 400, "invalid"),
    ("a 900 KB unknown key", json.dumps({"identifiers": [{**IDENTIFIER, "k" * 900_000: 1}]}).encode(), {}, 400,
     "extra"),
    ("a 900 KB unknown top-level key", json.dumps({"identifiers": [IDENTIFIER], "k" * 900_000: 1}).encode(), {}, 400,
     "extra"),
    ("a gzip bomb", gzip.compress(b" " * 50_000_000), {"Content-Encoding": "gzip"}, 413, "large"),
    ("a body that is not the gzip it claims", b'{"identifiers": []}', {"Content-Encoding": "gzip"}, 400, "body"),
    ("a body that is not the deflate it claims", b"\x00\x01", {"Content-Encoding": "deflate"}, 400, "body"),
    ("an empty body", b"", {}, 400, "invalid"),
    ("a value of the wrong type", b'{"identifiers": [{"kind": "phone", "value": 79161234567}]}', {}, 400, "string"),
    ("a kind of the wrong type", b'{"identifiers": [{"kind": ["phone"], "value": "1"}]}', {}, 400, "string"),
    ("identifiers as an object", b'{"identifiers": {"kind": "phone", "value": "1"}}', {}, 400, "array"),
    ("NaN", b'{"identifiers": [{"kind": "phone", "value": NaN}]}', {}, 400, "string"),
]  # fmt: skip


@pytest.fixture
def api_store(redis_client: redis.Redis) -> Iterator[RedisIdentityStore]:
    """Ivan and Maria (tests/test_store_contract.py), a switchboard two people share, and a person whose
    identifiers look like Lua and Redis keys."""
    store = RedisIdentityStore(redis_client, normalizer=NORMALIZER, prefix=f"fuzzapi-{uuid.uuid4().hex[:10]}")
    office = ("phone", "8 (495) 123-45-67")
    store.apply_batch(story())
    store.apply_batch(
        [
            touch("sb1", 400, ("crm_contact_id", "anna"), office, ("email", "anna@romashka.ru"), type="crm_stage",
                  source="amocrm", crm=CrmInfo("d-anna", "new")),
            touch("sb2", 405, ("crm_contact_id", "boris"), office, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-boris", "meeting")),
            touch("h1", 500, ("crm_contact_id", "]] redis.call('FLUSHALL') --[["), (CUSTOM_KIND, "{idstream}:owner"),
                  (CUSTOM_KIND, "*3 $3 DEL \u200f\u202eevil"), type="form_submit", attributes={"name": "'); --"}),
        ]
    )  # fmt: skip
    yield store
    store.clear()


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class LiveApi:
    """The lookup API on aiohttp's TestServer, on an event loop of its own thread, for a whole fuzz run.

    Hypothesis drives the examples synchronously and every example talks to the same server, so "the
    service stays up" holds across the run, not just per request.
    """

    def __init__(self, redis_url: str, store: RedisIdentityStore, tokens: tuple[bytes, ...] = ()) -> None:
        self.store = store
        self.config = ApiConfig(redis_url, store.policy, store.normalizer, store.prefix, tokens)
        self.headers = {"Authorization": f"Bearer {tokens[0].decode()}"} if tokens else {}
        self.app = create_lookup_app(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-api", daemon=True)

    def __enter__(self) -> LiveApi:
        self.thread.start()

        async def start() -> TestClient[Any, Any]:
            client: TestClient[Any, Any] = TestClient(TestServer(self.app))
            await client.start_server()
            return client

        self.client = self.call(start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        with_token: bool = True,
    ) -> Answer:
        """One request through aiohttp's client: a dropped connection raises, and fails the test."""

        async def go() -> Answer:
            sent = {**(self.headers if with_token else {}), **(headers or {})}
            if data is not None:  # a body is JSON unless the test says otherwise (anything else: 415)
                sent.setdefault("Content-Type", "application/json")
            async with self.client.request(method, path, params=params, data=data, headers=sent) as response:
                return Answer(response.status, response.content_type, await response.read())

        return self.call(go())

    def raw(self, request: bytes) -> bytes:
        """Bytes on a fresh TCP connection (``Connection: close``), and everything the server answers."""

        async def go() -> bytes:
            reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
            try:
                writer.write(request)
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 30)
            finally:
                writer.close()

        return self.call(go())


def expected_result(store: RedisIdentityStore, kind: str, value: str) -> tuple[str, str | None]:
    """What a lookup must answer, read from the store with the worker's own code: (status, profile id)."""
    normalized = store.normalizer.normalize(kind, value) if len(value) <= MAX_VALUE else None
    if not isinstance(normalized, Identifier):
        return "invalid", None
    found = store.read_identifier(normalized)
    if found is None:
        return "not_found", None
    return ("ambiguous", None) if found.ambiguous else ("found", found.profile_id)


def check_result(store: RedisIdentityStore, result: LookupResult, kind: str, value: str) -> None:
    assert (result.kind, result.value) == (kind, value)  # the caller's text came back as it was sent
    assert (result.status, result.profile_id) == expected_result(store, kind, value)
    if result.status == "invalid":
        assert result.error is not None
        assert CODE.fullmatch(result.error.code)
        assert result.error.message


def checked_json(answer: Answer) -> Any:
    """Every answer: a 2xx or 4xx, JSON, and an error body that says what is wrong in a few words."""
    assert answer.status < 500, answer.body[:500]
    assert answer.content_type == "application/json", (answer.status, answer.body[:300])
    body = orjson.loads(answer.body)
    if answer.status >= 400 and body.get("status") == "error":
        error = ErrorResponse.model_validate(body)
        assert CODE.fullmatch(error.code), error.code
        assert 0 < len(error.message) < MAX_MESSAGE_CHARS, error.message[:300]
    return body


def assert_still_serving(api: LiveApi, store: RedisIdentityStore, keys_before: set[bytes]) -> None:
    """After the run: a good lookup answers correctly, no request wrote anything, no metric label holds input."""
    assert api.request("GET", "/healthz").status == 200
    metrics = api.request("GET", "/metrics", with_token=False)
    assert metrics.status == 200
    routes = {route.resource.canonical for route in api.app.router.routes() if route.resource}
    labels = set(re.findall(r'endpoint="([^"]*)"', metrics.body.decode()))
    assert labels <= {*routes, "other"}, labels - routes
    answer = api.request("GET", "/v1/lookup", params={"kind": "phone", "value": "8 (916) 123-45-67"})
    result = LookupResult.model_validate(checked_json(answer))
    assert (answer.status, result.status) == (200, "found")
    assert result.profile_id == store.lookup_raw("phone", "+79161234567")
    assert result.profile is not None
    assert result.profile["display_name"] == "Иван Петров"
    assert set(store.client.scan_iter(count=1000)) == keys_before


@st.composite
def query_params(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, str]:
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    params = {name: draw(hostile_text | st.sampled_from(["phone", "email", "card", "full", "crm_contact_id", ""]))
              for name in chosen}  # fmt: skip
    if draw(st.booleans()):
        params[draw(st.text(PLAIN_ODD_CHARS, min_size=1, max_size=10))] = draw(hostile_text)
    return params


KINDS = st.sampled_from(["phone", "email", "crm_contact_id", CUSTOM_KIND, "ga_client_id", "messenger_id"])
lookup_params = st.fixed_dictionaries(
    {"kind": KINDS | hostile_text, "value": hostile_text}, optional={"view": st.sampled_from(["card", "full"])}
)


def percent_encoded(raw: bytes) -> str:
    return "".join(f"%{b:02X}" for b in raw)


profile_ids = (
    st.text(PLAIN_ODD_CHARS, min_size=1, max_size=80).map(lambda s: quote(s, safe=""))
    | st.binary(min_size=1, max_size=80).map(percent_encoded)
    | st.sampled_from([quote(h[:64], safe="") for h in HOSTILE if h.strip()])
)


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
    """(endpoint, path, query, body): hostile queries, profile ids and batch bodies."""
    endpoint = draw(st.sampled_from(["lookup", "explain", "profile", "batch", "other"]))
    if endpoint == "lookup":
        return endpoint, "/v1/lookup", draw(lookup_params | query_params(("kind", "value", "view"))), None
    if endpoint == "explain":
        names = ("profile_id", "kind", "value", "other_kind", "other_value")
        return endpoint, "/v1/explain", draw(query_params(names)), None
    if endpoint == "profile":
        return endpoint, f"/v1/profiles/{draw(profile_ids)}", draw(query_params(("view",))), None
    if endpoint == "batch":
        return endpoint, "/v1/lookup/batch", draw(query_params(("view",))), draw(batch_bodies())
    path = "/" + "/".join(draw(st.lists(st.sampled_from(["v1", "v2", "lookup", "..", "%00", "%FF", "batch"]))))
    return endpoint, path, {}, None


@st.composite
def batch_bodies(draw: st.DrawFn) -> bytes:
    items = st.lists(
        st.fixed_dictionaries({"kind": KINDS | hostile_text, "value": hostile_text}), min_size=1, max_size=30
    )
    choice = draw(st.integers(-1, 4))
    if choice <= 0:  # well-formed: every item answered in order
        return json.dumps({"identifiers": draw(items)}, ensure_ascii=draw(st.booleans())).encode()
    if choice == 1:
        return draw(st.binary(max_size=2048))
    if choice == 2:
        return json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    if choice == 3:
        body = {"identifiers": [{**item, **draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))}
                                for item in draw(items)]}  # fmt: skip
        return json.dumps(body).encode()
    good = bytearray(json.dumps({"identifiers": draw(items)}).encode())
    at = draw(st.integers(0, len(good)))
    good[at:at] = draw(st.sampled_from(TOKENS))
    return bytes(good)


def refused_by_the_parser(answer: Answer) -> bool:
    """aiohttp's HTTP parser refuses a request line over 8,190 bytes before any handler runs, in plain text:
    still a clear 400 that names the limit, and the server goes on (checked after the run)."""
    if not (answer.status == 400 and answer.body.startswith(b"Got more than 8190 bytes when reading")):
        return False
    assert answer.content_type == "text/plain"
    return True


def check_api_answer(api: LiveApi, request: tuple[str, str, dict[str, str], bytes | None]) -> None:
    endpoint, path, params, body = request
    method = "POST" if endpoint == "batch" else "GET"
    answer = api.request(method, path, params=params, data=body)
    if refused_by_the_parser(answer):
        return
    payload = checked_json(answer)
    store = api.store
    if endpoint == "lookup" and payload.get("status") != "error":
        assert answer.status == {"found": 200, "ambiguous": 200, "not_found": 404, "invalid": 400}[payload["status"]]
        check_result(store, LookupResult.model_validate(payload), params["kind"], params["value"])
    elif endpoint == "batch" and answer.status == 200:
        asked = json.loads(body or b"")["identifiers"]
        results = BatchLookupResponse.model_validate(payload).results
        assert len(results) == len(asked)
        for result, item in zip(results, asked, strict=True):
            check_result(store, result, item["kind"], item["value"])
    elif endpoint == "profile" and answer.status == 200:
        ProfileResponse.model_validate(payload)
    elif endpoint == "explain" and answer.status == 200:
        Explanation.model_validate(payload)
    elif answer.status == 200:
        pytest.fail(f"{path} answered 200 to {params}")


#: Three 600-letter Cyrillic parameters: an 11 KB request line, which aiohttp's parser refuses before the app.
LONG_REQUEST_LINE = ("explain", "/v1/explain", {"profile_id": "ы" * 600, "kind": "ы" * 600, "value": "ы" * 600}, None)


@pytest.mark.slow
def test_hostile_requests_get_json_4xx_and_the_server_stays_up(api_store: RedisIdentityStore, redis_url: str) -> None:
    keys_before = set(api_store.client.scan_iter(count=1000))
    with LiveApi(redis_url, api_store) as api:

        @settings(fuzz_settings, max_examples=800)
        @given(request=api_requests())
        @example(request=LONG_REQUEST_LINE)
        def fuzz(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
            check_api_answer(api, request)

        fuzz()
        # values that look like Lua, Redis keys and RESP are data: looked up, normalized, found
        hostile = api_store.lookup_raw("crm_contact_id", "]] redis.call('FLUSHALL') --[[")
        assert hostile is not None
        asked = [("crm_contact_id", "]] redis.call('FLUSHALL') --[["), (CUSTOM_KIND, " {idstream}:owner "),
                 (CUSTOM_KIND, "*3 $3 DEL \u200f\u202eevil")]  # fmt: skip
        for kind, value in asked:
            answer = api.request("GET", "/v1/lookup", params={"kind": kind, "value": value, "view": "full"})
            result = LookupResult.model_validate(checked_json(answer))
            assert (result.status, result.profile_id) == ("found", hostile)
            assert result.profile is not None
            assert result.profile["identifiers"][CUSTOM_KIND] == ["*3 $3 DEL \u200f\u202eevil", "{idstream}:owner"]
        assert_still_serving(api, api_store, keys_before)


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_extreme_batch_bodies_get_a_4xx_that_says_what_is_wrong(
    api_store: RedisIdentityStore, redis_url: str, body: bytes, headers: dict[str, str], *, status: int, needle: str
) -> None:
    keys_before = set(api_store.client.scan_iter(count=1000))
    with LiveApi(redis_url, api_store) as api:
        started = time.perf_counter()
        answer = api.request("POST", "/v1/lookup/batch", data=body, headers=headers)
        assert time.perf_counter() - started < 10
        assert answer.status == status, answer.body[:300]
        if "Content-Encoding" in headers and answer.content_type == "text/plain":
            assert answer.body  # a short body can fail to decode inside aiohttp's parser: its own plain 400
        else:
            error = ErrorResponse.model_validate(checked_json(answer))
            assert needle in error.message.lower()
        assert_still_serving(api, api_store, keys_before)


BATCH = b'{"identifiers": [{"kind": "phone", "value": "1"}]}'
CHUNKED_2MB = b"".join(b"%x\r\n%s\r\n" % (len(BATCH), BATCH) for _ in range(40_000)) + b"0\r\n\r\n"


NOT_GZIP = b"Content-Encoding: gzip\r\nContent-Length: 19"


@pytest.mark.parametrize(
    ("request_line", "request_head", "body", "status"),
    [
        (b"POST /v1/lookup/batch", NOT_GZIP, b'{"identifiers": []}', 400),
        (b"POST /v1/lookup/batch", b"Transfer-Encoding: chunked", CHUNKED_2MB, 413),
        (b"GET /v1/lookup?kind=phone&value=1", NOT_GZIP, b'{"identifiers": []}', 400),
        (b"GET /healthz", NOT_GZIP, b'{"identifiers": []}', 200),
        (b"GET /v1/profiles/p_1", NOT_GZIP, b'{"identifiers": []}', 404),
    ],
    ids=["a batch not the gzip it claims", "a batch of 2 MB in chunks", "a lookup with a broken gzip body",
         "a probe with a broken gzip body", "a profile with a broken gzip body"],
)  # fmt: skip
def test_a_body_leaves_the_connection_usable_or_the_answer_says_it_is_closing(
    api_store: RedisIdentityStore, redis_url: str, request_line: bytes, request_head: bytes, *, body: bytes, status: int
) -> None:
    """On a kept-alive connection the answer arrives whole, and then either ``Connection: close`` or the
    connection still answers: aiohttp's pooled clients reuse it, and a silent close fails their next request.
    A handler that never reads a body (a GET's) must not leave the connection to a body that cannot be read."""
    request = request_line + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + request_head
    request += b"\r\n\r\n" + body
    with LiveApi(redis_url, api_store) as api:
        head, after = api.call(_kept_alive(api, request))
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"connection: close" in head.lower() or after.startswith(b"HTTP/1.1 200 "), (head, after)


def test_a_good_request_keeps_its_connection(api_store: RedisIdentityStore, redis_url: str) -> None:
    """The other side of the above: a batch read whole, or a GET without a body, does not cost a reconnect."""
    batch = b"POST /v1/lookup/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    batch += b"Content-Length: %d\r\n\r\n%s" % (len(BATCH), BATCH)
    lookup = b"GET /v1/lookup?kind=phone&value=89161234567 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with LiveApi(redis_url, api_store) as api:
        for request in (batch, lookup):
            head, after = api.call(_kept_alive(api, request))
            assert b"connection: close" not in head.lower(), head
            assert after.startswith(b"HTTP/1.1 200 "), after


async def _kept_alive(api: LiveApi, request: bytes) -> tuple[bytes, bytes]:
    """Send a request on a kept-alive connection, read its JSON answer whole, then ``/healthz`` on the same
    connection unless the answer said ``Connection: close``: (the answer's head, the second answer's head)."""
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)
        assert length, head
        orjson.loads(await reader.readexactly(int(length.group(1))))  # JSON, whole
        if b"connection: close" in head.lower():
            return head, b""
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # kept alive: it must answer
        return head, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


def _http(method: bytes, target: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    if (body or method == b"POST") and not any(h.lower().startswith(b"transfer-encoding:") for h in headers):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _status(answer: bytes) -> tuple[int, bytes, bytes]:
    """(status, the header block, the body) of a raw HTTP answer."""
    match = re.match(rb"HTTP/(?:1\.[01]|0\.9) (\d{3}) ", answer)
    assert match, answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(match.group(1)), head, body


RAW_TARGETS = [b"/v1/lookup?kind=crm_contact_id&value=", b"/v1/profiles/", b"/v1/explain?profile_id=",
               b"/v1/lookup/batch", b"/healthz", b""]  # fmt: skip
no_crlf = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Well-framed HTTP/1.1 with arbitrary bytes where a client puts text: the method, the target, the token."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]) | no_crlf)
    target = draw(st.sampled_from(RAW_TARGETS)) + draw(no_crlf.map(lambda b: b.replace(b" ", b"")))
    headers = []
    if draw(st.booleans()):
        headers.append(b"Authorization: " + draw(no_crlf | st.sampled_from([b"Bearer ", b"Bearer \xff\xfe"])))
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(no_crlf))
    body = draw(st.binary(max_size=200) | batch_bodies()) if method == b"POST" else b""
    return _http(method, target, headers, body)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [(), (TOKEN.encode(),)], ids=["open", "with-tokens"])
def test_raw_hostile_http_is_answered_and_the_server_stays_up(
    api_store: RedisIdentityStore, redis_url: str, tokens: tuple[bytes, ...]
) -> None:
    """Bytes the HTTP parser refuses (a NUL in the method, 0xFF in the path) get its plain 400; all else is JSON."""
    keys_before = set(api_store.client.scan_iter(count=1000))
    with LiveApi(redis_url, api_store, tokens) as api:

        @settings(fuzz_settings, max_examples=300)
        @given(request=raw_requests())
        def fuzz(request: bytes) -> None:
            check_raw(api, request)

        fuzz()
        for request in RAW_EXTREMES:
            check_raw(api, request)
        assert_still_serving(api, api_store, keys_before)


def check_raw(api: LiveApi, request: bytes) -> None:
    status, head, body = _status(api.raw(request))
    assert status < 500, (request[:200], head, body[:300])
    if b"application/json" in head.lower():
        checked_json(Answer(status, "application/json", body))
    else:  # refused by aiohttp's parser before the application saw it: a 400 that names the problem
        assert status == 400, (request[:200], head, body[:300])
        assert body


ONE_CHUNK = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BATCH), BATCH)
#: Framing attacks: broken chunks, a length beside chunking (request smuggling), absurd lengths, HTTP/0.9.
RAW_EXTREMES = [
    _http(b"POST", b"/v1/lookup/batch", [b"Transfer-Encoding: chunked"], b"ZZ\r\n{}\r\n0\r\n\r\n"),
    _http(b"POST", b"/v1/lookup/batch", [b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"0\r\n\r\n"),
    _http(b"POST", b"/v1/lookup/batch", [b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"),
    _http(b"POST", b"/v1/lookup/batch", [b"Content-Length: 99999999999999999999999"]),
    _http(b"POST", b"/v1/lookup/batch", [b"Content-Length: 5", b"Content-Length: 7"], b"12345"),
    _http(b"POST", b"/v1/lookup/batch", [b"Transfer-Encoding: chunked"], ONE_CHUNK),
    _http(b"GET", b"/v1/lookup?" + b"&".join(b"kind=phone" for _ in range(700)) + b"&value=1", []),
    _http(b"GET", b"/v1/lookup?kind=phone&value=" + b"9" * 9000, []),
    _http(b"GET", b"/healthz", [b"X-%d: %s" % (i, b"a" * 100) for i in range(200)]),
    _http(b"GET", b"/v1/profiles/" + b"%" * 50, []),
    _http(b"GET", b"/v1/profiles/%C0%AF..%C0%AF..%2F", []),
    b"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    b"GET /healthz\r\n\r\n",
]  # fmt: skip


#: Authorization headers: none, arbitrary text, and near misses of the token (raw bytes: see the raw HTTP test).
authorization_headers = (
    st.none()
    | st.text(st.characters(categories=["Cf", "Zs", "L", "N", "P", "S"]), max_size=60)
    | st.sampled_from(
        [
            f"Bearer {TOKEN[:-1]}",
            f"Bearer {TOKEN}x",
            f"Bearer {TOKEN.upper()}",
            f"Basic {TOKEN}",
            f"Token {TOKEN}",
            f"Bearer{TOKEN}",
            f"Bearer {base64.b64encode(TOKEN.encode()).decode()}",
            f"Bearer {TOKEN[:8]} {TOKEN[8:]}",
            f"Bearer {TOKEN}\u200b",
            "Bearer ",
            "Bearer",
        ]
    )
).map(lambda header: {} if header is None else {"Authorization": header})


@pytest.mark.slow
def test_with_tokens_every_v1_request_without_the_right_token_is_401(
    api_store: RedisIdentityStore, redis_url: str
) -> None:
    keys_before = set(api_store.client.scan_iter(count=1000))
    with LiveApi(redis_url, api_store, (TOKEN.encode(),)) as api:

        @settings(fuzz_settings, max_examples=400)
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            endpoint, path, params, body = data.draw(api_requests())
            headers: dict[str, str] = data.draw(authorization_headers)
            method = "POST" if endpoint == "batch" else "GET"
            answer = api.request(method, path, params=params, data=body, headers=headers, with_token=False)
            if refused_by_the_parser(answer):
                return
            assert answer.status == 401, (path, headers, answer.body[:200])  # whatever else is wrong
            assert checked_json(answer)["code"] == "unauthorized"

        fuzz()
        near = (
            b"Bearer \xff\xfe",
            b"Bearer " + TOKEN.encode() + b"\xff",
            b"\xc3\x28 " + TOKEN.encode(),
            b"Bearer\t" + TOKEN.encode(),
            b"Bearer \x00" + TOKEN.encode(),
            b"Bearer " + TOKEN.encode() + b"\x00",
        )
        for header in near:  # bytes aiohttp's client refuses to send
            status, head, body = _status(
                api.raw(_http(b"GET", b"/v1/lookup?kind=phone&value=1", [b"Authorization: " + header]))
            )
            parser_refused = status == 400 and b"application/json" not in head  # a NUL in a header: not HTTP
            assert status == 401 or parser_refused, (header, body[:300])
        assert_still_serving(api, api_store, keys_before)


def test_api_fuzz_helpers_can_fail(api_store: RedisIdentityStore) -> None:
    """The oracles are not vacuous: a wrong status, a non-JSON body and a 5xx are caught."""
    found = LookupResult(status="not_found", kind="phone", value="8 (916) 123-45-67")
    with pytest.raises(AssertionError):
        check_result(api_store, found, "phone", "8 (916) 123-45-67")  # Ivan is there: found, not not_found
    with pytest.raises(AssertionError):
        checked_json(Answer(500, "application/json", b'{"status": "error", "code": "internal_error", "message": "x"}'))
    with pytest.raises(AssertionError):
        checked_json(Answer(400, "text/plain", b"Bad Request"))
    with pytest.raises(AssertionError):
        checked_json(
            Answer(400, "application/json", orjson.dumps({"status": "error", "code": "x", "message": "m" * 5000}))
        )
