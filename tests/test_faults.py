"""Nothing lost, nothing stuck: a full Redis, a stalled Redis during an erasure, a script that outlives the
socket timeout, a profile past the broker's message limit, a DEBUG run, a reused event id, an event dated 2199.

Real components only (the embedded broker, private redis-server processes, worker processes); each stream
test ends with :func:`tests.e2e.assert_nothing_lost`. Written against the bug reports of issue 16: each
failed on the code before it (dead letters, a lost erasure, a worker that stopped for good, payloads in logs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from identity import Identifier, IdentityGraph, Touch, TouchType, Utm
from identity.golden import MAX_INTERESTS, fit
from identity.normalize import Normalizer
from schemas import TouchEvent
from streams.app import deliver
from streams.cli import read_topic
from streams.embedded import ChildServer, start_redis
from streams.generate import generate
from streams.processor import Inbound, Outbound, OutputTopics, Processor
from streams.redis_errors import StoreError, is_transient, mapped
from streams.redis_store import RedisIdentityStore
from tests.conftest import T0, touch
from tests.e2e import Deployment, assert_nothing_lost, unique, wait_for, wire

pytestmark = pytest.mark.slow


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _applied(deployment: Deployment, client: redis.Redis) -> int:
    try:
        return deployment.settings.redis_store(client).applied_events()
    except redis.RedisError:  # BUSY or stopped: the test's own reads wait like everyone's
        return -1


def _erase(t: Touch, event_id: str, at: datetime) -> Touch:
    kind, value = t.identifiers[0]
    return Touch(event_id, TouchType.ERASE_REQUEST, at, "privacy", ((kind, value),))


def _ident(kind: str, raw: str) -> Identifier:
    ident = Normalizer().normalize(kind, raw)
    assert isinstance(ident, Identifier), ident
    return ident


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[ChildServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
    server.stop()


# ----------------------------------------------------------------------------- Redis faults


def test_a_full_redis_holds_events_back_and_dead_letters_none(
    kafka: str, private_redis: ChildServer, tmp_path: Path
) -> None:
    """OOM under noeviction was a dead letter per event (606 of 606, an erasure too): now the worker waits."""
    deployment = Deployment(kafka, private_redis.url, tmp_path)
    client = redis.Redis.from_url(private_redis.url)
    try:
        touches = unique(generate(120, seed=16).touches)
        later = max(t.occurred_at for t in touches) + timedelta(minutes=5)
        touches.append(_erase(touches[3], "erase-during-oom", later))
        values = wire(touches)
        deployment.start_worker(IDSTREAM_GIVE_UP_AFTER="600")
        deployment.produce(values[:100])
        wait_for(lambda: _applied(deployment, client) >= 100, 120, "the first events applied")
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 20_000)
        deployment.produce(values[100:])
        wait_for(lambda: "maxmemory" in deployment.logs[0].read_text(), 120, "the worker to meet a full Redis")
        time.sleep(2)  # a few retries under OOM
        assert deployment.workers[0].poll() is None, "a full Redis is waited out, not a reason to exit"
        assert deployment.read(deployment.settings.dlq_topic) == [], "no event is a dead letter for a full Redis"
        client.config_set("maxmemory", 0)  # the operator adds memory
        wait_for(lambda: _applied(deployment, client) == len(touches) and deployment.lag() == 0, 180, "catch-up")
        assert_nothing_lost(deployment, touches)
        assert deployment.store().lookup(_ident(*touches[3].identifiers[0])) is None
    finally:
        deployment.stop()
        client.close()


def test_an_erasure_during_a_redis_stall_is_retried_and_health_says_stalled(
    kafka: str, private_redis: ChildServer, tmp_path: Path
) -> None:
    """The erasure path called Redis unmapped: a 15 s stall made an erase_request a dead letter, never erased."""
    deployment = Deployment(kafka, private_redis.url, tmp_path)
    client = redis.Redis.from_url(private_redis.url)
    try:
        touches = unique(generate(60, seed=3).touches)
        deployment.start_worker(IDSTREAM_REDIS_TIMEOUT="1", IDSTREAM_GIVE_UP_AFTER="600", IDSTREAM_STALL_AFTER="3")
        port = deployment.metrics_ports[0]
        deployment.produce(wire(touches))
        wait_for(lambda: _applied(deployment, client) == len(touches), 120, "the stream applied")
        wait_for(lambda: _health(port) == 200, 60, "a healthy worker")
        later = max(t.occurred_at for t in touches) + timedelta(minutes=5)
        erasure = _erase(touches[0], "erase-in-stall", later)
        private_redis.process.send_signal(signal.SIGSTOP)  # a stall: the server answers nothing
        try:
            deployment.produce(wire([erasure]))
            wait_for(lambda: _health(port) == 503, 60, "/healthz to report the stalled batch")
            time.sleep(2)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        wait_for(lambda: _applied(deployment, client) == len(touches) + 1 and deployment.lag() == 0, 120, "erasure")
        wait_for(lambda: _health(port) == 200, 60, "health back once batches end again")
        assert deployment.workers[0].poll() is None
        store = deployment.store()
        ident = _ident(*touches[0].identifiers[0])
        assert store.lookup(ident) is None
        assert store.is_erased(ident)
        assert_nothing_lost(deployment, [*touches, erasure])
    finally:
        deployment.stop()
        client.close()


def test_a_script_past_the_socket_timeout_and_busy_replies_lose_nothing(
    kafka: str, private_redis: ChildServer, tmp_path: Path
) -> None:
    """2,000 forms with one victim's phone: a script outlived the 5 s socket timeout, the retry met BUSY (not
    transient), and 1,070 events were dead letters while 500 more were applied but never published."""
    deployment = Deployment(kafka, private_redis.url, tmp_path)
    client = redis.Redis.from_url(private_redis.url)
    slow = redis.Redis.from_url(private_redis.url, socket_timeout=None)
    client.config_set("lua-time-limit", 100)  # busy-reply-threshold in 7.x; other clients hear BUSY after 100 ms
    try:
        victim = "+7 916 555-01-02"
        touches = [
            touch(
                f"spam-{i}",
                i / 60,
                ("phone", victim),
                ("ga_client_id", f"GA1.2.{100000 + i}.1700000000"),
                type="form_submit",
                source="tilda",
            )
            for i in range(2000)
        ]
        deployment.start_worker(IDSTREAM_REDIS_TIMEOUT="0.3", IDSTREAM_GIVE_UP_AFTER="600")
        deployment.produce(wire(touches[:200]))
        wait_for(lambda: _applied(deployment, client) > 0, 120, "the worker to start applying")

        def hold_redis() -> None:  # a script that holds the server 4 s, as a long batch of the old engine did
            slow.eval("local t0 = redis.call('TIME')[1] while redis.call('TIME')[1] - t0 < 4 do end return 1", 0)

        holder = threading.Thread(target=hold_redis)
        holder.start()
        deployment.produce(wire(touches[200:]))
        holder.join()
        wait_for(lambda: _applied(deployment, client) == len(touches) and deployment.lag() == 0, 240, "catch-up")
        log = deployment.logs[0].read_text()
        assert "BUSY" in log or "Timeout" in log, "the worker met the held server"
        assert deployment.workers[0].poll() is None
        assert_nothing_lost(deployment, touches)
    finally:
        deployment.stop()
        client.close()
        slow.close()


def test_the_error_rule_for_redis_replies() -> None:
    """What can pass is transient; what no retry fixes is a StoreError; none of it is the input's fault."""
    transient = [
        redis.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."),
        redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'. script: 1f2e, on @user_script:9."),
        redis.ResponseError("ERR Error running script (call to f_1f2e): @user_script:9: -OOM command not allowed"),
        redis.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        redis.ResponseError("MOVED 3999 127.0.0.1:6381"),
        redis.ResponseError("CLUSTERDOWN The cluster is down"),
        redis.ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"),
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.MaxConnectionsError("Too many connections"),
    ]
    for exc in transient:
        assert is_transient(exc), exc
    for exc in (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
                redis.ResponseError("ERR user_script:1: attempt to index a nil value")):  # fmt: skip
        assert not is_transient(exc)
        with pytest.raises(StoreError), mapped("test"):
            raise exc


