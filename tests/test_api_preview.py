"""``POST /v1/preview``: what a batch of touch events would do, against a real redis-server and the real API.

Every answer is validated against the published model (``PreviewResponse``). Each preview is checked twice:
Redis holds byte for byte what it held before (a DUMP of every key, and the server's own count of writes
since start), and the same events, then really applied by the store, give exactly the outcomes the preview
announced (it is the engine's decision, not a second opinion).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from identity import ApplyResult, CrmInfo, Touch
from schemas.api import MAX_PREVIEW, ErrorResponse, LookupResult, PreviewResponse
from schemas.touch import TouchEvent
from streams.embedded import free_port, start_redis
from streams.lookup_api import ApiConfig, create_lookup_app
from streams.redis_store import RedisIdentityStore
from tests.conftest import serve_api, store_url, touch

TOKEN = "preview-token-for-tests-0123456789"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}

IVAN_PHONE = ("phone", "8 (916) 123-45-67")
IVAN_EMAIL = ("email", "ivan.petrov@yandex.ru")
LAPTOP = ("ga_client_id", "GA1.2.222.1700000100")
OFFICE = ("phone", "8 (495) 123-45-67")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server: every key in it is this module's, so "nothing changed" means every key."""
    with start_redis(tmp_path_factory.mktemp("redis")) as started:
        yield started.url


@pytest.fixture
def store(server: str) -> Iterator[RedisIdentityStore]:
    """Ivan (a form: phone and e-mail), his laptop (a visit), and Anna at the office (a CRM contact)."""
    client = redis.Redis.from_url(server)
    client.flushdb()
    store = RedisIdentityStore(client, prefix=f"preview-{uuid.uuid4().hex[:8]}")
    store.apply_batch(
        [
            touch("f1", 0, IVAN_PHONE, IVAN_EMAIL, type="form_submit", attributes={"name": "Иван"}),
            touch("v1", 10, LAPTOP, attributes={"project": "Северный"}),
            touch("a1", 20, ("crm_contact_id", "anna"), OFFICE, type="crm_stage", source="amocrm",
                  attributes={"name": "Анна"}, crm=CrmInfo("d-anna", "new")),
        ]
    )  # fmt: skip
    yield store
    client.flushdb()
    client.close()


Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


def run(store: RedisIdentityStore, scenario: Scenario, tokens: tuple[bytes, ...] = (TOKEN.encode(),)) -> None:
    serve_api(ApiConfig(store_url(store), store.policy, store.normalizer, store.prefix, tokens), scenario)


def wire(t: Touch) -> dict[str, Any]:
    """A touch in the wire format, as a producer sends it."""
    return TouchEvent.from_touch(t).model_dump(mode="json", exclude_none=True)


def everything(client: redis.Redis) -> tuple[dict[bytes, bytes | None], int]:
    """Every key of the server with its DUMP, and the server's count of writes since it started (no RDB
    snapshots are taken by this server, so the count never resets)."""
    dumped = {key: client.dump(key) for key in client.scan_iter(count=1000)}
    return dumped, int(client.info("persistence")["rdb_changes_since_last_save"])


async def preview(client: TestClient[Any, Any], events: list[dict[str, Any]]) -> PreviewResponse:
    response = await client.post("/v1/preview", json=events, headers=AUTH)
    assert response.status == 200, await response.text()
    answer = PreviewResponse.model_validate(await response.json())
    assert answer.dry_run is True
    assert [e.index for e in answer.events] == list(range(len(events)))
    return answer


def outcome(result: ApplyResult) -> dict[str, Any]:
    """An engine outcome in the preview's terms (to compare the preview with what a real apply did)."""
    return {
        "event_id": result.event_id,
        "status": result.status,
        "profile_id": result.profile_id,
        "changes": [(c.kind, c.profile_id, list(c.merged_from), list(c.split_from)) for c in result.changes],
        "conflicts": [
            (c.reason, c.kind, c.profile_id, c.other_profile_id, c.identifier.kind, c.identifier.value)
            for c in result.conflicts
        ],
        "shared": [(i.kind, i.value) for i in result.shared],
        "reused_by": result.reused_by,
    }


