"""Operating idstream: rebuild from Kafka, scale-out, metrics and probes, logs, and surviving faults.

Real components only: the embedded broker, redis-server, worker processes. Tests wait on conditions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from identity import Identifier, IdentityGraph, Touch
from streams.embedded import free_port, start_broker, start_redis
from streams.generate import generate
from streams.observe import THIRD_PARTY_LOGGERS, JsonFormatter, setup_logging
from streams.redis_store import RedisIdentityStore
from tests.conftest import touch
from tests.e2e import ROOT, Deployment, reference, unique, wait_for, wire

pytestmark = pytest.mark.slow


def get(url: str, authorization: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own loopback servers
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def with_corrections(touches: list[Touch]) -> tuple[list[Touch], Identifier]:
    """A realistic stream plus a manager's unlink, a link, and an erasure (the corrections a rebuild must keep)."""
    graph = reference(touches)
    people = sorted((sorted(ids) for ids in graph.persons().values() if len(ids) >= 3), key=lambda ids: ids[0])
    later = max(t.occurred_at for t in touches) + timedelta(minutes=1)
    first, second, erased = people[0], people[1], people[2]
    extra = [
        touch("unlink-1", 0, (first[0].kind, first[0].value), (first[1].kind, first[1].value), type="identity_unlink",
              source="crm-manager"),
        touch("link-1", 0, (first[0].kind, first[0].value), (second[0].kind, second[0].value), type="identity_link",
              source="crm-manager"),
        touch("erase-1", 0, (erased[0].kind, erased[0].value), type="erase_request", source="privacy"),
    ]  # fmt: skip
    extra = [dataclasses.replace(t, occurred_at=later + timedelta(minutes=i)) for i, t in enumerate(extra)]
    return [*touches, *extra], erased[0]


# ----------------------------------------------------------------------------- rebuild


def idstream(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a deployment would, with this environment; its exit code and output, whatever they are."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def test_rebuild_replays_kafka_into_an_empty_redis_with_the_same_persons_ids_and_erasures(
    deployment: Deployment,
) -> None:
    touches, erased = with_corrections(unique(generate(150, seed=11).touches))
    rng = random.Random(4)
    deployment.start_worker()
    deployment.produce(wire(touches), [str(rng.randrange(100)).encode() for _ in touches])
    wait_for(lambda: deployment.lag() == 0, 180, "the worker to consume everything")
    deployment.stop()
    first = deployment.store()
    assert first.persons() == reference(touches).persons()
    assert first.is_erased(erased)
    assert first.lookup(erased) is None
    published = [json.loads(v) for _, v in deployment.read(deployment.settings.profiles_topic) if v]
    assert first.redirects, "the stream should retire some profile ids by merges"

    # the rebuild is also how a deployment of an earlier version migrates: plant keys of the old layout there
    prefix = deployment.settings.redis_prefix + "-rebuilt"
    env = {**deployment.env, "IDSTREAM_REDIS_PREFIX": prefix}
    old_layout = {f"{{{prefix}}}:owner": ("phone\x1f+79161234567", "p_old"), f"{{{prefix}}}:agg": ("p_old", "{}")}
    for key, (field, value) in old_layout.items():
        first.client.hset(key, field, value)
    first.client.sadd(f"{{{prefix}}}:seen", "e-old")
    refused = idstream(env, "worker")
    assert refused.returncode == 2  # a worker does not start a second, empty graph beside the old one
    assert "idstream rebuild --force" in refused.stderr
    kept = idstream(env, "rebuild", "--quiet")
    assert kept.returncode == 2
    assert "layout of an earlier version" in kept.stderr
    done = idstream(env, "rebuild", "--force", timeout=300)
    assert not first.client.exists(*old_layout, f"{{{prefix}}}:seen")  # the old layout is gone
    assert done.returncode == 0, done.stderr
    assert f"{len(touches)}/{len(touches)}" in done.stderr  # the progress bar reached the end
    report = json.loads(done.stdout)["rebuild"]
    assert report["events"] == len(touches)
    second = RedisIdentityStore(first.client, first.policy, first.normalizer, prefix)

    assert second.persons() == first.persons()
    assert list(second.profiles()) == list(first.profiles())  # same profile ids, same golden profiles
    assert second.is_erased(erased)  # erased stays erased
    assert second.lookup(erased) is None
    for retired, survivor in first.redirects.items():  # ids a CRM stored before a merge still find the person
        assert second.resolve(retired) == first.resolve(survivor), retired
    fired = f"{{{deployment.settings.redis_prefix}}}:fired"
    assert first.client.smembers(f"{{{prefix}}}:fired") == first.client.smembers(fired)  # no trigger fires twice
    # the next update outranks everything published, so subscribers keeping the highest version accept it
    next_version = second.snapshot([next(iter(second.persons()))]).last_version
    assert next_version > max(u["version"] for u in published)

    again = idstream(env, "rebuild", "--quiet")
    assert again.returncode == 2
    assert "not empty" in again.stderr