# ----------------------------------------------------------------------------- outputs


def _page(i: int) -> str:
    return f"https://shop.example.ru/catalog/item-{i}?" + "&".join(f"f{j}={i * j:08d}" for j in range(230))


def test_a_profile_past_the_message_limit_is_cut_and_resolution_goes_on(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    """550 visits with distinct ~4 KB URLs grew a profile past 2 MiB: the send raised outside the guard and the
    worker never processed another event. Now the update is cut to the limit and the next events flow."""
    deployment = Deployment(kafka, redis_url, tmp_path)
    try:
        visits = [
            touch(f"big-{i}", i, ("ga_client_id", "GA1.2.555444333.1700000000"), attributes={"page": _page(i)})
            for i in range(550)
        ]
        after = [touch(f"after-{i}", 600 + i, ("phone", f"+7 916 700-00-{i:02d}"), type="call") for i in range(20)]
        limit = 150_000
        deployment.start_worker(IDSTREAM_MAX_MESSAGE_BYTES=str(limit))
        deployment.produce(wire(visits))
        deployment.produce(wire(after))
        wait_for(lambda: deployment.lag() == 0 and len(deployment.store()) == 21, 180, "every event resolved")
        updates = [v for _, v in deployment.read(deployment.settings.profiles_topic) if v is not None]
        assert max(len(v) for v in updates) <= limit
        # the newest update of the person (by version: a late older visit renames the person, and the retired
        # id's last update may be read after it, from another partition)
        heavy = max((json.loads(v) for v in updates if b"555444333.1700000000" in v), key=lambda u: u["version"])
        heavy = heavy["profile"]
        assert heavy["touch_counts"] == {"site_visit": 550}
        assert len(heavy["interests"]["pages"]) <= MAX_INTERESTS
        assert heavy["omitted"]["pages"] >= 550 - MAX_INTERESTS
        found = deployment.store().read_identifier(_ident("ga_client_id", "GA1.2.555444333.1700000000"))
        assert found is not None
        assert found.profile["touch_counts"] == {"site_visit": 550}
        assert _health(deployment.metrics_ports[0]) == 200
        assert_nothing_lost(deployment, visits + after)
    finally:
        deployment.stop()


def test_fit_sheds_detail_in_order_and_keeps_identity() -> None:
    graph = IdentityGraph()
    graph.apply_many(
        [
            touch(
                f"v{i}",
                i,
                ("ga_client_id", "GA1.2.111222333.1700000000"),
                attributes={"page": _page(i), f"note{i}": "x" * 1500},
            )
            for i in range(80)
        ]
    )
    (profile,) = graph.profiles()
    assert profile["omitted"] == {"pages": 80 - MAX_INTERESTS}  # the caps alone
    size = len(json.dumps(profile))
    cut = fit(profile, size // 2)
    assert cut is not None
    assert len(json.dumps(cut, separators=(",", ":"))) <= size // 2
    assert cut["identifiers"] == profile["identifiers"]
    assert cut["touch_counts"] == {"site_visit": 80}
    assert cut["omitted"]["recent_touches"] >= 15
    assert cut["omitted"]["pages"] > 80 - MAX_INTERESTS
    assert fit(profile, 10 * size) is profile
    assert fit(profile, 1_000) is None  # not even the core fits


def test_an_update_that_cannot_fit_is_a_dead_letter_naming_the_profile(redis_client: redis.Redis) -> None:
    store = RedisIdentityStore(redis_client, prefix=f"fit-{time.time_ns()}")
    processor = Processor(store, OutputTopics(), max_message_bytes=65_536)
    campaign = "c" * 1000  # 100 distinct 1 KB campaigns: six attribution models of 100 rows each
    touches = [
        touch(f"ad-{i}", i, ("ga_client_id", "GA1.2.999888777.1700000000"), utm=_utm(f"{campaign}-{i}"))
        for i in range(100)
    ]
    out = processor.process([Inbound(v, "t", 0, i) for i, v in enumerate(wire(touches))])
    letters = [json.loads(o.value or b"") for o in out if o.topic == "touches.dlq"]
    assert [letter["error"]["code"] for letter in letters] == ["output_too_large"]
    pid = store.lookup(_ident("ga_client_id", "GA1.2.999888777.1700000000"))
    assert letters[0]["error"]["key"] == pid
    assert letters[0]["topic"] == "profiles.updates"
    assert all(len(o.value or b"") <= 65_536 for o in out)
    assert store.profile(pid or "") is not None, "the profile is still served to lookups"


def _utm(campaign: str) -> Utm:
    return Utm(source="yandex", medium="cpc", campaign=campaign)


def test_deliver_turns_a_message_the_broker_refuses_into_a_dead_letter_and_sends_the_rest(kafka: str) -> None:
    topics = OutputTopics(f"profiles-{time.time_ns()}", dlq=f"dlq-{time.time_ns()}")
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(topics.profiles, 1, 1), NewTopic(topics.dlq, 1, 1)])
    admin.close()

    async def run() -> bool:
        producer = AIOKafkaProducer(bootstrap_servers=kafka, max_request_size=50_000)
        await producer.start()
        try:
            out = [
                Outbound(topics.profiles, b"p_small", b"{}"),
                Outbound(topics.profiles, b"p_huge", b"x" * 100_000),
                Outbound(topics.profiles, b"p_after", b"{}"),
            ]
            return await deliver(
                lambda m: producer.send(m.topic, m.value, key=m.key),
                out,
                topics=topics,
                limit=50_000,
                give_up_after=30,
                on_fatal=pytest.fail,
            )
        finally:
            await producer.stop()

    assert asyncio.run(run())
    assert sorted(k or b"" for k, _ in read_topic(kafka, topics.profiles)) == [b"p_after", b"p_small"]
    ((key, value),) = read_topic(kafka, topics.dlq)
    error = json.loads(value or b"")["error"]
    assert key == b"p_huge"
    assert error["code"] == "output_too_large"
    assert error["key"] == "p_huge"