def previewed(answer: PreviewResponse) -> list[dict[str, Any]]:
    return [
        {
            "event_id": e.event_id,
            "status": e.status,
            "profile_id": e.profile_id,
            "changes": [(c.kind, c.profile_id, c.merged_from, c.split_from) for c in e.changes],
            "conflicts": [
                (c.reason, c.kind, c.profile_id, c.other_profile_id, c.identifier.kind, c.identifier.value)
                for c in e.conflicts
            ],
            "shared": [(i.kind, i.value) for i in e.shared],
            "reused_by": e.reused_by,
        }
        for e in answer.events
        if e.status != "invalid"
    ]


async def lookups(client: TestClient[Any, Any], *identifiers: tuple[str, str]) -> list[Any]:
    identifiers_json = [{"kind": k, "value": v} for k, v in identifiers]
    response = await client.post("/v1/lookup/batch", json={"identifiers": identifiers_json}, headers=AUTH)
    assert response.status == 200
    return [(r["status"], r.get("profile_id"), r.get("profile")) for r in (await response.json())["results"]]


# ----------------------------------------------------------------------------- what it answers, writing nothing


def test_a_merge_of_two_persons_is_announced_and_nothing_is_written(store: RedisIdentityStore) -> None:
    ivan, laptop = store.lookup_raw(*IVAN_PHONE), store.lookup_raw(*LAPTOP)
    assert ivan is not None
    assert laptop is not None
    assert ivan != laptop
    joining = touch("f2", 30, ("ga_client_id", "222.1700000100"), ("phone", "+7 916 123 45 67"), type="form_submit")
    before = everything(store.client)
    asked = (IVAN_PHONE, IVAN_EMAIL, LAPTOP, OFFICE)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        seen["lookups"] = await lookups(client, *asked)
        answer = await preview(client, [wire(joining)])
        (event,) = answer.events
        assert (event.event_id, event.status, event.profile_id) == ("f2", "applied", ivan)
        (change,) = event.changes
        # the older person survives (neither holds a CRM id): the laptop's id would be retired into Ivan's
        assert (change.kind, change.profile_id, change.merged_from, change.split_from) == ("merged", ivan, [laptop], [])
        assert event.conflicts == []
        assert event.shared == []
        assert event.error is None
        assert answer.summary.persons_merged == 1
        assert (answer.summary.persons_created, answer.summary.splits, answer.summary.conflicts) == (0, 0, 0)
        assert answer.summary.applied == answer.summary.events == 1
        seen["preview"] = answer
        # nothing was written: the same keys and bytes, no write counted, and lookups answer as before
        assert everything(store.client) == before
        assert await lookups(client, *asked) == seen["lookups"]

    run(store, scenario)
    assert everything(store.client) == before
    assert store.lookup_raw(*LAPTOP) == laptop
    # what the preview announced is what the engine then does
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([joining])]
    assert store.lookup_raw(*LAPTOP) == ivan
    assert everything(store.client) != before  # the probe sees a real apply


def test_a_new_person_is_created_in_the_answer_only(store: RedisIdentityStore) -> None:
    maria = touch("m1", 40, ("phone", "8 (903) 765-43-21"), ("email", "maria@mail.ru"), ("email", "test@test.ru"),
                  type="call")  # fmt: skip
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(maria)])
        (event,) = answer.events
        assert event.status == "applied"
        assert event.profile_id is not None
        assert [(c.kind, c.profile_id) for c in event.changes] == [("created", event.profile_id)]
        assert [(r.kind, r.value, r.reason) for r in event.rejected] == [
            ("email", "test@test.ru", "placeholder_mailbox")
        ]
        assert answer.summary.persons_created == 1
        seen["preview"] = answer
        for kind, value in (("phone", "+79037654321"), ("email", "maria@mail.ru")):
            response = await client.get("/v1/lookup", params={"kind": kind, "value": value}, headers=AUTH)
            assert response.status == 404
            assert LookupResult.model_validate(await response.json()).status == "not_found"
        response = await client.get(f"/v1/profiles/{event.profile_id}", headers=AUTH)
        assert response.status == 404

    run(store, scenario)
    assert everything(store.client) == before
    assert store.lookup_raw("phone", "+79037654321") is None
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([maria])]
    assert store.lookup_raw("phone", "+79037654321") == seen["preview"].events[0].profile_id


