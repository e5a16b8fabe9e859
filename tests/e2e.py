"""A whole idstream deployment for end-to-end tests: its own group, topics and key prefix on shared servers."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaProducer

from identity import IdentityGraph, Touch
from schemas import TouchEvent
from streams.app import ensure_topics
from streams.cli import _group_lag, read_topic
from streams.embedded import free_port
from streams.redis_store import RedisIdentityStore
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


class Deployment:
    """One isolated idstream deployment (group, topics, key prefix) on the shared servers."""

    def __init__(self, kafka: str, redis_url: str, tmp: Path, partitions: int = 4) -> None:
        tag = uuid.uuid4().hex[:8]
        self.kafka, self.redis_url, self.tmp = kafka, redis_url, tmp
        self.env = {
            **os.environ,
            "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "IDSTREAM_REDIS_URL": redis_url,
            "IDSTREAM_APP_ID": f"idstream-{tag}",
            "IDSTREAM_TOUCH_TOPICS": json.dumps([f"touches-{tag}"]),
            "IDSTREAM_PROFILES_TOPIC": f"profiles-{tag}",
            "IDSTREAM_CHANGES_TOPIC": f"changes-{tag}",
            "IDSTREAM_DLQ_TOPIC": f"dlq-{tag}",
            "IDSTREAM_TRIGGERS_TOPIC": f"triggers-{tag}",
            "IDSTREAM_WEBHOOK_DLQ_TOPIC": f"wdlq-{tag}",
            "IDSTREAM_REDIS_PREFIX": f"e2e-{tag}",
            "IDSTREAM_TOPIC_PARTITIONS": str(partitions),
            "IDSTREAM_BATCH_WITHIN": "0.05",
            "IDSTREAM_STATE_FILE": str(tmp / "runtime.json"),
        }
        self.settings = Settings(
            kafka_bootstrap_servers=kafka,
            redis_url=redis_url,
            app_id=f"idstream-{tag}",
            touch_topics=[f"touches-{tag}"],
            profiles_topic=f"profiles-{tag}",
            changes_topic=f"changes-{tag}",
            dlq_topic=f"dlq-{tag}",
            triggers_topic=f"triggers-{tag}",
            webhook_dlq_topic=f"wdlq-{tag}",
            redis_prefix=f"e2e-{tag}",
            topic_partitions=partitions,
        )
        ensure_topics(self.settings, kafka)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.metrics_ports: list[int] = []
        self.restarts: list[int] = []  # workers that exited and were started again (tests/test_operations.py)
        self.producer = KafkaProducer(bootstrap_servers=kafka, acks=1)

    @property
    def topic(self) -> str:
        return self.settings.touch_topics[0]

    def start_worker(self, command: str = "worker", **env: str) -> subprocess.Popen[bytes]:
        """A worker process; its log is ``self.logs[i]`` and its /metrics port ``self.metrics_ports[i]``."""
        path = self.tmp / f"{command}-{len(self.workers)}.log"
        port = free_port()
        with path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", command],
                env={**self.env, "IDSTREAM_METRICS_PORT": str(port), **env},
                cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        self.workers.append(worker)
        self.logs.append(path)
        self.metrics_ports.append(port)
        return worker

    def produce(self, values: list[bytes], keys: list[bytes] | None = None) -> None:
        for i, value in enumerate(values):
            self.producer.send(self.topic, value, key=keys[i] if keys else None)
        self.producer.flush()

    def lag(self) -> int:
        return _group_lag(self.kafka, self.settings.app_id, self.settings.touch_topics)

    def read(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return read_topic(self.kafka, topic)

    def store(self) -> RedisIdentityStore:
        return self.settings.redis_store(redis.Redis.from_url(self.redis_url))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.producer.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wire(touches: list[Touch]) -> list[bytes]:
    return [TouchEvent.from_touch(t).model_dump_json().encode() for t in touches]


def unique(touches: list[Touch]) -> list[Touch]:
    """Random streams reuse event ids per stream; give every touch its own."""
    return [dataclasses.replace(t, event_id=f"{i}-{t.event_id}") for i, t in enumerate(touches)]


def reference(touches: list[Touch]) -> IdentityGraph:
    graph = IdentityGraph()
    graph.apply_many(touches)
    return graph


def assert_nothing_lost(deployment: Deployment, touches: list[Touch], *, dead_letters: int = 0) -> None:
    """The end of every fault test: every distinct event id produced is applied exactly once and named in
    ``profiles.updates``, what ``idstream export`` reads from Redis equals offline ``idstream resolve`` of the
    same events, and the dead-letter topic holds only the ``dead_letters`` expected."""
    store = deployment.store()
    distinct = {t.event_id: t for t in touches}
    assert store.applied_events() == len(distinct), "every event applied, none twice"
    offline = IdentityGraph()
    results = offline.apply_many(list(distinct.values()))
    assert store.persons() == offline.persons()
    assert list(store.profiles()) == list(offline.profiles()), "export (Redis) equals resolve (offline)"
    named = {
        event_id
        for _, value in deployment.read(deployment.settings.profiles_topic)
        if value is not None
        for event_id in json.loads(value)["event_ids"]
    }
    # A profile erased later may be erased in the same batch as the event: then only its erasure is published.
    # A touch older than an erasure of its person erases what it joins; arriving after the erasure has taken
    # everything (another partition's order), it finds nothing and has nothing to announce: either is right.
    erased = {c.profile_id for r in results for c in r.changes if c.kind == "erased"}
    unnamed = {
        r.event_id
        for r in results
        if (r.profile_id is not None or r.changes)
        and r.profile_id not in erased
        and not (r.profile_id is None and all(c.kind == "erased" for c in r.changes))
    } - named
    assert not unnamed, f"{len(unnamed)} applied events never named in profiles.updates, e.g. {sorted(unnamed)[:5]}"
    letters = deployment.read(deployment.settings.dlq_topic)
    assert len(letters) == dead_letters, [json.loads(v or b"{}").get("error") for _, v in letters][:5]