# ----------------------------------------------------------------------------- logs, ids, clocks


def test_a_debug_run_logs_no_identifier_value_it_was_sent(kafka: str, redis_url: str, tmp_path: Path) -> None:
    """At DEBUG aiokafka printed every produced profile update whole (phones, e-mails, names)."""
    deployment = Deployment(kafka, redis_url, tmp_path)
    try:
        touches = unique(generate(40, seed=21).touches)
        later = max(t.occurred_at for t in touches) + timedelta(minutes=5)
        touches.append(_erase(touches[0], "erase-debug", later))
        deployment.start_worker(IDSTREAM_LOG_LEVEL="DEBUG", IDSTREAM_LOG_FORMAT="text")
        deployment.produce(wire(touches))
        wait_for(lambda: deployment.lag() == 0 and len(deployment.store()) > 0, 120, "the stream resolved")
        time.sleep(1)
        log = deployment.logs[0].read_text()
        assert "DEBUG" in log, "the run really logged at DEBUG"
        normalizer = Normalizer()
        values = set()
        for t in touches:
            for kind, raw in t.identifiers:
                values.add(raw)
                ident = normalizer.normalize(kind, raw)
                values.add(getattr(ident, "value", raw))
            values.update(v for v in t.attributes.values() if isinstance(v, str) and len(v) >= 6)
        leaked = sorted(v for v in values if len(v) >= 6 and v in log)
        assert not leaked, f"{len(leaked)} identifier or attribute values in the DEBUG log, e.g. {leaked[:3]}"
    finally:
        deployment.stop()