def test_a_refused_merge_is_a_conflict_and_the_office_phone_would_be_contested(store: RedisIdentityStore) -> None:
    """Boris (another CRM contact) calls from Anna's office phone: one CRM id per person keeps him apart."""
    anna = store.lookup_raw("crm_contact_id", "anna")
    boris = touch("b1", 50, ("crm_contact_id", "boris"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-boris", "new"))  # fmt: skip
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(boris)])
        (event,) = answer.events
        (conflict,) = event.conflicts
        assert (conflict.reason, conflict.kind, conflict.limit) == ("limit_exceeded", "crm_contact_id", 1)
        assert anna in (conflict.profile_id, conflict.other_profile_id)
        assert [(c.kind, c.profile_id) for c in event.changes] == [("created", event.profile_id)]
        assert event.profile_id != anna
        assert [(i.kind, i.value) for i in answer.contested] == [("phone", "+74951234567")]
        assert (answer.summary.conflicts, answer.summary.newly_contested) == (1, 1)
        seen["preview"] = answer
        # the phone still finds Anna alone now
        (found,) = await lookups(client, OFFICE)
        assert found[:2] == ("found", anna)

    run(store, scenario)
    assert everything(store.client) == before
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([boris])]
    match = store.match(store.normalizer.normalize(*OFFICE))  # type: ignore[arg-type]
    assert match is not None
    assert match.ambiguous  # contested, as announced


def test_a_third_person_at_one_phone_makes_it_shared(store: RedisIdentityStore) -> None:
    """Three CRM contacts seen with the office phone: more than two persons (K for phones), so it is shared."""
    store.apply_batch([touch("b1", 50, ("crm_contact_id", "boris"), OFFICE, type="crm_stage", source="amocrm",
                             crm=CrmInfo("d-boris", "new"))])  # fmt: skip
    carol = touch("c1", 60, ("crm_contact_id", "carol"), OFFICE, type="crm_stage", source="amocrm",
                  crm=CrmInfo("d-carol", "new"))  # fmt: skip
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(carol)])
        (event,) = answer.events
        assert [(i.kind, i.value) for i in event.shared] == [("phone", "+74951234567")]
        assert answer.summary.newly_shared == 1
        seen["preview"] = answer

    run(store, scenario)
    assert everything(store.client) == before
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([carol])]
    assert {i.value for i in store.shared()} == {"+74951234567"}


def test_events_apply_in_order_within_the_batch_and_an_erasure_is_previewed(store: RedisIdentityStore) -> None:
    """A batch is resolved as the worker would resolve it: later events see the earlier ones."""
    batch = [
        touch("n1", 40, ("phone", "8 (903) 765-43-21"), type="call"),  # a new person ...
        touch("n2", 41, ("phone", "+7 903 765 43 21"), IVAN_EMAIL, type="form_submit"),  # ... merged into Ivan
        touch("x1", 42, ("crm_contact_id", "anna"), type="erase_request", source="amocrm"),  # Anna erased
        touch("o1", 5, ("ym_client_id", "1700000000999"), LAPTOP),  # late: older than the laptop's visit
    ]
    ivan = store.lookup_raw(*IVAN_PHONE)
    anna = store.lookup_raw("crm_contact_id", "anna")
    laptop = store.lookup_raw(*LAPTOP)
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(t) for t in batch])
        created, merged, erased, late = answer.events
        assert [c.kind for c in created.changes] == ["created"]
        assert [(c.kind, c.profile_id, c.merged_from) for c in merged.changes] == [
            ("merged", ivan, [created.profile_id])
        ]
        assert [(c.kind, c.profile_id) for c in erased.changes] == [("erased", anna)]
        # the laptop's group is replayed in time order: the person now starts at the older event, whose id
        # survives, and the laptop's id is retired into it
        assert late.status == "reordered"
        assert [(c.kind, c.merged_from) for c in late.changes] == [("merged", [laptop])]
        assert late.profile_id not in (laptop, ivan)
        s = answer.summary
        assert (s.persons_created, s.persons_merged, s.persons_erased, s.reordered) == (1, 2, 1, 1)
        seen["preview"] = answer

    run(store, scenario)
    assert everything(store.client) == before
    assert store.lookup_raw("crm_contact_id", "anna") == anna  # not erased
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch(batch)]
    assert store.lookup_raw("crm_contact_id", "anna") is None