# ----------------------------------------------------------------------------- observability


def test_a_worker_serves_metrics_probes_and_json_logs_that_never_show_secrets(kafka: str, tmp_path: Path) -> None:
    password = "redis-pass-4f9a1c2e7b"  # noqa: S105 - a test secret, to be looked for in the logs
    token, erasure_key, hook_secret = "api-token-8e1d0b2c9f7a", "erasure-key-5c3b9d1e0a", "hook-secret-2a7f6e4d1c"
    with start_redis(tmp_path / "redis", password=password) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        deployment = Deployment(kafka, url, tmp_path, partitions=1)  # one order: merges as in the reference
        try:
            worker = deployment.start_worker(
                IDSTREAM_LOG_LEVEL="DEBUG",
                IDSTREAM_API_TOKENS=json.dumps([token]),
                IDSTREAM_ERASURE_KEY=erasure_key,
                IDSTREAM_WEBHOOKS=json.dumps([{"name": "crm", "url": "http://127.0.0.1:9/x", "secret": hook_secret}]),
                IDSTREAM_BLOB_COMPONENT_SIZE="3",
            )
            base = f"http://127.0.0.1:{deployment.metrics_ports[0]}"
            wait_for(lambda: get(base + "/readyz")[0] == 200, 120, "the worker to be ready")
            assert get(base + "/healthz")[0] == 200
            touches = unique(generate(60, seed=2).touches)
            deployment.produce([*wire(touches), b'{"not": "a touch"}'])
            wait_for(lambda: deployment.lag() == 0, 120, "the worker to consume everything")
            results = IdentityGraph().apply_many(touches)
            merges = sum(len(c.merged_from) for r in results for c in r.changes if c.kind == "merged")
            assert merges > 0

            def scraped() -> str:
                status, text = get(base + "/metrics")
                return text if status == 200 and metric(text, "idstream_dead_letters_total") >= 1 else ""

            text = wait_for(scraped, 30, "the batch's metrics")
            topic = deployment.topic
            applied = metric(text, "idstream_events_total", topic=topic, outcome="applied")
            assert applied + metric(text, "idstream_events_total", topic=topic, outcome="duplicate") == len(touches)
            assert metric(text, "idstream_dead_letters_total", topic=topic) == 1
            assert metric(text, "idstream_events_total", type="call") > 0  # by type
            assert metric(text, "idstream_merges_total") == merges
            assert metric(text, "idstream_batch_seconds_count") >= 1
            assert metric(text, "idstream_largest_component") > 3
            assert metric(text, "idstream_blob_alerts_total") >= 1

            def lag_exported() -> bool:
                return metric(get(base + "/metrics")[1], "idstream_consumer_lag", topic=topic, partition="0") == 0 and (
                    f'idstream_consumer_lag{{partition="0",topic="{topic}"}}' in get(base + "/metrics")[1]
                )

            wait_for(lag_exported, 30, "the lag gauge of the partition, at 0")
        finally:
            deployment.stop()
        assert worker.wait(30) == 0 or worker.returncode in (-signal.SIGTERM, 0)

    lines = deployment.logs[0].read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records
    assert len(records) == len(lines), "every line of the worker's log is a JSON object"
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    dead = [r for r in records if r["msg"].startswith("dead letter")]
    assert dead
    assert dead[0]["topic"] == deployment.topic
    assert dead[0]["offset"] == len(touches)
    assert any(r.get("event_id") for r in records if r["logger"] == "idstream.processor")
    assert any("component of" in r["msg"] and r.get("event_ids") for r in records)  # the blob warning
    log_text = "\n".join(lines)
    for secret in (password, token, erasure_key, hook_secret):
        assert secret not in log_text


