"""The local S3 server: Tansu keeps topics and group offsets in it across a restart of both, and the parts of
S3 that Tansu's correctness rests on (conditional puts) and that our safety rests on (keys stay in the root)."""

from __future__ import annotations

import http.client
import signal
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from streams.embedded import ChildServer, start_broker
from streams.local_s3 import LocalObjectStore, main, s3_env, start_object_store
from tests.e2e import wait_for

TOPIC, GROUP, PARTITIONS = "persisted", "readers", 3
COMMITTED = {0: 17, 1: 5, 2: 30}
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalObjectStore]:
    """The object server in a thread of the test process, over a fresh directory, with bucket ``tansu``."""
    with LocalObjectStore(tmp_path / "s3") as server:
        yield server


def request(
    store: LocalObjectStore, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request: http.client sends ``path`` as given (no ``..`` normalisation, no quoting)."""
    connection = http.client.HTTPConnection(store.host, store.port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def listing(body: bytes) -> ET.Element:
    return ET.fromstring(body)  # noqa: S314 - our own server's answer in a test


# ----------------------------------------------------------------------------- Tansu on the local server


def produce_and_commit(bootstrap: str) -> list[tuple[int, bytes, bytes]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send(TOPIC, key=f"k{i % 11}".encode(), value=f"message {i}".encode()) for i in range(100)]
    producer.flush(30)
    sent = [(f.get(30).partition, f"k{i % 11}".encode(), f"message {i}".encode()) for i, f in enumerate(futures)]
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(TOPIC, p): OffsetAndMetadata(o, "", -1) for p, o in COMMITTED.items()})
    finally:
        consumer.close()
    return sent


def read_all(bootstrap: str, expected: int) -> list[tuple[int, bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen: list[tuple[int, bytes, bytes]] = []

        def poll() -> bool:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend((r.partition, r.key, r.value) for r in records)
            return len(seen) >= expected

        wait_for(poll, 60, f"{expected} messages after the restart")
        return seen
    finally:
        consumer.close()


def committed_offsets(bootstrap: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close()


def kill(server: ChildServer) -> None:
    """No goodbye: what a broker acknowledged, and what the object server answered 200 to, must be on disk."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


@pytest.mark.slow
def test_tansu_keeps_topics_messages_and_group_offsets_across_a_restart_of_broker_and_store(tmp_path: Path) -> None:
    root = tmp_path / "s3"
    s3 = start_object_store(root)
    broker = start_broker(tmp_path / "broker", storage="s3://tansu/", env=s3_env(s3.url))
    try:
        sent = produce_and_commit(broker.url)
        assert committed_offsets(broker.url) == COMMITTED
    finally:
        kill(broker)
        kill(s3)

    s3 = start_object_store(root)  # new ports, same directory
    broker = start_broker(tmp_path / "broker", storage="s3://tansu/", env=s3_env(s3.url))
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.url)
        try:
            assert TOPIC in admin.list_topics()
        finally:
            admin.close()
        received = read_all(broker.url, len(sent))
        assert sorted(received) == sorted(sent)
        for partition in range(PARTITIONS):  # and each partition in the order it was written
            assert [r for r in received if r[0] == partition] == [s for s in sent if s[0] == partition]
        assert committed_offsets(broker.url) == COMMITTED
    finally:
        broker.stop()
        s3.stop()


# ----------------------------------------------------------------------------- conditional puts


def test_if_none_match_star_creates_once_and_then_fails_with_412(store: LocalObjectStore) -> None:
    status, headers, _ = request(store, "PUT", "/tansu/meta.json", b"first", {"If-None-Match": "*"})
    assert status == 200
    etag = headers["ETag"]
    status, _, body = request(store, "PUT", "/tansu/meta.json", b"second", {"If-None-Match": "*"})
    assert status == 412
    assert b"<Code>PreconditionFailed</Code>" in body
    status, headers, body = request(store, "GET", "/tansu/meta.json")
    assert (status, body, headers["ETag"]) == (200, b"first", etag)


def test_if_match_replaces_only_the_version_named(store: LocalObjectStore) -> None:
    _, headers, _ = request(store, "PUT", "/tansu/watermark.json", b"v1", {"If-None-Match": "*"})
    v1 = headers["ETag"]
    assert request(store, "PUT", "/tansu/watermark.json", b"v2", {"If-Match": '"0123456789abcdef"'})[0] == 412
    status, headers, _ = request(store, "PUT", "/tansu/watermark.json", b"v2", {"If-Match": v1})
    assert status == 200
    v2 = headers["ETag"]
    assert v2 != v1
    assert request(store, "PUT", "/tansu/watermark.json", b"v3", {"If-Match": v1})[0] == 412  # stale now
    assert request(store, "GET", "/tansu/watermark.json")[2] == b"v2"
    assert request(store, "PUT", "/tansu/missing.json", b"x", {"If-Match": v2})[0] == 404  # as S3 answers