def test_duplicates_applied_before_earlier_in_the_batch_and_reused_ids(store: RedisIdentityStore) -> None:
    ivan = store.lookup_raw(*IVAN_PHONE)
    again = touch("f1", 0, IVAN_PHONE, IVAN_EMAIL, type="form_submit", attributes={"name": "Иван"})  # a redelivery
    reused = touch("v1", 99, ("phone", "8 (926) 111-22-33"), type="call", source="calltouch")  # another event
    new = touch("z1", 70, ("phone", "8 (926) 444-55-66"), type="call")
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(again), wire(reused), wire(new), wire(new)])
        first, second, third, fourth = answer.events
        assert (first.status, first.profile_id, first.changes, first.reused_by) == ("duplicate", ivan, [], None)
        assert (second.status, second.reused_by) == ("duplicate", "site")  # v1 came from "site" first
        assert third.status == "applied"
        assert (fourth.status, fourth.profile_id) == ("duplicate", third.profile_id)  # earlier in this batch
        assert (answer.summary.duplicates, answer.summary.applied) == (3, 1)
        seen["preview"] = answer

    run(store, scenario)
    assert everything(store.client) == before
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([again, reused, new, new])]


def test_invalid_events_are_reported_per_item_and_the_valid_ones_previewed(store: RedisIdentityStore) -> None:
    valid = touch("ok1", 40, ("phone", "8 (903) 765-43-21"), type="call")
    later = touch("ok2", 41, ("phone", "+7 903 765 43 21"), ("email", "maria@mail.ru"), type="form_submit")
    future = wire(touch("fut", 0, ("phone", "8 (926) 444-55-66")))
    future["occurred_at"] = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    events: list[Any] = [
        wire(valid),
        {"event_id": "bad-1", "type": "call", "occurred_at": "2026-11-01T10:00:00+03:00"},  # no source, no ids
        "not an event",
        {**wire(touch("bad-2", 1, IVAN_PHONE)), "type": "fax"},
        future,
        {**wire(touch("bad-3", 1, IVAN_PHONE)), "event_id": "x" * 200},
        wire(later),
    ]
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, events)
        statuses = [e.status for e in answer.events]
        assert statuses == ["applied", "invalid", "invalid", "invalid", "invalid", "invalid", "applied"]
        ok, missing, text, fax, fut, long_id, merged = answer.events
        assert missing.event_id == "bad-1"
        assert missing.error is not None
        assert missing.error.code == "invalid_message"
        assert {f.field for f in missing.error.errors or []} == {"source", "identifiers"}
        assert text.event_id is None
        assert text.error is not None
        assert text.error.errors
        assert fax.error is not None  # a well-formed name that is not declared: what the worker dead-letters
        assert (fax.error.code, "IDSTREAM_EVENT_TYPES" in fax.error.message) == ("unsupported_event", True)
        assert fut.error is not None
        assert [(f.field, f.code) for f in fut.error.errors or []] == [("occurred_at", "in_future")]
        assert long_id.event_id is None  # not a usable event id: not echoed
        assert long_id.error is not None
        assert [f.field for f in long_id.error.errors or []] == ["event_id"]
        # the valid ones are previewed as one batch: the second sees the first
        assert [c.kind for c in merged.changes] == ["updated"]
        assert merged.profile_id == ok.profile_id
        assert (answer.summary.invalid, answer.summary.applied, answer.summary.persons_created) == (5, 2, 1)
        seen["preview"] = answer

    run(store, scenario)
    assert everything(store.client) == before
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch([valid, later])]