# ----------------------------------------------------------------------------- scale-out


def test_three_workers_on_six_partitions_give_the_same_persons_as_one(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka, redis_url, tmp_path, partitions=6)
    try:
        touches = unique(generate(200, seed=21).touches)  # switchboards, junk, late and repeated touches
        rng = random.Random(6)
        for _ in range(3):
            deployment.start_worker()
        deployment.produce(wire(touches), [str(rng.randrange(1000)).encode() for _ in touches])
        wait_for(lambda: deployment.lag() == 0, 300, "three workers to consume everything")
        store = deployment.store()
        expected = reference(touches)  # what one worker (or the offline core) makes of the same stream
        assert store.persons() == expected.persons()
        assert list(store.profiles()) == list(expected.profiles())
        shares = [
            metric(get(f"http://127.0.0.1:{port}/metrics")[1], "idstream_events_total")
            for port in deployment.metrics_ports
        ]
        assert sum(shares) >= len(touches)  # (a rebalance may redeliver a batch: applied once, counted twice)
        assert all(share > 0 for share in shares), f"every worker should have had partitions: {shares}"
    finally:
        deployment.stop()


# ----------------------------------------------------------------------------- faults


def supervise(deployment: Deployment, until: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition like an orchestrator would: a worker that exited is started again."""

    def check() -> bool:
        for i, worker in enumerate(deployment.workers):
            if worker.poll() is not None and not getattr(worker, "replaced", False):
                worker.replaced = True  # type: ignore[attr-defined]
                deployment.start_worker()
                deployment.restarts.append(i)
        return until()

    wait_for(check, timeout, what)


def assert_exactly_once_effect(deployment: Deployment, store: RedisIdentityStore, touches: list[Touch]) -> None:
    """Every touch applied, none twice: the graph and every golden profile (touch counts) equal the reference."""
    expected = reference(touches)
    seen = store.applied_events()
    assert seen == len(touches)
    assert store.persons() == expected.persons()
    assert list(store.profiles()) == list(expected.profiles())


def test_redis_killed_mid_ingest_and_restarted_from_its_aof_loses_and_doubles_nothing(
    kafka: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "redis"
    server = start_redis(workdir, appendonly=True, appendfsync="always")
    deployment = Deployment(kafka, server.url, tmp_path)
    try:
        touches = unique(generate(250, seed=8).touches)
        values = wire(touches)
        deployment.start_worker(IDSTREAM_GIVE_UP_AFTER="120")
        deployment.produce(values[: len(values) // 2])
        applied = deployment.settings.redis_store(redis.Redis.from_url(server.url))
        wait_for(lambda: applied.applied_events() > 0, 120, "the worker to start applying")
        deployment.produce(values[len(values) // 2 :])
        server.process.send_signal(signal.SIGKILL)  # mid-batch or between batches: no goodbye either way
        server.process.wait(10)
        server = start_redis(workdir, server.port, appendonly=True, appendfsync="always")
        supervise(deployment, lambda: deployment.lag() == 0, 240, "the worker to catch up after the restart")
        assert_exactly_once_effect(deployment, deployment.store(), touches)
        assert deployment.workers[0].poll() is None, "a Redis restart within IDSTREAM_GIVE_UP_AFTER is retried"
    finally:
        deployment.stop()
        server.stop()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The object store `up --data-dir` puts the broker on (streams/local_s3.py): its topics survive a restart."""
    from streams.local_s3 import s3_env, start_object_store

    with start_object_store(tmp_path / "objects") as store:
        yield s3_env(store.url)


def test_a_broker_restart_during_ingest_loses_and_doubles_nothing(
    redis_url: str, tmp_path: Path, s3: dict[str, str]
) -> None:
    broker = start_broker(tmp_path / "broker", storage="s3://tansu/", env=s3)
    deployment = Deployment(broker.url, redis_url, tmp_path)
    try:
        touches = unique(generate(250, seed=9).touches)
        values = wire(touches)
        deployment.start_worker()
        deployment.produce(values[: len(values) // 2])
        store = deployment.store()
        wait_for(lambda: store.applied_events() > 0, 120, "the worker to start applying")
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait(10)
        broker = start_broker(tmp_path / "broker", broker.port, storage="s3://tansu/", env=s3)
        deployment.producer.close()
        deployment.producer = KafkaProducer(bootstrap_servers=broker.url, acks=1)
        deployment.produce(values[len(values) // 2 :])
        supervise(
            deployment,
            lambda: store.applied_events() == len(touches) and deployment.lag() == 0,
            300,
            "the worker to consume everything after the broker restart",
        )
        assert_exactly_once_effect(deployment, store, touches)
    finally:
        deployment.stop()
        broker.stop()


# ----------------------------------------------------------------------------- the API's logs and secrets


def test_the_formatter_scrubs_secrets_even_when_code_logs_them() -> None:
    formatter = JsonFormatter(["tok-0123456789abcdef"])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s at %s", None, None)
    record.args = ("tok-0123456789abcdef", "redis://:hunter2-pass@redis:6379/0")
    record.event_id = "e-1"
    line = json.loads(formatter.format(record))
    assert line["msg"] == "failed with *** at redis://:***@redis:6379/0"
    assert line["event_id"] == "e-1"
    assert line["level"] == "error"


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
def test_third_party_records_follow_the_level_asked_and_never_go_below_info(
    level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """At WARNING an operator sees no aiokafka chatter; at DEBUG only idstream's own debug records (aiokafka's
    debug records carry whole produced messages)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in THIRD_PARTY_LOGGERS})
    try:
        setup_logging("json", level)
        logging.getLogger("aiokafka.producer").debug("payload +79165550102")
        logging.getLogger("aiokafka.conn").info("connected")
        logging.getLogger("aiokafka.conn").warning("broker gone")
        logging.getLogger("idstream.worker").debug("own debug")
        logging.getLogger("idstream.worker").info("own info")
        printed = [json.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, was in saved[2].items():
            logging.getLogger(name).setLevel(was)
    expected = {
        "DEBUG": ["connected", "broker gone", "own debug", "own info"],
        "INFO": ["connected", "broker gone", "own info"],
        "WARNING": ["broker gone"],
    }
    assert printed == expected[level]


def test_the_lookup_api_refuses_without_a_token_and_logs_json_without_secrets(tmp_path: Path) -> None:
    password, token = "redis-pass-77c1e0a9", "api-token-3b8f1d6e2a9c"
    with start_redis(tmp_path / "redis", password=password) as server:
        port = free_port()
        log_path = tmp_path / "serve.log"
        env = {
            **os.environ, "IDSTREAM_REDIS_URL": server.url, "IDSTREAM_API_TOKENS": json.dumps([token]),
            "IDSTREAM_API_PORT": str(port), "IDSTREAM_LOG_LEVEL": "DEBUG", "IDSTREAM_STATE_FILE": str(tmp_path / "s"),
        }  # fmt: skip
        with log_path.open("wb") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "serve"], env=env, cwd=ROOT, stdout=out, stderr=out
            )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get(base + "/readyz")[0] == 200, 60, "the API to be ready")
            assert get(base + "/v1/lookup?kind=phone&value=89161234567")[0] == 401
            for auth in ("Bearer wrong-token-000000000", f"Basic {token}", token, f"Bearer {token}x"):
                assert get(base + "/v1/lookup?kind=phone&value=1", auth)[0] == 401, auth
            # with the token: a real answer (404: nobody has this phone yet), not 401
            assert get(base + "/v1/lookup?kind=phone&value=89161234567", f"Bearer {token}")[0] == 404
            status, text = get(base + "/metrics")
            assert status == 200
            assert metric(text, "idstream_lookup_requests_total", endpoint="/v1/lookup", status="401") == 5
            assert "89161234567" not in text  # no identifier in a label
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines
    assert all(json.loads(line)["level"] for line in lines)
    assert not any(password in line or token in line for line in lines)
