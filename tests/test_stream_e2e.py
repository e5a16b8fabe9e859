"""The streaming service against the real thing: the embedded Kafka-protocol broker, Redis, Faust workers.

Each test gets its own consumer group, topic names and Redis key prefix, and shares one broker and
one Redis per session. Tests wait on conditions (the consumer group's lag, messages on a topic),
never on fixed sleeps.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from schemas import DeadLetter, ProfileUpdate
from streams.app import ensure_topics
from streams.embedded import free_port
from streams.generate import generate
from tests.e2e import ROOT, Deployment, reference, unique, wait_for, wire
from tests.test_graph_properties import random_events
from tests.test_store_contract import story

pytestmark = pytest.mark.slow


def test_a_produced_touch_becomes_a_profile_update_and_bad_input_a_dead_letter(deployment: Deployment) -> None:
    touches = story()
    deployment.start_worker()
    values = wire(touches)
    values.insert(3, b'{"event_id": "broken", "type": "call"}')
    deployment.produce(values + wire(touches[:2]))  # and two redeliveries
    wait_for(lambda: deployment.lag() == 0, 120, "the worker to consume everything")

    expected = reference(touches)
    store = deployment.store()
    assert store.persons() == expected.persons()
    assert list(store.profiles()) == list(expected.profiles())

    latest: dict[str, ProfileUpdate | None] = {}
    for key, value in deployment.read(deployment.settings.profiles_topic):
        assert key is not None
        update = ProfileUpdate.model_validate_json(value) if value is not None else None
        held = latest.get(key.decode())
        if update is None or held is None or update.version > held.version:
            latest[key.decode()] = update
    live = {pid: u for pid, u in latest.items() if u is not None}
    assert set(live) == set(expected.persons())  # retired ids end as tombstones
    for pid, update in live.items():
        assert update.profile == expected.profile(pid)

    letters = [DeadLetter.model_validate_json(v or b"") for _, v in deployment.read(deployment.settings.dlq_topic)]
    assert [(d.value_utf8, d.error["code"]) for d in letters] == [
        ('{"event_id": "broken", "type": "call"}', "invalid_message")
    ]
    assert letters[0].topic == deployment.topic


def test_two_workers_on_four_partitions_give_the_same_graph_as_one(deployment: Deployment) -> None:
    rng = random.Random(3)
    touches = unique([t for _ in range(60) for t in random_events(rng, 8)])
    deployment.start_worker()
    deployment.start_worker()
    keys = [str(rng.randrange(1000)).encode() for _ in touches]  # spread over every partition
    deployment.produce(wire(touches), keys)
    wait_for(lambda: deployment.lag() == 0, 180, "two workers to consume everything")
    expected = reference(touches)
    store = deployment.store()
    assert store.persons() == expected.persons()
    assert list(store.profiles()) == list(expected.profiles())
    # the example CRM subscriber, fed by both workers' updates, ends equal to `idstream export`
    mirror = subprocess.run(
        [sys.executable, "-m", "streams.cli", "crm-mirror", "--db", str(deployment.tmp / "crm.sqlite"), "--check"],
        env=deployment.env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert mirror.returncode == 0, mirror.stderr
    assert "mirror equals `idstream export`" in mirror.stderr


def test_a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(deployment: Deployment) -> None:
    touches = unique(generate(170, seed=5).touches)  # realistic: switchboards, junk, late and repeated events
    worker = deployment.start_worker()
    values = wire(touches)
    deployment.produce(values[: len(values) // 2])
    applied = deployment.store()
    wait_for(lambda: applied.applied_events() > 0, 120, "the worker to start applying")
    deployment.produce(values[len(values) // 2 :])
    worker.send_signal(signal.SIGKILL)  # no goodbye: offsets of in-flight batches are not committed
    worker.wait(10)
    deployment.start_worker()
    wait_for(lambda: deployment.lag() == 0, 180, "the restarted worker to catch up")
    expected = reference(touches)
    store = deployment.store()
    assert store.applied_events() == len(touches)  # every event applied
    assert store.persons() == expected.persons()
    assert list(store.profiles()) == list(expected.profiles())  # touch counts would show a double


def test_the_warehouse_worker_fills_tables_that_agree_with_redis(deployment: Deployment, tmp_path: Path) -> None:
    from sqlalchemy import select

    from identity.attribution import channel_of
    from sinks.warehouse import connect
    from sinks.warehouse import tables as t

    tag = deployment.settings.app_id
    extra = {"warehouse_url": f"sqlite:///{tmp_path / 'warehouse.db'}", "spend_topic": f"spend-{tag}",
             "warehouse_dlq_topic": f"whdlq-{tag}"}  # fmt: skip
    deployment.env.update({f"IDSTREAM_{k.upper()}": v for k, v in extra.items()})
    settings = deployment.settings.model_copy(update=extra)
    ensure_topics(settings, deployment.kafka)
    deployment.start_worker()
    deployment.start_worker("warehouse")
    touches = unique(generate(120, seed=11).touches)
    deployment.produce(wire(touches))
    good = {"type": "ad_spend", "date": "2026-11-02", "source": "yandex", "medium": "cpc", "cost": 1500.0,
            "currency": "RUB", "reported_at": "2026-11-03T00:00:00Z"}  # fmt: skip
    for body in (good, {**good, "cost": "a lot"}):
        deployment.producer.send(settings.spend_topic, json.dumps(body).encode())
    deployment.producer.flush()
    wait_for(lambda: deployment.lag() == 0, 180, "the resolver to catch up")
    store = deployment.store()
    live = {p["profile_id"] for p in store.profiles()}
    normalizer, policy = store.normalizer, store.policy
    expected: dict[str, str | None] = {}
    for item in touches:
        accepted, _ = normalizer.normalize_many(item.identifiers)
        if channel_of(item) is not None and accepted:
            expected[item.event_id] = store.lookup(min(accepted, key=lambda i: (policy.kind_rank(i.kind), i.value)))
    engine = connect(settings.warehouse_url)

    differs: list[str] = []

    def caught_up() -> bool:
        with engine.connect() as conn:
            owners = dict(conn.execute(select(t.touches.c.event_id, t.touches.c.profile_id)).all())
            persons = set(conn.scalars(select(t.persons.c.profile_id)))
            spend = conn.execute(select(t.ad_spend.c.cost)).scalars().all()
        wrong = sorted(e for e in owners.keys() | expected.keys() if owners.get(e, "-") != expected.get(e, "-"))
        sample = [(e, owners.get(e, "-"), expected.get(e, "-")) for e in wrong[:3]]
        differs[:] = [
            f"{len(wrong)} touches differ, e.g. {sample}",
            f"persons: {len(persons - live)} extra, {len(live - persons)} missing",
            f"spend {spend}",
        ]
        return owners == expected and persons == live and spend == [1500.0]

    try:
        wait_for(caught_up, 240, "the warehouse to hold every touch under its person's live id")
    except AssertionError as exc:  # say what differs, and what the warehouse worker said
        tail = deployment.logs[1].read_text(errors="replace")[-1500:]
        state = deployment.workers[1].poll()
        raise AssertionError(f"{exc}: {'; '.join(differs)}; warehouse worker exit {state}, log: {tail}") from None
    letters = [DeadLetter.model_validate_json(v) for _, v in deployment.read(settings.warehouse_dlq_topic) if v]
    assert [e["field"] for letter in letters for e in letter.error["errors"]] == ["cost"]


class Receiver:
    """A real HTTP receiver in a thread: checks signatures, fails as scripted, records deliveries."""

    def __init__(self, secret: str, failures_before_success: dict[str, int]) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.secret = secret.encode()
        self.failures = failures_before_success  # endpoint path -> 500s per delivery id (-1: forever)
        self.attempts: dict[tuple[str, str], int] = {}
        self.delivered: dict[str, list[dict[str, Any]]] = {}
        self.bad_signatures = 0
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook/{name}", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        from sinks.webhook import verify

        body = await request.read()
        headers = request.headers
        if not verify(self.secret, headers["X-Idstream-Timestamp"], body, headers["X-Idstream-Signature"]):
            self.bad_signatures += 1
            return web.Response(status=401)
        name, delivery = request.match_info["name"], headers["X-Idstream-Delivery"]
        n = self.attempts[(name, delivery)] = self.attempts.get((name, delivery), 0) + 1
        limit = self.failures.get(name, 0)
        if limit < 0 or n <= limit:
            return web.Response(status=500)
        self.delivered.setdefault(name, []).append(json.loads(body))
        return web.Response(status=204)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_triggers_reach_webhooks_signed_retried_and_dead_lettered_once_per_cause(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    """Worker -> triggers topic -> webhook agent -> a real receiver: retried after 500s, DLQ after the limit,
    and a redelivered stream fires nothing twice."""
    from schemas import Trigger, WebhookDeadLetter

    secret = "webhook-secret-0123456789abcdef"  # noqa: S105 - a test secret
    receiver = Receiver(secret, {"crm": 2, "broken": -1})
    endpoints = [
        {"name": "crm", "url": receiver.url("crm"), "secret": secret, "backoff_initial": 0.05},
        {"name": "broken", "url": receiver.url("broken"), "secret": secret, "max_attempts": 2, "backoff_initial": 0.05},
    ]
    deployment = Deployment(kafka, redis_url, tmp_path)
    deployment.env["IDSTREAM_WEBHOOKS"] = json.dumps(endpoints)
    deployment.env["IDSTREAM_TRIGGER_MAX_AGE_HOURS"] = "0"  # the story happened in the past
    try:
        deployment.start_worker()
        deployment.start_worker("webhooks")
        deployment.produce(wire(story()))
        wait_for(lambda: deployment.lag() == 0, 120, "the worker to consume the story")
        fired = [Trigger.model_validate_json(v or b"") for _, v in deployment.read(deployment.settings.triggers_topic)]
        assert "stage_changed" in {t.rule for t in fired}
        ids = {t.trigger_id for t in fired}
        assert len(ids) == len(fired)  # each cause once
        wait_for(lambda: {d["trigger_id"] for d in receiver.delivered.get("crm", [])} == ids, 120, "deliveries")
        assert all(receiver.attempts[("crm", tid)] == 3 for tid in ids)  # two 500s, then accepted

        def dead_letters() -> list[WebhookDeadLetter] | None:
            found = deployment.read(deployment.settings.webhook_dlq_topic)
            return (
                [WebhookDeadLetter.model_validate_json(v or b"") for _, v in found] if len(found) >= len(ids) else None
            )

        letters = wait_for(dead_letters, 120, "dead letters for the broken endpoint")
        assert {(d.endpoint, d.delivery_id, d.attempts, d.last_status) for d in letters} == {
            ("broken", tid, 2, 500) for tid in ids
        }
        assert all(secret not in d.model_dump_json() for d in letters)
        assert receiver.bad_signatures == 0

        deployment.produce(wire(story()))  # the whole stream again: redelivery
        wait_for(lambda: deployment.lag() == 0, 120, "the worker to consume the redelivery")
        assert len(deployment.read(deployment.settings.triggers_topic)) == len(fired)
        for log in tmp_path.glob("*.log"):
            assert secret not in log.read_text(errors="replace")
    finally:
        deployment.stop()
        receiver.close()


def test_the_lookup_api_answers_from_redis_filled_by_the_worker(deployment: Deployment) -> None:
    """`idstream serve` with a token, over Redis that the real worker filled: card, ambiguous, 404, 401."""
    import urllib.error
    import urllib.request

    from identity import CrmInfo
    from tests.conftest import touch

    office = ("phone", "8 (495) 123-45-67")
    touches = [
        *story(),
        touch("sb1", 400, ("crm_contact_id", "anna"), office, type="crm_stage", crm=CrmInfo("d-a", "new")),
        touch("sb2", 405, ("crm_contact_id", "boris"), office, type="crm_stage", crm=CrmInfo("d-b", "new")),
    ]
    deployment.start_worker()
    deployment.produce(wire(touches))
    wait_for(lambda: deployment.lag() == 0, 120, "the worker to consume everything")

    token = "e2e-token-0123456789abcdef"  # noqa: S105 - a test token
    port = free_port()
    env = {**deployment.env, "IDSTREAM_API_TOKENS": json.dumps([token])}
    argv = [sys.executable, "-m", "streams.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE)

    def get(path: str, auth: bool = True) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if auth:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    try:
        wait_for(lambda: get("/healthz", auth=False)[0] == 200, 30, "the API to start")
        ivan = deployment.store().lookup_raw("phone", "+79161234567")
        for raw in ("8%20(916)%20123-45-67", "%2B7%20916%20123%2045%2067"):
            status, body = get(f"/v1/lookup?kind=phone&value={raw}")
            assert status == 200
            assert body["status"] == "found"
            assert body["profile_id"] == ivan
            assert body["profile"]["display_name"] == "Иван Петров"
            assert body["profile"]["open_deals"][0]["stage"] == "qualified"
        status, body = get("/v1/lookup?kind=phone&value=84951234567")
        assert (status, body["status"], len(body["candidates"])) == (200, "ambiguous", 2)
        assert get("/v1/lookup?kind=phone&value=89260001122")[0] == 404
        assert get("/v1/lookup?kind=phone&value=89161234567", auth=False)[0] == 401
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=20)
        assert token.encode() not in errors