# ----------------------------------------------------------------------------- tokens, bodies and limits


def test_the_preview_needs_a_valid_token(store: RedisIdentityStore) -> None:
    events = [wire(touch("t1", 40, ("phone", "8 (903) 765-43-21")))]

    async def scenario(client: TestClient[Any, Any]) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}):
            response = await client.post("/v1/preview", json=events, headers=headers)
            assert response.status == 401, headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert ErrorResponse.model_validate(await response.json()).code == "unauthorized"
        ok = await client.post("/v1/preview", json=events, headers=AUTH)
        assert ok.status == 200

    run(store, scenario)


def test_open_on_loopback_as_every_endpoint_and_only_for_loopback_names(store: RedisIdentityStore) -> None:
    events = [wire(touch("t1", 40, ("phone", "8 (903) 765-43-21")))]

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.post("/v1/preview", json=events)).status == 200
        rebound = await client.post("/v1/preview", json=events, headers={"Host": "attacker.example"})
        assert rebound.status == 421

    run(store, scenario, tokens=())


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        ((b"[{not json", "application/json"), (400, "invalid_json", "not valid json")),
        ((b"", "application/json"), (400, "invalid_request", "empty")),
        ((b'{"events": []}', "application/json"), (400, "invalid_request", "array of touch events, not an object")),
        ((b"[]", "application/json"), (400, "invalid_request", "the array has 0")),
        ((json.dumps([{"event_id": "x"}] * (MAX_PREVIEW + 1)).encode(), "application/json"),
         (400, "invalid_request", f"1 to {MAX_PREVIEW}")),
        ((b"[" + b",".join([b'"' + b"9" * 1000 + b'"'] * 1100) + b"]", "application/json"),
         (413, "body_too_large", "large")),
        ((b"[" * 2000 + b"]" * 2000, "application/json"), (400, "invalid_json", "depth")),
        ((b"[]", "text/plain"), (415, "unsupported_media_type", "application/json")),
    ],
)  # fmt: skip
def test_bad_bodies_get_a_4xx_that_says_what_is_wrong(
    store: RedisIdentityStore, sent: tuple[bytes, str], answer: tuple[int, str, str]
) -> None:
    (body, content_type), (status, code, needle) = sent, answer
    before = everything(store.client)

    async def scenario(client: TestClient[Any, Any]) -> None:
        headers = {**AUTH, "Content-Type": content_type}
        response = await client.post("/v1/preview", data=body, headers=headers)
        assert response.status == status
        error = ErrorResponse.model_validate(await response.json())
        assert error.code == code
        assert needle.lower() in error.message.lower()
        assert (await client.get("/healthz")).status == 200

    run(store, scenario)
    assert everything(store.client) == before


def test_a_full_batch_of_a_thousand_events_is_previewed_without_a_write(store: RedisIdentityStore) -> None:
    batch = [touch(f"bulk-{i}", 40 + i / 100, ("phone", f"8 (926) {i // 100:03d}-{i % 100:02d}-17"),
                   ("ga_client_id", f"GA1.2.{i + 1}.1700000000"), type="call") for i in range(MAX_PREVIEW)]  # fmt: skip
    before = everything(store.client)
    seen: dict[str, Any] = {}

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await preview(client, [wire(t) for t in batch])
        seen["preview"] = answer

    run(store, scenario)
    assert everything(store.client) == before
    assert previewed(seen["preview"]) == [outcome(r) for r in store.apply_batch(batch)]