def test_a_reused_event_id_with_other_content_is_reported_and_a_redelivery_is_not(redis_client: redis.Redis) -> None:
    store = RedisIdentityStore(redis_client, prefix=f"dup-{time.time_ns()}")
    processor = Processor(store)
    first = touch("42", 0, ("phone", "+7 916 111-22-33"), type="call", source="calltouch")
    other = touch("42", 5, ("email", "anna.petrova@mail.ru"), type="form_submit", source="tilda")
    batches = [[first], [first], [other]]
    changes = []
    outcomes = []
    for n, batch in enumerate(batches):
        out, stats = processor.process_counted([Inbound(v, "touches", 0, n) for v in wire(batch)])
        changes += [json.loads(o.value or b"") for o in out if o.topic == "identity.changes"]
        outcomes += [outcome for (_, _, outcome) in stats.events]
    assert outcomes == ["applied", "duplicate", "duplicate_conflict"]
    (conflict,) = changes
    assert conflict["type"] == "duplicate_conflict"
    assert (conflict["source"], conflict["first_source"], conflict["event_id"]) == ("tilda", "calltouch", "42")
    assert store.lookup(_ident("email", "anna.petrova@mail.ru")) is None
    graph = IdentityGraph()  # the in-memory engine says the same
    assert [graph.apply(t).reused_by for t in (first, first, other)] == [None, None, "calltouch"]


