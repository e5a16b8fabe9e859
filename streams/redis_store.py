"""The identity graph in Redis: the same semantics as :class:`identity.IdentityGraph`, shared by workers.

Normalization and the store-neutral golden contributions are computed here, in Python; the graph
itself changes only inside one Lua script call per batch (``streams/lua/resolve.lua``), so a batch
is atomic, two workers writing at once can neither lose nor double a merge, and a redelivered event
changes nothing. All keys share one hash tag (``{prefix}``), so the script is Cluster-legal.

Memory: see ``benchmarks/bench_redis_store.py`` for bytes per identifier and per profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final, NamedTuple

import orjson
import redis

from identity import (
    ApplyResult,
    ConfigurationError,
    Conflict,
    Identifier,
    InvalidInput,
    Match,
    Normalizer,
    ProfileChange,
    Rejection,
    ResolutionPolicy,
    Touch,
    TransientError,
    UnsupportedEvent,
)
from identity.explain import EvidenceRecord, GroupView
from identity.golden import contribution, render
from identity.graph import APPLIED_TYPES, DEFAULT_ERASURE_KEY, erasure_hash
from identity.touch import TouchType, key_text
from streams.redis_errors import mapped

__all__ = [
    "KEY_NAMES",
    "READ_KEY_NAMES",
    "Found",
    "RedisIdentityStore",
    "Snapshot",
    "parse_read",
    "render_person",
]

#: The hashes (and one set) that hold a graph, in the order the script takes them.
KEY_NAMES: Final = (
    "seen", "owner", "person", "pidx", "redirect", "gparent", "group", "ev",
    "born", "hparent", "hkey", "hsize", "agg", "meta", "shared", "apart", "erased", "efp",
)  # fmt: skip

# Separators of the stored records (identifier values and event ids never contain control characters):
# RS between fields, GS between list items, FS between an identifier's kind and value, and the
# signature of an identifier set (its mode "0" auto, "1" link, "2" unlink, SIG_FLAG, nodes joined by SIG_SEP).
RS, GS, FS = "\x1e", "\x1d", "\x1f"
SIG_FLAG, SIG_SEP = "\x1c", "\x1b"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MODES: Final = {TouchType.IDENTITY_LINK: 1, TouchType.IDENTITY_UNLINK: 2}


def _script(name: str) -> str:
    """A Lua script with the shared helpers of ``lua/common.lua`` in front (scripts cannot share code)."""
    folder = resources.files("streams").joinpath("lua")
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + folder.joinpath(name).read_text(encoding="utf-8")


_RESOLVE_LUA = _script("resolve.lua")
#: One person (by identifier or by profile id) in one round trip: see the script's header.
READ_LUA: Final = _script("read.lua")
READ_KEY_NAMES: Final = ("owner", "person", "pidx", "redirect", "gparent", "group", "ev", "agg", "shared")
_SNAPSHOT_LUA = _script("snapshot.lua")
_RAISE_VERSION_LUA = """
local now = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
if now < tonumber(ARGV[1]) then redis.call("HSET", KEYS[1], "version", ARGV[1]) end
"""


def _node(ident: Identifier) -> str:
    return f"{ident.kind}{FS}{ident.value}"


def _ident(node: str) -> Identifier:
    kind, _, value = node.partition(FS)
    return Identifier(kind, value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _person(raw: bytes | str) -> tuple[str, str, list[str]]:
    """A stored person record: (profile id, creation key, nodes)."""
    pid, created, _hroot, _counts, nodes = _text(raw).split(RS)
    return pid, created, nodes.split(GS) if nodes else []


class Snapshot(NamedTuple):
    """Profiles read atomically with the versions of their updates (see ``streams/lua/snapshot.lua``)."""

    profiles: dict[str, dict[str, Any]]  # live id -> golden profile
    live: dict[str, str]  # requested id -> live id
    last_version: int  # versions last - len(profiles) + 1 .. last belong to these profiles (then the extra ones)


class Found(NamedTuple):
    """A person read for a lookup: its live id, golden profile, and every person claiming the identifier."""

    profile_id: str
    profile: dict[str, Any]
    candidates: tuple[str, ...]
    shared: bool = False  # the identifier was found shared by several people

    @property
    def ambiguous(self) -> bool:
        return self.shared or len(self.candidates) > 1


def node_of(ident: Identifier) -> str:
    """An identifier as the graph stores it (its kind and value, separated by a control character)."""
    return _node(ident)


def render_person(
    policy: ResolutionPolicy, pid: str, created: str, nodes: list[str], aggs: Sequence[Any]
) -> dict[str, Any]:
    """A golden profile from a stored person record and its identifiers' aggregates."""
    identifiers: dict[str, list[str]] = {}
    for node in nodes:
        ident = _ident(node)
        identifiers.setdefault(ident.kind, []).append(ident.value)
    created_us = int(created.split("|", 1)[0])
    return {
        "profile_id": pid,
        "created_at": (_EPOCH + timedelta(microseconds=created_us)).isoformat(),
        "identifiers": {k: sorted(identifiers[k]) for k in sorted(identifiers, key=policy.kind_rank)},
        **render((orjson.loads(a) for a in aggs if a is not None), policy),
    }