def test_personal_data_never_reaches_the_logs(store: RedisIdentityStore, caplog: pytest.LogCaptureFixture) -> None:
    batch = [wire(touch("p1", 40, ("phone", "8 (903) 765-43-21"), ("email", "maria@mail.ru"))),
             {"event_id": "p2", "identifiers": [{"kind": "email", "value": "secret.person@mail.ru"}]}]  # fmt: skip

    async def scenario(client: TestClient[Any, Any]) -> None:
        await preview(client, batch)

    caplog.set_level("DEBUG")
    run(store, scenario)
    for value in ("9037654321", "maria", "secret.person"):
        assert value not in caplog.text


def test_the_store_preview_is_read_only_on_its_own(store: RedisIdentityStore) -> None:
    """The store's method alone: the load script only reads (no write is counted), and nothing is committed."""
    before = everything(store.client)
    found = store.preview([touch("s1", 40, IVAN_PHONE, LAPTOP), touch("s2", 41, ("crm_contact_id", "anna"),
                                                                       type="erase_request")])  # fmt: skip
    assert [r.status for r in found.results] == ["applied", "applied"]  # type: ignore[union-attr]
    assert everything(store.client) == before


def test_an_unexpected_failure_is_logged_without_its_message(
    store: RedisIdentityStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug's message may hold an identifier (a KeyError of one): the log names the error and where, not what."""

    phone = "".join(["+7", "903", "7654321"])  # not spelled out in the line the traceback shows

    def broken(self: RedisIdentityStore, touches: Any) -> Any:
        raise KeyError(("phone", phone))

    monkeypatch.setattr(RedisIdentityStore, "preview", broken)

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.post("/v1/preview", json=[wire(touch("e1", 40, ("phone", "8 903 765 43 21")))],
                                     headers=AUTH)  # fmt: skip
        assert response.status == 500
        assert ErrorResponse.model_validate(await response.json()).code == "internal_error"
        assert (await client.get("/healthz")).status == 200

    run(store, scenario)
    assert "preview failed: KeyError" in caplog.text
    assert "9037654321" not in caplog.text


def test_redis_unavailable_answers_503(store: RedisIdentityStore) -> None:
    config = ApiConfig(f"redis://127.0.0.1:{free_port()}/0", store.policy, store.normalizer, store.prefix, (),
                       redis_timeout=0.5)  # fmt: skip

    async def main() -> None:
        async with TestClient(TestServer(create_lookup_app(config))) as client:
            response = await client.post("/v1/preview", json=[wire(touch("e1", 40, IVAN_PHONE))])
            assert response.status == 503
            assert ErrorResponse.model_validate(await response.json()).code == "store_unavailable"

    asyncio.run(main())


def test_the_preview_meets_erasures_with_the_workers_erasure_key(store: RedisIdentityStore) -> None:
    """Erased identifiers are remembered by a keyed hash: the API must be given the workers' key to see them."""
    key = b"a-production-erasure-key-0123456789"
    worker = RedisIdentityStore(store.client, store.policy, store.normalizer, store.prefix, key)
    worker.apply_batch([touch("x1", 30, IVAN_PHONE, type="erase_request")])
    replayed = touch("r1", 5, IVAN_PHONE, type="call")  # re-sent from before the erasure
    kwargs = store.client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
    answers: dict[bytes, PreviewResponse] = {}
    before = everything(store.client)

    async def main() -> None:
        for erasure_key in (key, ApiConfig.erasure_key):
            config = ApiConfig(url, store.policy, store.normalizer, store.prefix, (), erasure_key=erasure_key)
            async with TestClient(TestServer(create_lookup_app(config))) as client:
                answers[erasure_key] = await preview(client, [wire(replayed)])

    asyncio.run(main())
    assert everything(store.client) == before
    applied = [outcome(r) for r in worker.apply_batch([replayed])]
    assert previewed(answers[key]) == applied
    assert previewed(answers[ApiConfig.erasure_key]) != applied  # with another key the erasure is not seen