def test_events_dated_beyond_the_future_skew_are_dead_letters(redis_client: redis.Redis) -> None:
    now = T0 + timedelta(days=30)
    store = RedisIdentityStore(redis_client, prefix=f"skew-{time.time_ns()}")
    processor = Processor(store, clock=lambda: now, max_future_skew=86_400)
    soon = touch("soon", 0, ("phone", "+7 916 000-00-01"), type="call")
    far = touch("far", 0, ("phone", "+7 916 000-00-02"), type="call")
    values = [
        TouchEvent.from_touch(_at(soon, now + timedelta(hours=3))).model_dump_json().encode(),
        TouchEvent.from_touch(_at(far, datetime(2199, 1, 1, tzinfo=UTC))).model_dump_json().encode(),
    ]
    out = processor.process([Inbound(v, "touches", 0, i) for i, v in enumerate(values)])
    (letter,) = [json.loads(o.value or b"") for o in out if o.topic == "touches.dlq"]
    assert letter["offset"] == 1
    assert letter["error"]["errors"][0]["field"] == "occurred_at"
    assert "IDSTREAM_MAX_FUTURE_SKEW" in letter["error"]["message"]
    assert len(store) == 1


def _at(t: Touch, moment: datetime) -> Touch:
    return dataclasses.replace(t, occurred_at=moment)


def test_an_erasure_leaves_no_erased_value_in_the_redis_slow_log(private_redis: ChildServer) -> None:
    """The slow log keeps the arguments of slow calls: the resolve script's carry identifier values."""
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("slowlog-log-slower-than", 0)  # every call is "slow": the worst case
    store = RedisIdentityStore(client, prefix="slowlog")
    store.apply_batch([touch("call-1", 0, ("phone", "+7 916 321-54-76"), ("email", "olga.k@mail.ru"), type="call")])
    assert any(b"olga.k@mail.ru" in bytes(arg) for entry in client.slowlog_get(128) for arg in entry["command"].split())
    store.apply_batch([touch("erase-1", 5, ("email", "olga.k@mail.ru"), type="erase_request", source="privacy")])
    logged = b" ".join(entry["command"] for entry in client.slowlog_get(128))
    assert b"olga.k@mail.ru" not in logged
    assert b"9163215476" not in logged
    client.close()
