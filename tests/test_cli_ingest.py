"""`idstream ingest` against a real broker that stops answering: it says what was not delivered, and exits 1.

The broker is a private one (``start_broker``), frozen with SIGSTOP mid-ingest, so no other test shares it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas import TouchEvent
from streams.app import ensure_topics
from streams.cli import read_topic
from streams.embedded import start_broker
from streams.generate import generate
from streams.settings import Settings
from tests.e2e import ROOT, unique, wait_for

pytestmark = pytest.mark.slow


def test_ingest_into_a_frozen_broker_exits_1_naming_what_was_not_delivered_then_counts_exactly(
    redis_url: str, tmp_path: Path
) -> None:
    broker = start_broker(tmp_path / "broker")
    tag = uuid.uuid4().hex[:8]
    first, second = f"touches-{tag}", f"again-{tag}"
    settings = Settings(kafka_bootstrap_servers=broker.url, redis_url=redis_url, touch_topics=[first, second],
                        profiles_topic=f"profiles-{tag}", topic_partitions=2)  # fmt: skip
    env = {
        **os.environ, "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.url, "IDSTREAM_REDIS_URL": redis_url,
        "IDSTREAM_TOUCH_TOPICS": json.dumps([first]), "IDSTREAM_STATE_FILE": str(tmp_path / "runtime.json"),
    }  # fmt: skip
    touches = unique(generate(150, seed=3).touches)
    lines = [TouchEvent.from_touch(t).model_dump_json() for t in touches]
    head, rest = lines[:300], lines[300:]
    assert len(rest) > 300
    try:
        ensure_topics(settings, broker.url)
        ingest = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "ingest", "-", "--delivery-timeout", "8"], env=env, cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert ingest.stdin is not None
        try:
            ingest.stdin.write("".join(line + "\n" for line in head).encode())
            ingest.stdin.flush()
            # ingest streams standard input: the first lines reach the topic while it still reads
            wait_for(lambda: len(read_topic(broker.url, first)) == len(head), 60, "the first lines on the topic")
            time.sleep(0.5)  # and their acknowledgements on the way back
            broker.process.send_signal(signal.SIGSTOP)
            # the rest while frozen; 8 s of delivery timeout, and some slack
            out, err = ingest.communicate("".join(line + "\n" for line in rest).encode(), timeout=90)
        finally:
            if ingest.poll() is None:
                ingest.kill()
                ingest.wait(10)
        broker.process.send_signal(signal.SIGCONT)
        stderr = err.decode()
        assert ingest.returncode == 1, stderr
        assert "delivered" not in out.decode()
        failure = r"idstream ingest: (\d+) of (\d+) events were not delivered to (\S+): (.*?)\. (\d+) delivered"
        found = re.search(failure, stderr)
        assert found, stderr
        missing, total, delivered = int(found[1]), int(found[2]), int(found[5])
        assert total == len(lines)
        assert found[3] == first
        assert missing + delivered == total
        assert missing >= len(rest)  # nothing sent while frozen was acknowledged
        named = found[4].split(", ")
        assert named[0] == f'line {len(head) + 1} (event_id "{touches[len(head)].event_id}")', named
        assert len(named) == 5
        assert named[-1].endswith(f"and {missing - 5} more")
        assert [int(n.split()[1]) for n in named] == list(range(len(head) + 1, len(head) + 6))
        assert "sending the same lines again is safe" in stderr
        for touch in touches[len(head) : len(head) + 50]:  # no identifier value in the message
            for kind, value in touch.identifiers:
                assert value not in stderr, (kind, value)
        # every acknowledged event is on the topic (the broker may also hold some it answered too late)
        assert len(read_topic(broker.url, first)) >= delivered

        # the broker answers again: a normal ingest (a file, a blank line among its lines) counts exactly
        events = tmp_path / "events.jsonl"
        events.write_text("\n".join([*lines[:200], "", *lines[200:400]]) + "\n", encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "ingest", str(events), "--topic", second], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        reported = re.search(r"delivered (\d+) events to (\S+) \(each acknowledged by the broker\)", done.stderr)
        assert reported, done.stderr
        on_topic = read_topic(broker.url, second)
        assert int(reported[1]) == len(on_topic) == 400
        assert reported[2] == second
        assert sorted(v for _, v in on_topic if v) == sorted(line.encode() for line in lines[:400])
    finally:
        broker.process.send_signal(signal.SIGCONT)
        broker.stop()


def test_ingest_with_no_answering_broker_sends_nothing_and_says_so(redis_url: str, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    env = {
        **os.environ, "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.url, "IDSTREAM_REDIS_URL": redis_url,
        "IDSTREAM_TOUCH_TOPICS": json.dumps([f"touches-{uuid.uuid4().hex[:8]}"]),
        "IDSTREAM_STATE_FILE": str(tmp_path / "runtime.json"),
    }  # fmt: skip
    try:
        broker.process.send_signal(signal.SIGSTOP)  # frozen before the first send
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "ingest", "examples/touches.jsonl", "--delivery-timeout", "3"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        broker.process.send_signal(signal.SIGCONT)
        broker.stop()
    assert done.returncode == 1, done.stderr
    assert "idstream ingest:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not re.search(r"[1-9]\d* delivered", done.stderr), done.stderr
    assert "line 1 " in done.stderr or "nothing sent" in done.stderr, done.stderr
    for line in (ROOT / "examples" / "touches.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        for ident in event.get("identifiers", []):
            assert len(ident["value"]) < 4 or ident["value"] not in done.stderr, ident