def parse_read(raw: Any, policy: ResolutionPolicy) -> Found | None:
    """The answer of the read script (``streams/lua/read.lua``) as a :class:`Found`."""
    if not raw:
        return None
    record, aggs, contesting, shared = raw
    pid, created, nodes = _person(record)
    others = sorted({_text(c) for c in _list(contesting)} - {pid})
    profile = render_person(policy, pid, created, nodes, _list(aggs))
    if shared:
        holder = (pid,) if len(nodes) > 1 else ()  # a person of its own is no one's
        return Found(pid, profile, (*holder, *others), shared=True)
    return Found(pid, profile, (pid, *others))


def _list(value: Any) -> list[Any]:
    """cjson encodes an empty Lua table as {}: read it as an empty list."""
    return value if isinstance(value, list) else []


class RedisIdentityStore:
    """An :class:`identity.store.IdentityStore` over one Redis primary."""

    def __init__(
        self,
        client: redis.Redis,
        policy: ResolutionPolicy | None = None,
        normalizer: Normalizer | None = None,
        prefix: str = "idstream",
        erasure_key: bytes = DEFAULT_ERASURE_KEY,
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(f"redis key prefix {prefix!r} must be 1-64 of letters, digits and _.:-")
        self.client = client
        self.policy = policy or ResolutionPolicy()
        self.normalizer = normalizer or Normalizer()
        self.prefix = prefix
        self.keys = [f"{{{prefix}}}:{name}" for name in KEY_NAMES]
        self._key = dict(zip(KEY_NAMES, self.keys, strict=True))
        self._key["fired"] = f"{{{prefix}}}:fired"  # trigger ids already produced (not part of the graph)
        self._resolve = client.register_script(_RESOLVE_LUA)
        self._read = client.register_script(READ_LUA)
        self._snapshot = client.register_script(_SNAPSHOT_LUA)
        self.read_keys = [self._key[name] for name in READ_KEY_NAMES]
        self._policy_json = json.dumps(
            {
                "limits": dict(self.policy.limits),
                "anchors": sorted(self.policy.anchor_kinds),
                "keep": self.policy.recent_touches,
                "path": self.policy.attribution_touches,
                "sp": dict(self.policy.shared_persons),
                "sc": dict(self.policy.shared_clusters),
                "pk": sorted(self.policy.personal_kinds),
                "prio": list(self.policy.kind_priority),
            }
        )
        self._erasure_key = erasure_key
        self._erase_max = ""  # the last erasure's key as this process last saw it (the script has the truth)
        self._ranks: dict[str, tuple[int, str]] = {}
        #: Identifiers in the largest component (evidence group) the last apply_batch wrote: the blob watch.
        self.largest_component = 0

    # ------------------------------------------------------------------ writing

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        """Apply touches in order: one atomic script call, or one per stretch between erasures."""
        self.largest_component = 0
        if not touches:
            return []
        items: list[dict[str, Any]] = []
        rejected: list[tuple[Rejection, ...]] = []
        for touch in touches:
            if touch.type not in APPLIED_TYPES:
                raise UnsupportedEvent(f"event type {touch.type.value!r} is not applied by this version of the core")
            key = touch.key
            if key[0] < 0:
                raise InvalidInput(f"event {touch.event_id!r} occurred before 1970")
            if _CONTROL.search(touch.event_id):
                raise InvalidInput(f"event id {touch.event_id!r} contains control characters")
            accepted, bad = self.normalizer.normalize_many(touch.identifiers)
            rejected.append(tuple(bad))
            ids = sorted(accepted, key=self._order)
            nodes = [_node(i) for i in ids]
            printed = touch.fingerprint + touch.source[:200]  # tells a redelivery from a reused event id
            if touch.type is TouchType.ERASE_REQUEST and nodes:
                items.append({"op": "erase", "e": touch.event_id, "k": key_text(key), "ids": nodes, "f": printed})
                continue
            mode = _MODES.get(touch.type, 0)
            items.append(
                {
                    "e": touch.event_id,
                    "k": key_text(key),
                    "m": mode,
                    "ids": nodes,
                    "sig": str(mode) + SIG_FLAG + SIG_SEP.join(sorted(nodes)),
                    "c": contribution(
                        touch, key, self.policy.trust(touch.type, touch.source), self.policy.points(touch)
                    ),
                    "x": orjson.dumps({"source": touch.source, "occurred_at": touch.occurred_at.isoformat()}).decode(),
                    "f": printed,
                }
            )
        outs: list[dict[str, Any]] = []
        start = 0
        for i, item in enumerate(items):  # an erasure runs alone, between the stretches before and after it
            if item.get("op") == "erase":
                if start < i:
                    outs.extend(self._run(items[start:i]))
                outs.extend(self._run_erasure(item))
                start = i + 1
        if start < len(items):
            outs.extend(self._run(items[start:]))
        return [self._result(t.event_id, out, bad) for t, out, bad in zip(touches, outs, rejected, strict=True)]

    def _hash(self, node: str) -> str:
        return erasure_hash(self._erasure_key, _ident(node))

    def _call(self, items: list[dict[str, Any]]) -> Any:
        with mapped("resolve"):
            raw = self._resolve(keys=self.keys, args=[self._policy_json, orjson.dumps(items)])
        return orjson.loads(raw)

    def _run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply a stretch of events; events not newer than the last erasure carry their identifiers' hashes."""
        for _ in range(3):
            for item in items:
                if "h" not in item and self._erase_max and item["k"] <= self._erase_max:
                    item["h"] = {node: self._hash(node) for node in item["ids"]}
            out = self._call(items)
            if "r" in out:
                self.largest_component = max(self.largest_component, int(out["g"]))
                return _list(out["r"])
            self._erase_max = out["stale"]  # another worker erased something since: hash and try again
        raise TransientError("the last erasure kept moving while a batch was applied")

    def _run_erasure(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """Read who holds the requested identifiers, hash everything of theirs, erase it if nothing changed."""
        for _ in range(5):
            erased = set(item["ids"])
            with mapped("erasure"):  # the same rule as every other path: a stall is retried, never a dead letter
                handles = [h for h in self.client.hmget(self._key["owner"], item["ids"]) if h is not None]
                records = self.client.hmget(self._key["person"], handles) if handles else []
            for raw in records:
                if raw is not None:
                    erased.update(_person(raw)[2])
            item["nodes"] = sorted(erased)
            item["h"] = {node: self._hash(node) for node in item["nodes"]}
            out = self._call([item])
            if "r" in out:
                self._erase_max = max(self._erase_max, item["k"])
                with mapped("erasure"):  # the slow log keeps script arguments: the erased values among them
                    self.client.slowlog_reset()
                return _list(out["r"])
            if "stale" in out:
                self._erase_max = out["stale"]
        raise TransientError("the persons to erase kept changing while the erasure was prepared")

    def apply(self, touch: Touch) -> ApplyResult:
        return self.apply_batch([touch])[0]

    def apply_many(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        return [self.apply(t) for t in touches]

    def _order(self, ident: Identifier) -> tuple[tuple[int, str], str]:
        rank = self._ranks.get(ident.kind)
        if rank is None:
            rank = self._ranks[ident.kind] = self.policy.kind_rank(ident.kind)
        return rank, ident.value

    def _result(self, eid: str, out: dict[str, Any], rejected: tuple[Rejection, ...]) -> ApplyResult:
        changes = [
            ProfileChange(
                change[0],
                change[1],
                eid,
                tuple(_list(change[2])),
                tuple(_list(change[3])),
                tuple(_ident(n) for n in _list(change[4])) if len(change) > 4 else (),
            )
            for change in _list(out.get("ch"))
        ]
        conflicts = tuple(
            Conflict(eid, kind, int(limit), pid, other, _ident(node), reason)
            for kind, limit, pid, other, node, reason in _list(out.get("cf"))
        )
        shared = tuple(_ident(n) for n in _list(out.get("sh")))
        return ApplyResult(eid, out["s"], out.get("p"), tuple(changes), conflicts, rejected, shared, out.get("dc"))

    # ------------------------------------------------------------------ reading

    def lookup(self, ident: Identifier) -> str | None:
        handle = self.client.hget(self._key["owner"], _node(ident))
        if handle is None:
            return None
        record = self.client.hget(self._key["person"], handle)
        return _person(record)[0] if record is not None else None

    def match(self, ident: Identifier) -> Match | None:
        found = self.read_identifier(ident)
        return Match(found.profile_id, found.candidates, found.shared) if found else None

    def group_view(self, ident: Identifier) -> GroupView | None:
        """The evidence group of an identifier, as :mod:`identity.explain` reads it (a few round trips)."""
        key = self._key
        root = _node(ident)
        if not self.client.hexists(key["gparent"], root):
            return None
        for _ in range(10_000):
            up = _text(self.client.hget(key["gparent"], root) or root)
            if up == root:
                break
            root = up
        _max, nodes_raw, sigs_raw = _text(self.client.hget(key["group"], root) or "").split(RS)
        nodes = nodes_raw.split(GS) if nodes_raw else []
        sigs = sigs_raw.split(GS) if sigs_raw else []
        records = []
        for raw in self.client.hmget(key["ev"], sigs) if sigs else []:
            ktext, mode, ids, meta = _text(raw or "").split(RS)
            info = json.loads(meta)
            records.append(
                EvidenceRecord(
                    tuple(_ident(n) for n in ids.split(GS)),
                    int(mode),
                    ktext.split("|", 1)[1],
                    info["source"],
                    info["occurred_at"],
                )
            )
        handles = [_text(h or "") for h in self.client.hmget(key["owner"], nodes)]
        distinct = sorted(set(handles))
        records_raw = self.client.hmget(key["person"], distinct) if distinct else []
        pids = {h: _person(r or "")[0] for h, r in zip(distinct, records_raw, strict=True)}
        owner = {_ident(n): pids[h] for n, h in zip(nodes, handles, strict=True)}
        flags = self.client.hmget(key["shared"], nodes)
        shared = frozenset(_ident(n) for n, f in zip(nodes, flags, strict=True) if f)
        apart = frozenset(
            frozenset((_ident(n), _ident(m)))
            for n, raw in zip(nodes, self.client.hmget(key["apart"], nodes), strict=True)
            if raw
            for m in _text(raw).split(GS)
        )
        return GroupView(tuple(records), owner, shared, apart)

    def any_identifier(self, profile_id: str) -> Identifier | None:
        """One identifier of a live or retired profile id (to find its evidence group)."""
        live = self.resolve(profile_id)
        handle = self.client.hget(self._key["pidx"], live) if live else None
        record = self.client.hget(self._key["person"], handle) if handle else None
        nodes = _person(record)[2] if record else []
        return _ident(nodes[0]) if nodes else None

    def shared(self) -> frozenset[Identifier]:
        """The identifiers found shared by several people (they link nothing)."""
        return frozenset(_ident(_text(n)) for n in self.client.hkeys(self._key["shared"]))

    def is_erased(self, ident: Identifier) -> bool:
        """Was this identifier erased (and not seen again since)?"""
        node = _node(ident)
        return not self.client.hexists(self._key["owner"], node) and bool(
            self.client.hexists(self._key["erased"], self._hash(node))
        )

    def read_identifier(self, ident: Identifier) -> Found | None:
        """The person holding an identifier, its profile and the persons contesting it: one round trip."""
        with mapped("lookup"):
            raw = self._read(keys=self.read_keys, args=["node", _node(ident)])
        return parse_read(raw, self.policy)

    def lookup_raw(self, kind: str, raw: str) -> str | None:
        ident = self.normalizer.normalize(kind, raw)
        return self.lookup(ident) if isinstance(ident, Identifier) else None

    def resolve(self, profile_id: str) -> str | None:
        for _ in range(64):
            if self.client.hexists(self._key["pidx"], profile_id):
                return profile_id
            nxt = self.client.hget(self._key["redirect"], profile_id)
            if nxt is None:
                return None
            profile_id = _text(nxt)
        return None

    def profile(self, profile_id: str) -> dict[str, Any] | None:
        with mapped("lookup"):
            raw = self._read(keys=self.read_keys, args=["pid", profile_id])
        found = parse_read(raw, self.policy)
        return found.profile if found else None

    def _render(self, pid: str, created: str, nodes: list[str]) -> dict[str, Any]:
        aggs = self.client.hmget(self._key["agg"], nodes) if nodes else []
        return render_person(self.policy, pid, created, nodes, aggs)

    def snapshot(self, profile_ids: Sequence[str], extra_versions: int = 0) -> Snapshot:
        """The live profiles of these ids and their update versions, read in one atomic script call.

        ``extra_versions`` more versions are reserved after the profiles' (for erased profiles).
        """
        if not profile_ids and not extra_versions:
            return Snapshot({}, {}, 0)
        keys = [self._key[name] for name in ("pidx", "person", "redirect", "agg", "meta")]
        with mapped("snapshot"):
            last, pairs, records = self._snapshot(keys=keys, args=[extra_versions, *profile_ids])
        live = {_text(requested): _text(pid) for requested, pid in _list(pairs)}
        profiles = {}
        for record, aggs in _list(records):
            pid, created, nodes = _person(record)
            profiles[pid] = render_person(self.policy, pid, created, nodes, _list(aggs))
        return Snapshot(profiles, live, int(last) - extra_versions)

    def unfired(self, trigger_ids: Sequence[str]) -> set[str]:
        """The trigger ids not marked as fired yet."""
        if not trigger_ids:
            return set()
        with mapped("triggers"):
            flags = self.client.smismember(self._key["fired"], list(trigger_ids))
        return {tid for tid, flag in zip(trigger_ids, flags, strict=True) if not flag}

    def mark_fired(self, trigger_ids: Sequence[str]) -> None:
        """Remember triggers as fired (after they were produced), so no cause fires twice."""
        if trigger_ids:
            with mapped("triggers"):
                self.client.sadd(self._key["fired"], *trigger_ids)

    def _records(self) -> Iterator[tuple[str, str, list[str]]]:
        for _handle, raw in self.client.hscan_iter(self._key["person"], count=1000):
            yield _person(raw)

    def persons(self) -> dict[str, frozenset[Identifier]]:
        return {pid: frozenset(_ident(n) for n in nodes) for pid, _created, nodes in self._records()}

    def profiles(self) -> Iterator[dict[str, Any]]:
        for record in sorted(self._records()):
            yield self._render(*record)

    @property
    def redirects(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self._key["redirect"]).items()}

    @property
    def reorders(self) -> int:
        return int(self.client.hget(self._key["meta"], "reorders") or 0)

    def __len__(self) -> int:
        return int(self.client.hlen(self._key["person"]))

    def is_empty(self) -> bool:
        """No key of this graph exists (not even the set of applied event ids)."""
        return not self.client.exists(*self.keys)

    def raise_version(self, at_least: int) -> None:
        """Make the next profile-update version exceed ``at_least`` (after a rebuild: above all published)."""
        self.client.eval(_RAISE_VERSION_LUA, 1, self._key["meta"], at_least)

    def restore_redirects(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Redirect retired profile ids to their survivors where the graph has neither the id nor a redirect.

        ``pairs`` are (retired, survivor) as announced by merges; a retired id whose survivor no longer
        resolves to a live person, or would lead back to itself, is left alone. Returns how many were added.
        """
        added = 0
        while True:  # passes until nothing changes: a survivor may itself be retired, redirected a pass later
            known = self.redirects
            wanted: dict[str, str] = {}
            for old, new in pairs:
                if old in known or old in wanted or self.client.hexists(self._key["pidx"], old):
                    continue
                live = self.resolve(new)
                if live is not None and live != old:
                    wanted[old] = new
            if not wanted:
                return added
            pipe = self.client.pipeline(transaction=True)
            for old, new in wanted.items():
                pipe.hset(self._key["redirect"], old, new)
            pipe.execute()
            added += len(wanted)

    def clear(self) -> None:
        """Delete this graph's keys (tests, and `idstream rebuild --force`)."""
        self.client.delete(*self.keys, self._key["fired"])