def test_of_many_concurrent_creates_exactly_one_wins(store: LocalObjectStore) -> None:
    statuses: list[int] = []

    def create(i: int) -> None:
        statuses.append(request(store, "PUT", "/tansu/race", f"writer {i}".encode(), {"If-None-Match": "*"})[0])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [412] * 15


def test_reads_revalidate_by_etag_and_serve_ranges(store: LocalObjectStore) -> None:
    _, headers, _ = request(store, "PUT", "/tansu/batch", b"0123456789")
    etag = headers["ETag"]
    assert request(store, "GET", "/tansu/batch", headers={"If-None-Match": etag})[0] == 304
    status, headers, body = request(store, "GET", "/tansu/batch", headers={"Range": "bytes=2-4"})
    assert (status, body, headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    status, headers, body = request(store, "HEAD", "/tansu/batch")
    assert (status, headers["Content-Length"], headers["ETag"], body) == (200, "10", etag, b"")
    assert request(store, "DELETE", "/tansu/batch")[0] == 204
    assert request(store, "GET", "/tansu/batch")[0] == 404


def test_listing_pages_through_keys_and_groups_common_prefixes(store: LocalObjectStore) -> None:
    keys = ["a/1", "a/2", "a/b/3", "a/c/4", "a/c/5", "b/6"]
    for key in keys:
        request(store, "PUT", f"/tansu/{key}", key.encode())
    seen: list[str] = []
    prefixes: list[str] = []
    token = ""
    for _ in range(10):
        query = "/tansu?list-type=2&prefix=a%2F&delimiter=%2F&max-keys=1" + (f"&continuation-token={token}")
        status, _, body = request(store, "GET", query)
        assert status == 200
        result = listing(body)
        seen += [e.text or "" for e in result.iter(f"{S3_NS}Key")]
        prefixes += [e.text or "" for e in result.findall(f"{S3_NS}CommonPrefixes/{S3_NS}Prefix")]
        if result.findtext(f"{S3_NS}IsTruncated") != "true":
            break
        token = result.findtext(f"{S3_NS}NextContinuationToken") or ""
    assert (seen, prefixes) == (["a/1", "a/2"], ["a/b/", "a/c/"])


# ----------------------------------------------------------------------------- keys and the file system


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/tansu/../../etc/passwd", "../../etc/passwd"),
        ("/tansu/..%2F..%2F..%2Fescaped", "../../../escaped"),
        ("/tansu/./a//b/%2E%2E/%25@x", "./a//b/../%@x"),
    ],
)
def test_a_key_stays_inside_the_root_whatever_it_says(
    store: LocalObjectStore, tmp_path: Path, path: str, key: str
) -> None:
    before = set(tmp_path.rglob("*"))
    assert request(store, "PUT", path, b"secret")[0] == 200
    created = [p for p in tmp_path.rglob("*") if p not in before and p.is_file()]
    assert len(created) == 1
    assert created[0].resolve().is_relative_to((tmp_path / "s3" / "buckets" / "tansu").resolve())
    assert request(store, "GET", path)[2] == b"secret"
    _, _, body = request(store, "GET", "/tansu?list-type=2")
    assert [e.text for e in listing(body).iter(f"{S3_NS}Key")] == [key]


def test_a_request_addressed_to_another_name_is_refused(store: LocalObjectStore) -> None:
    """DNS rebinding: a page whose own name now points at 127.0.0.1 sends that name as Host; it reads nothing."""
    assert request(store, "PUT", "/tansu/meta.json", b"{}")[0] == 200
    connection = http.client.HTTPConnection(store.host, store.port, timeout=10)
    try:
        connection.request("GET", "/tansu/meta.json", headers={"Host": f"attacker.example:{store.port}"})
        answer = connection.getresponse()
        assert answer.status == 421
        assert answer.read() != b"{}"
    finally:
        connection.close()
    assert request(store, "GET", "/tansu/meta.json")[0] == 200  # loopback names are served as before


def test_the_server_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "--host", "0.0.0.0"])  # noqa: S104 - the address refused
