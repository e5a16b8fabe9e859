"""Data in over HTTP, against the real broker and Redis: POST /v1/touches and the webhook receivers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from schemas.outputs import DeadLetter
from streams.embedded import free_port
from streams.lookup_api import ApiConfig
from tests.conftest import http_server, serve_api, touch
from tests.e2e import Deployment, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "hooks"
READ_TOKEN = "lookup-token-0123456789abcdef"  # noqa: S105 - test tokens
WRITE_TOKEN = "ingest-token-0123456789abcdef"  # noqa: S105
HOOK_SECRET = "hook-secret-0123456789abcdef"  # noqa: S105
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}


@pytest.fixture
def deployment(kafka: str, redis_url: str, tmp_path: Path) -> Deployment:
    return Deployment(kafka, redis_url, tmp_path, partitions=1)


def config(d: Deployment, **changes: Any) -> ApiConfig:
    s = d.settings
    base: dict[str, Any] = {
        "prefix": s.redis_prefix,
        "tokens": (READ_TOKEN.encode(),),
        "kafka": d.kafka,
        "touch_topics": tuple(s.touch_topics),
        "dlq_topic": s.dlq_topic,
        "ingest_tokens": (WRITE_TOKEN.encode(),),
        "hook_secrets": {name: HOOK_SECRET.encode() for name in ("tilda", "calltouch", "comagic", "form")},
        "hook_forms": {"landing": {"tel": "phone", "mail": "email", "fio": "name", "city": "attribute:city"}},
    }
    base.update(changes)
    return ApiConfig(d.redis_url, s.policy(), s.graph().normalizer, **base)


def event(eid: str, phone: str = "8 916 070 93 65", **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": "call", "occurred_at": "2026-11-02T10:15:00+03:00", "source": "calltouch",
            "identifiers": [{"kind": "phone", "value": phone}], **extra}  # fmt: skip


def landed(d: Deployment, topic: str | None = None) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in d.read(topic or d.topic) if v is not None]


def test_an_ingest_token_writes_and_a_lookup_token_does_not(deployment: Deployment) -> None:
    body = [event("e1", call={"status": "missed", "wait_s": 41}), event("e2", phone="12"), event("e1"),
            {"event_id": "bad", "type": "call"}]  # fmt: skip

    async def scenario(client: TestClient[Any, Any]) -> None:
        refused = await client.post("/v1/touches", json=body, headers=READ)
        assert refused.status == 401  # a lookup token cannot write
        assert (await client.get("/v1/lookup", params={"kind": "phone", "value": "1"}, headers=WRITE)).status == 401
        answer = await client.post("/v1/touches", json=body, headers=WRITE)
        assert answer.status == 202
        result = await answer.json()
        statuses = [(i["event_id"], i["status"]) for i in result["items"]]
        # an unusable phone is the worker's to refuse (the event still lands); a repeated id is a duplicate;
        # an event missing required fields is refused with the decoder's field errors
        assert statuses == [("e1", "accepted"), ("e2", "accepted"), ("e1", "duplicate"), ("bad", "invalid")]
        fields = {e["field"] for e in result["items"][3]["error"]["errors"]}
        assert {"occurred_at", "source", "identifiers"} <= fields
        assert (result["accepted"], result["duplicate"], result["invalid"]) == (2, 1, 1)

    serve_api(config(deployment), scenario)
    events = landed(deployment)
    assert [e["event_id"] for e in events] == ["e1", "e2"]
    assert events[0]["call"] == {"status": "missed", "wait_s": 41}


def test_json_lines_are_taken_and_a_bad_line_is_named(deployment: Deployment) -> None:
    lines = b"\n".join([json.dumps(event("l1")).encode(), b"{not json", json.dumps(event("l2")).encode()])

    async def scenario(client: TestClient[Any, Any]) -> None:
        headers = {**WRITE, "Content-Type": "application/x-ndjson"}
        answer = await client.post("/v1/touches", data=lines, headers=headers)
        assert answer.status == 202
        items = (await answer.json())["items"]
        assert [i["status"] for i in items] == ["accepted", "invalid", "accepted"]
        assert "line 2" in items[1]["error"]["message"]
        too_many = await client.post("/v1/touches", json=[event(f"x{i}") for i in range(1001)], headers=WRITE)
        assert too_many.status == 400

    serve_api(config(deployment), scenario)
    assert [e["event_id"] for e in landed(deployment)] == ["l1", "l2"]


def test_events_the_workers_applied_are_duplicates(deployment: Deployment) -> None:
    deployment.store().apply_batch([touch("done-1", 0, ("phone", "8 916 070 93 65"), type="call")])

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/v1/touches", json=[event("done-1"), event("new-1")], headers=WRITE)
        assert [i["status"] for i in (await answer.json())["items"]] == ["duplicate", "accepted"]

    serve_api(config(deployment), scenario)
    assert [e["event_id"] for e in landed(deployment)] == ["new-1"]


def test_an_unreachable_broker_is_a_503_that_names_what_was_not_delivered(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/v1/touches", json=[event("u1"), {"event_id": "u2"}], headers=WRITE)
        assert answer.status == 503
        assert answer.headers["Retry-After"]
        body = await answer.json()
        assert body["code"] == "broker_unavailable"
        assert [i["status"] for i in body["items"]] == ["not_delivered", "invalid"]
        # lookups still answer while the broker is away (nobody is known here: a 404 from Redis)
        found = await client.get("/v1/lookup", params={"kind": "phone", "value": "89160709365"}, headers=READ)
        assert found.status == 404

    serve_api(config(deployment, kafka=f"127.0.0.1:{free_port()}", produce_timeout=2.0), scenario)


def test_writing_needs_ingest_tokens_when_the_api_has_tokens(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post("/v1/touches", json=[event("w1")], headers=READ)
        assert answer.status == 403
        assert "IDSTREAM_INGEST_TOKENS" in (await answer.json())["message"]

    serve_api(config(deployment, ingest_tokens=()), scenario)
    assert landed(deployment) == []


# ----------------------------------------------------------------------------- webhooks


def hook(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().strip()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_wrong_secret_or_source_is_not_found_and_lands_nothing(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in ("/v1/hooks/tilda/wrong-secret-0123456789", f"/v1/hooks/nosuch/{HOOK_SECRET}",
                     "/v1/hooks/tilda/", f"/v1/hooks/amocrm/{HOOK_SECRET}"):  # fmt: skip
            answer = await client.post(path, data=hook("tilda-form.txt"), headers=FORM)
            assert answer.status == 404, path

    serve_api(config(deployment), scenario)
    assert landed(deployment) == []
    assert landed(deployment, deployment.settings.dlq_topic) == []


def test_tilda_form_webhook_becomes_a_form_with_its_browser_and_utm(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        ping = await client.post(f"/v1/hooks/tilda/{HOOK_SECRET}", data=hook("tilda-test.txt"), headers=FORM)
        assert (ping.status, (await ping.json())["events"]) == (200, 0)
        for _ in range(2):  # Tilda retries: the same submission is the same event
            answer = await client.post(f"/v1/hooks/tilda/{HOOK_SECRET}", data=hook("tilda-form.txt"), headers=FORM)
            assert answer.status == 200

    serve_api(config(deployment), scenario)
    events = landed(deployment)
    assert len({e["event_id"] for e in events}) == 1
    form = events[0]
    assert (form["type"], form["source"], form["event_id"]) == ("form_submit", "tilda", "tilda-4582931:7721904415")
    assert {(i["kind"], i["value"]) for i in form["identifiers"]} == {
        ("phone", "+7 (916) 070-93-65"),
        ("email", "anna.smirnova@yandex.ru"),
        ("ga_client_id", "GA1.1.1207731466.1718023302"),
        ("ym_client_id", "1718023302884211532"),
    }
    assert form["utm"] == {"source": "yandex", "medium": "cpc", "campaign": "brand_msk"}
    assert form["attributes"]["name"] == "Анна Смирнова"
    assert form["attributes"]["Comments"].startswith("Хочу консультацию")


def test_calltouch_and_comagic_calls_carry_their_outcome(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        query = hook("calltouch-call.query").decode()
        answer = await client.get(f"/v1/hooks/calltouch/{HOOK_SECRET}?{query}")
        assert answer.status == 200
        comagic = await client.post(f"/v1/hooks/comagic/{HOOK_SECRET}", data=hook("comagic-call-end.json"),
                                    headers={"Content-Type": "application/json"})  # fmt: skip
        assert comagic.status == 200

    serve_api(config(deployment), scenario)
    calltouch, comagic = sorted(landed(deployment), key=lambda e: e["source"])
    assert calltouch["event_id"] == "calltouch-648201337"
    assert calltouch["occurred_at"] == "2024-06-10T14:32:05+03:00"  # the account's zone: Moscow
    assert calltouch["call"] == {"status": "missed", "talk_s": 0.0, "wait_s": 41.0, "tracking_number": "74951234567"}
    assert {i["kind"] for i in calltouch["identifiers"]} == {"phone", "ga_client_id", "ym_client_id"}
    assert calltouch["utm"]["campaign"] == "brand_msk"
    assert comagic["call"] == {"status": "answered", "wait_s": 19.0, "talk_s": 184.0,
                               "tracking_number": "74951234568", "operator": "Мария Петрова"}  # fmt: skip
    assert comagic["event_id"] == "comagic-2716633190"


def test_a_generic_form_maps_the_fields_the_operator_configured(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        body = {"tel": "8 916 070-93-65", "mail": "Anna@Yandex.ru", "fio": "Анна", "city": "Тверь",
                "utm_source": "vk", "event_id": "lead-77"}  # fmt: skip
        answer = await client.post(f"/v1/hooks/form/{HOOK_SECRET}?form=landing", json=body)
        assert answer.status == 200
        unknown = await client.post(f"/v1/hooks/form/{HOOK_SECRET}?form=other", json=body)
        assert unknown.status == 400
        assert "other" in (await unknown.json())["message"]

    serve_api(config(deployment), scenario)
    (form,) = landed(deployment)
    assert {(i["kind"], i["value"]) for i in form["identifiers"]} == {("phone", "8 916 070-93-65"),
                                                                      ("email", "Anna@Yandex.ru")}  # fmt: skip
    assert form["attributes"] == {"form": "landing", "name": "Анна", "city": "Тверь"}
    assert form["utm"] == {"source": "vk"}
    (letter,) = [DeadLetter.model_validate_json(v) for _, v in deployment.read(deployment.settings.dlq_topic) if v]
    assert letter.topic == "http:/v1/hooks/form"
    assert letter.error["source"] == "form"
    assert letter.value_utf8 is not None
    assert "8 916 070-93-65" in letter.value_utf8  # the raw body, kept


def test_a_payload_without_an_identifier_is_a_400_and_a_dead_letter(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post(f"/v1/hooks/tilda/{HOOK_SECRET}", data=b"Name=Ivan&formid=form1", headers=FORM)
        assert answer.status == 400
        assert "phone" in (await answer.json())["message"]

    serve_api(config(deployment), scenario)
    assert landed(deployment) == []
    (letter,) = landed(deployment, deployment.settings.dlq_topic)
    assert letter["value_utf8"] == "Name=Ivan&formid=form1"


AMO_TOKEN = "amo-long-lived-token-0123456789"  # noqa: S105


class FakeApi:
    """A vendor's REST API on loopback, answering from recorded responses (path -> fixture; a missing path is
    204, a wrong ``Authorization`` 401, ``up=False`` 502); it records what it was asked."""

    def __init__(self, routes: dict[str, str], authorization: str | None = None, *, up: bool = True) -> None:
        self.asked: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _status(self, code: int) -> None:
                self.send_response(code)
                self.end_headers()

            def do_GET(self) -> None:
                fake.asked.append((self.path, self.headers.get("Authorization", "")))
                path, _, query = self.path.partition("?")
                name = routes.get(path) or routes.get(f"{path}?{query}")
                if not up:
                    return self._status(502)
                if authorization is not None and self.headers.get("Authorization") != authorization:
                    return self._status(401)
                if name is None:
                    return self._status(204)
                body = (FIXTURES / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None

            def log_message(self, *args: Any) -> None:
                pass

        self.server, self.url = http_server(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


AMO_ROUTES = {
    "/api/v4/leads/35144366": "amocrm-api-lead-35144366.json",
    "/api/v4/contacts/43684612": "amocrm-api-contact-43684612.json",
}


def fake_amo(*, up: bool = True) -> FakeApi:
    return FakeApi(AMO_ROUTES, f"Bearer {AMO_TOKEN}", up=up)


@pytest.fixture
def amo() -> Iterator[FakeApi]:
    fake = fake_amo()
    yield fake
    fake.close()


def with_amo(d: Deployment, amo: FakeApi, **changes: Any) -> ApiConfig:
    secrets = {name: HOOK_SECRET.encode() for name in ("tilda", "calltouch", "amocrm")}
    return config(d, hook_secrets=secrets, amocrm_url=amo.url, amocrm_token=AMO_TOKEN, **changes)


def test_an_amocrm_deal_webhook_reads_the_deals_contact(deployment: Deployment, amo: FakeApi) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post(f"/v1/hooks/amocrm/{HOOK_SECRET}", data=hook("amocrm-lead-status.txt"),
                                   headers=FORM)  # fmt: skip
        assert answer.status == 200
        contact = await client.post(f"/v1/hooks/amocrm/{HOOK_SECRET}", data=hook("amocrm-contact-add.txt"),
                                    headers=FORM)  # fmt: skip
        assert (contact.status, (await contact.json())["events"]) == (200, 0)

    serve_api(with_amo(deployment, amo), scenario)
    (deal,) = landed(deployment)
    assert (deal["type"], deal["source"]) == ("crm_stage", "amocrm")
    assert deal["crm"] == {"deal_id": "amocrm:35144366", "stage": "142", "previous_stage": "20067736",
                           "pipeline": "9217056", "amount": 12500000.0}  # fmt: skip
    assert {(i["kind"], i["value"]) for i in deal["identifiers"]} == {
        ("crm_contact_id", "amocrm:43684612"),
        ("phone", "+79160709365"),
        ("email", "Anna.Smirnova@yandex.ru"),
    }
    assert deal["occurred_at"] == "2024-06-11T13:20:00+00:00"
    assert [path.partition("?")[0] for path, _ in amo.asked] == ["/api/v4/leads/35144366", "/api/v4/contacts/43684612"]
    assert all(auth == f"Bearer {AMO_TOKEN}" for _, auth in amo.asked)


def test_an_amocrm_api_that_is_away_is_a_503_and_the_hook_is_kept_to_replay(deployment: Deployment) -> None:
    """Not every vendor sends a failed webhook again (Bitrix24 does not): the raw body is kept either way."""
    down = fake_amo(up=False)
    try:

        async def scenario(client: TestClient[Any, Any]) -> None:
            answer = await client.post(f"/v1/hooks/amocrm/{HOOK_SECRET}", data=hook("amocrm-lead-status.txt"),
                                       headers=FORM)  # fmt: skip
            assert answer.status == 503
            assert (await answer.json())["code"] == "crm_api_unavailable"

        serve_api(with_amo(deployment, down), scenario)
    finally:
        down.close()
    assert landed(deployment) == []
    (letter,) = landed(deployment, deployment.settings.dlq_topic)
    assert letter["error"]["code"] == "crm_api_unavailable"
    assert "35144366" in letter["value_utf8"]


def test_without_amocrm_credentials_a_deal_webhook_is_kept_as_a_dead_letter(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.post(f"/v1/hooks/amocrm/{HOOK_SECRET}", data=hook("amocrm-lead-status.txt"),
                                   headers=FORM)  # fmt: skip
        assert answer.status == 400
        assert "IDSTREAM_AMOCRM_TOKEN" in (await answer.json())["message"]

    serve_api(config(deployment, hook_secrets={"amocrm": HOOK_SECRET.encode()}), scenario)
    (letter,) = landed(deployment, deployment.settings.dlq_topic)
    assert "leads%5Bstatus%5D%5B0%5D%5Bid%5D=35144366" in letter["value_utf8"]  # replayable once configured


def test_a_tilda_form_a_call_and_an_amocrm_deal_of_one_client_are_one_person(
    deployment: Deployment, amo: FakeApi
) -> None:
    """Recorded payloads of one client, through the receivers and a real worker: one person holding the form,
    the call (with its outcome) and the deal."""
    worker = deployment.start_worker()
    try:

        async def scenario(client: TestClient[Any, Any]) -> None:
            form = await client.post(f"/v1/hooks/tilda/{HOOK_SECRET}", data=hook("tilda-form.txt"), headers=FORM)
            call = await client.get(f"/v1/hooks/calltouch/{HOOK_SECRET}?{hook('calltouch-call.query').decode()}")
            deal = await client.post(f"/v1/hooks/amocrm/{HOOK_SECRET}", data=hook("amocrm-lead-status.txt"),
                                     headers=FORM)  # fmt: skip
            assert (form.status, call.status, deal.status) == (200, 200, 200)

        serve_api(with_amo(deployment, amo), scenario)
        store = deployment.store()
        wait_for(lambda: store.applied_events() == 3, 60, "the worker to apply the three events")
        person = store.lookup_raw("email", "anna.smirnova@yandex.ru")
        assert person is not None
        assert store.lookup_raw("phone", "+7 916 070-93-65") == person
        assert store.lookup_raw("ym_client_id", "1718023302884211532") == person
        profile = store.profile(person)
        assert profile is not None
        assert store.lookup_raw("crm_contact_id", "amocrm:43684612") == person
        calls = [t for t in profile["recent_touches"] if t["type"] == "call"]
        assert calls[0]["call"]["status"] == "missed"
        assert profile["touch_counts"] == {"call": 1, "crm_stage": 1, "form_submit": 1}
        assert list(profile["deals"]) == ["amocrm:35144366"]
    finally:
        assert worker.poll() is None
        deployment.stop()


BITRIX_HOOK = "/rest/1/b24secretabc123/"
BITRIX_TOKEN = "51856fefc120afa4b628cc82d3935cce"  # noqa: S105 - the recorded event's application token
BITRIX_ROUTES = {
    f"{BITRIX_HOOK}crm.deal.get.json?id=662": "bitrix24-api-crm.deal.get-662.json",
    f"{BITRIX_HOOK}crm.deal.contact.items.get.json?id=662": "bitrix24-api-crm.deal.contact.items.get-662.json",
    f"{BITRIX_HOOK}crm.contact.get.json?id=84": "bitrix24-api-crm.contact.get-84.json",
}


@pytest.mark.parametrize("app_token", [BITRIX_TOKEN, "another-portal-token-0000000000"])
def test_a_bitrix24_deal_event_reads_the_deal_and_its_primary_contact(deployment: Deployment, app_token: str) -> None:
    portal = FakeApi(BITRIX_ROUTES)
    try:

        async def scenario(client: TestClient[Any, Any]) -> None:
            answer = await client.post(f"/v1/hooks/bitrix24/{HOOK_SECRET}", data=hook("bitrix24-deal-update.txt"),
                                       headers=FORM)  # fmt: skip
            if app_token == BITRIX_TOKEN:
                assert answer.status == 200
            else:  # the event's application token is not this portal's: refused, kept as a dead letter
                assert answer.status == 400
                assert "application_token" in (await answer.json())["message"]

        secrets = {"bitrix24": HOOK_SECRET.encode()}
        url = portal.url + BITRIX_HOOK
        serve_api(config(deployment, hook_secrets=secrets, bitrix24_url=url, bitrix24_app_token=app_token), scenario)
    finally:
        portal.close()
    if app_token != BITRIX_TOKEN:
        assert landed(deployment) == []
        assert len(landed(deployment, deployment.settings.dlq_topic)) == 1
        return
    (deal,) = landed(deployment)
    assert deal["crm"] == {"deal_id": "bitrix24:662", "stage": "won", "pipeline": "3", "amount": 9800000.0}
    assert {(i["kind"], i["value"]) for i in deal["identifiers"]} == {
        ("crm_contact_id", "bitrix24:84"),
        ("phone", "8 (916) 070-93-65"),
        ("email", "anna.smirnova@yandex.ru"),
    }
    assert (deal["attributes"]["name"], deal["utm"]["campaign"]) == ("Анна Смирнова", "brand_msk")
    assert deal["occurred_at"] == "2024-06-10T17:40:05+03:00"
    assert [p.partition("?")[0].rsplit("/", 1)[1] for p, _ in portal.asked] == [
        "crm.deal.get.json",
        "crm.deal.contact.items.get.json",
        "crm.contact.get.json",
    ]


def test_a_payload_that_breaks_a_connector_is_a_400_and_a_dead_letter(deployment: Deployment) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        huge = await client.get(
            f"/v1/hooks/calltouch/{HOOK_SECRET}?callerphone=79160709365&timestamp=99999999999999999999"
        )
        assert huge.status == 400
        odd = await client.post(f"/v1/hooks/tilda/{HOOK_SECRET}", json={"Phone": ["+79160709365"], "COOKIES": 5})
        assert odd.status in (200, 400)  # never a 500: mapped, or refused with the reason

    serve_api(config(deployment), scenario)
    letters = landed(deployment, deployment.settings.dlq_topic)
    assert letters
    assert all(letter["error"]["code"] == "unmappable_payload" for letter in letters)
