"""The lookup HTTP API against a real Redis: answers, the screen-pop card, auth, and hostile requests.

Every answer is validated against the published models (schemas/api.py), so the OpenAPI description
cannot drift from what the server does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from identity import ConfigurationError, CrmInfo, Normalizer, Rejection, Utm
from schemas.api import BatchLookupResponse, ErrorResponse, Explanation, LookupResult, ProfileResponse, ScreenPopCard
from streams.lookup_api import ApiConfig, check_exposure
from streams.redis_store import RedisIdentityStore
from streams.settings import Settings
from tests.conftest import serve_api, store_url, touch
from tests.test_store_contract import story

TOKEN = "s3cret-token-for-tests-0123456789"  # noqa: S105 - a test token
OFFICE = ("phone", "8 (495) 123-45-67")


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[RedisIdentityStore]:
    store = RedisIdentityStore(redis_client, prefix=f"api-{uuid.uuid4().hex[:10]}")
    touches = story()
    store.apply_batch(touches[:2])
    store.apply_batch(touches[2:])
    store.apply_batch(
        [
            touch("sb1", 400, ("crm_contact_id", "anna"), OFFICE, ("email", "anna@romashka.ru"), type="crm_stage",
                  source="amocrm", attributes={"name": "Анна"}, crm=CrmInfo("d-anna", "new")),
            touch("sb2", 405, ("crm_contact_id", "boris"), OFFICE, type="crm_stage", source="amocrm",
                  attributes={"name": "Борис"}, crm=CrmInfo("d-boris", "meeting")),
            touch("sb3", 410, OFFICE, type="call", source="calltouch", utm=Utm("yandex", "cpc")),
        ]
    )  # fmt: skip
    yield store
    store.clear()


Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


def run(store: RedisIdentityStore, scenario: Scenario, tokens: tuple[bytes, ...] = ()) -> None:
    serve_api(ApiConfig(store_url(store), store.policy, store.normalizer, store.prefix, tokens), scenario)


def ivan_id(store: RedisIdentityStore) -> str:
    pid = store.lookup_raw("phone", "+79161234567")
    assert pid is not None
    return pid


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "raw", ["8 (916) 123-45-67", "+7 916 123 45 67", "79161234567", "8-916-123-4567", "9161234567"]
)
def test_a_phone_in_any_common_format_returns_the_screen_pop_card(store: RedisIdentityStore, raw: str) -> None:
    ivan = ivan_id(store)

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params={"kind": "phone", "value": raw})
        assert response.status == 200
        result = LookupResult.model_validate(await response.json())
        assert result.status == "found"
        assert result.profile_id == ivan
        assert result.profile is not None
        card = ScreenPopCard.model_validate(result.profile)
        assert card.display_name == "Иван Петров"
        assert card.phones == ["+79161234567"]
        assert card.emails == ["ivanpetrov@gmail.com"]
        assert card.crm_contact_ids == ["amo-501"]
        assert card.interests == ["Северный"]
        assert card.first_source is not None
        assert (card.first_source.utm_source, card.first_source.utm_medium) == ("yandex", "cpc")
        assert card.last_source is not None
        assert card.last_source.system == "amocrm"
        assert [t["event_id"] for t in card.last_touches] == ["d1", "c1", "f1", "v2", "v1"]
        assert [(d.deal_id, d.stage) for d in card.open_deals] == [("deal-9", "qualified")]
        assert card.lead_score == 1 + 4 + 1 + 4 + 30 + 20  # two project visits, a form, a call
        assert card.touches == 5

    run(store, scenario)


def test_the_full_view_is_the_golden_profile(store: RedisIdentityStore) -> None:
    ivan = ivan_id(store)

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params={"kind": "email", "value": "Ivan.Petrov@gmail.com",
                                                          "view": "full"})  # fmt: skip
        body = await response.json()
        assert body["profile"] == store.profile(ivan)

    run(store, scenario)


def test_a_shared_switchboard_is_ambiguous_and_claims_no_single_profile(store: RedisIdentityStore) -> None:
    anna = store.lookup_raw("crm_contact_id", "anna")
    boris = store.lookup_raw("crm_contact_id", "boris")

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params={"kind": "phone", "value": "+7 495 123-45-67"})
        assert response.status == 200
        result = LookupResult.model_validate(await response.json())
        assert result.status == "ambiguous"
        assert result.profile_id is None
        assert result.profile is None
        assert result.candidates is not None
        by_id = {c.profile_id: c for c in result.candidates}
        assert set(by_id) == {anna, boris}
        assert by_id[anna or ""].display_name == "Анна"
        assert by_id[boris or ""].open_deals == [{"deal_id": "d-boris", "stage": "meeting"}]
        # each colleague's own identifiers still find exactly one person
        own = await client.get("/v1/lookup", params={"kind": "crm_contact_id", "value": "boris"})
        assert (await own.json())["status"] == "found"

    run(store, scenario)


@pytest.mark.parametrize(
    ("kind", "value", "status", "code"),
    [
        ("phone", "8 (926) 000-11-22", 404, None),
        ("phone", "12", 400, "phone"),
        ("email", "test@test.ru", 400, "junk"),
        ("fax", "123", 400, "unknown_kind"),
        ("phone", "x" * 600, 400, "too_long"),
    ],
)
def test_unknown_and_invalid_identifiers(
    store: RedisIdentityStore, kind: str, value: str, status: int, code: str | None
) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params={"kind": kind, "value": value})
        assert response.status == status
        result = LookupResult.model_validate(await response.json())
        if code is None:
            assert result.status == "not_found"
        else:
            assert result.status == "invalid"
            assert result.error is not None
            assert code in f"{result.error.code} {result.error.message}"

    run(store, scenario)


def test_a_batch_answers_in_order_with_every_status(store: RedisIdentityStore) -> None:
    ivan = ivan_id(store)
    asked = [
        {"kind": "phone", "value": "8 (903) 421-17-58"},
        {"kind": "phone", "value": "8 (916) 123-45-67"},
        {"kind": "phone", "value": "+74951234567"},
        {"kind": "email", "value": "not an email"},
        {"kind": "ga_client_id", "value": "GA1.2.222.1700000100"},
    ]

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.post("/v1/lookup/batch", json={"identifiers": asked})
        assert response.status == 200
        body = BatchLookupResponse.model_validate(await response.json())
        assert [r.status for r in body.results] == ["not_found", "found", "ambiguous", "invalid", "found"]
        assert [r.value for r in body.results] == [a["value"] for a in asked]
        assert body.results[1].profile_id == body.results[4].profile_id == ivan

    run(store, scenario)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "invalid"),
        (b'{"identifiers": []}', 400, "identifiers"),
        (b'{"identifiers": [{"kind": "phone"}]}', 400, "value"),
        (b'{"identifiers": [{"kind": "phone", "value": 5}]}', 400, "value"),
        (json.dumps({"identifiers": [{"kind": "phone", "value": "1"}] * 1001}).encode(), 400, "1000"),
        (b'{"identifiers": [{"kind": "phone", "value": "1", "extra": {"$gt": ""}}]}', 400, "extra"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid"),
        (
            b'{"identifiers": [' + b",".join([b'{"kind": "phone", "value": "' + b"9" * 500 + b'"}'] * 2500) + b"]}",
            413,
            "large",
        ),
    ],
)
def test_malformed_batches_get_a_4xx_that_says_what_is_wrong(
    store: RedisIdentityStore, body: bytes, status: int, needle: str
) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.post("/v1/lookup/batch", data=body, headers={"Content-Type": "application/json"})
        assert response.status == status
        error = ErrorResponse.model_validate(await response.json())
        assert needle.lower() in error.message.lower()
        assert (await client.get("/healthz")).status == 200  # still up

    run(store, scenario)


def test_a_retired_profile_id_answers_with_its_survivor(store: RedisIdentityStore) -> None:
    ivan = ivan_id(store)
    retired = next(old for old, new in store.redirects.items() if new == ivan)

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get(f"/v1/profiles/{retired}")
        assert response.status == 200
        body = ProfileResponse.model_validate(await response.json())
        assert (body.profile_id, body.requested_id, body.retired) == (ivan, retired, True)
        assert body.profile == store.profile(ivan)
        card = await client.get(f"/v1/profiles/{ivan}", params={"view": "card"})
        ScreenPopCard.model_validate((await card.json())["profile"])
        missing = await client.get("/v1/profiles/p_00000000000000000000")
        assert missing.status == 404
        bad_view = await client.get(f"/v1/profiles/{ivan}", params={"view": "everything"})
        assert bad_view.status == 400

    run(store, scenario)


# ----------------------------------------------------------------------------- auth and hostile input


def test_requests_without_a_valid_bearer_token_get_401(store: RedisIdentityStore) -> None:
    params = {"kind": "phone", "value": "+79161234567"}

    async def scenario(client: TestClient[Any, Any]) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "}):  # fmt: skip
            response = await client.get("/v1/lookup", params=params, headers=headers)
            assert response.status == 401, headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["code"] == "unauthorized"
        batch = await client.post("/v1/lookup/batch", json={"identifiers": [params]})
        assert batch.status == 401
        assert (await client.get("/v1/profiles/anything")).status == 401
        assert (await client.get("/healthz")).status == 200
        ok = await client.get("/v1/lookup", params=params, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200
        second = await client.get(
            "/v1/lookup", params=params, headers={"Authorization": "Bearer another-token-abcdefgh"}
        )
        assert second.status == 200

    run(store, scenario, tokens=(TOKEN.encode(), b"another-token-abcdefgh"))


HOSTILE = [
    "{idstream}:owner",
    "*",
    "phone\x1f+79161234567",
    "'); redis.call('FLUSHALL'); --",
    "]]..redis.call('DEL', KEYS[1])..[[",
    "\x00",
    "%FF%FE",
    "+7916123456\u0663",
    "a" * 10_000,
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("kind", ["phone", "email", "crm_contact_id", "{idstream}:person"])
def test_hostile_values_are_data_never_code_or_keys(store: RedisIdentityStore, kind: str, value: str) -> None:
    before = sorted(store.client.keys("*"))
    persons = store.persons()

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/v1/lookup", params={"kind": kind, "value": value})
        assert response.status in (400, 404)
        if len(value) < 8000:  # longer request lines are refused by the HTTP parser itself, with a 400
            LookupResult.model_validate(await response.json())
        batch = await client.post("/v1/lookup/batch", json={"identifiers": [{"kind": kind, "value": value[:512]}]})
        assert batch.status == 200
        profile = await client.get(f"/v1/profiles/{value[:64]}")
        assert profile.status in (400, 404)

    run(store, scenario)
    assert sorted(store.client.keys("*")) == before
    assert store.persons() == persons


def test_invalid_utf8_and_odd_methods_get_4xx(store: RedisIdentityStore) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        raw = await client.get("/v1/lookup?kind=phone&value=%FF%FE%FD")
        assert raw.status in (400, 404)
        assert (await client.delete("/v1/lookup")).status == 405
        assert (await client.get("/v2/anything")).status == 404
        missing = await client.get("/v1/lookup", params={"kind": "phone"})
        assert missing.status == 400
        assert "required" in (await missing.json())["message"]

    run(store, scenario)


def test_the_api_refuses_to_run_open_beyond_loopback() -> None:
    check_exposure("127.0.0.1", ())
    check_exposure("0.0.0.0", (TOKEN.encode(),))  # noqa: S104 - the point of the test
    with pytest.raises(ConfigurationError, match="IDSTREAM_API_TOKENS"):
        check_exposure("0.0.0.0", ())  # noqa: S104
    with pytest.raises(ValidationError, match="shorter than 16"):
        Settings(api_tokens=["short"])
    assert TOKEN not in repr(Settings(api_tokens=[TOKEN]))


def test_served_openapi_is_the_published_one(store: RedisIdentityStore) -> None:
    from schemas.export import OPENAPI, render

    async def scenario(client: TestClient[Any, Any]) -> None:
        served = await (await client.get("/v1/openapi.json")).json()
        assert served == json.loads(render(OPENAPI))

    run(store, scenario)


def test_the_api_normalizes_with_the_stream_s_settings() -> None:
    """Configured junk values reach the API's normalizer through the same settings object as the worker's."""
    settings = Settings(junk_values={"phone": ["+79161234567"]})
    rejected = Normalizer(settings.normalizer_config()).normalize("phone", "8 916 123 45 67")
    assert isinstance(rejected, Rejection)
    assert "junk" in rejected.message


def test_explain_answers_why_and_needs_the_token(store: RedisIdentityStore) -> None:
    """The office phone two CRM contacts share: the path between them, and why it does not join them (their
    names differ; the number is a landline)."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/v1/explain", params={"profile_id": "x"})).status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        params = {"kind": "crm_contact_id", "value": "anna", "other_kind": "crm_contact_id", "other_value": "boris"}
        response = await client.get("/v1/explain", params=params, headers=auth)
        assert response.status == 200
        answer = Explanation.model_validate(await response.json())
        assert answer.same_person is False
        assert answer.path is not None
        assert [s["event_id"] for s in answer.path] == ["sb1", "sb2"]
        # the office landline was given by Анна and by Борис: different names, so it links neither
        for step in answer.path:
            assert step["linked"] is False
            assert step["reason"] == "shared_identifier"
            assert step["shared_by"]["rule"] == "names_differ"
            assert step["shared_by"]["number_type"] == "fixed_line"
        anna = store.lookup_raw("email", "anna@romashka.ru")
        assert anna is not None
        profile = await client.get("/v1/explain", params={"profile_id": anna}, headers=auth)
        assert profile.status == 200
        person = Explanation.model_validate(await profile.json())
        assert person.links is not None
        assert [link["event_id"] for link in person.links] == ["sb1"]
        missing = await client.get("/v1/explain", params={"kind": "phone", "value": "8 916 000 11 22"}, headers=auth)
        assert missing.status == 404
        bad = await client.get("/v1/explain", params={"kind": "phone", "value": "12"}, headers=auth)
        assert bad.status == 400
        assert (await bad.json())["code"] == "invalid_number"

    run(store, scenario, tokens=(TOKEN.encode(),))
