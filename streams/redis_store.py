"""The identity graph kept in Redis: state only. Every rule runs in Python, in :mod:`identity`.

How a batch is applied (the worker's side of the one engine):

1. **Load** (one script call, ``lua/load.lua``): the index entries of the batch's identifiers, the
   *units* they point to (one per evidence group: identifiers, evidence, persons, history; and the golden
   aggregates of its identifiers), each unit's version, the erasure marks of the batch's identifiers and
   whether its event ids were applied before.
2. **Resolve**: the units go into an empty :class:`identity.IdentityGraph` and the batch is applied by the
   same code as the in-memory graph. Resolution never looks beyond the groups of an event's identifiers,
   so this view decides exactly as the whole graph would.
3. **Commit** (one script call, ``lua/commit.lua``): only if every unit read still has its version, every
   identifier read as new is still new (compare-and-set; an event another worker applied meanwhile changed
   one of those); then the
   changed units, index entries, profiles (rendered as served), redirects and applied ids are written and
   the changed units stamped with a new version. Otherwise nothing is written and the batch is loaded and
   resolved again; a batch that keeps losing takes the serial lease (bounded retries, then a serial path:
   no livelock on a hot unit).

Scripts load and compare-and-set; none decides anything. All keys share one hash tag (``{prefix}``):
one deployment lives in one Cluster slot, and deployments (prefixes) spread over a Cluster.

Keys (hashes unless said otherwise), under ``{prefix}:``

* ``idx``: identifier node -> ``unit id RS profile id [RS flag RS other profile ids]``: what a lookup reads;
  ``flag`` is ``s`` (shared) or ``c`` (contested), the others at most :data:`MAX_CLAIMS`.
* ``unit``, ``uagg``, ``uver``: unit id -> the evidence group, its identifiers' golden aggregates, its version.
* ``prof``: profile id -> ``touches RS last touch key RS`` and the golden profile as served (JSON; past 200
  bytes, zlib with a preset dictionary of the JSON every profile repeats).
* ``redirect``: retired profile id -> the id it merged into. ``erased``: keyed hash -> erasure key.
* ``seen:YYYYMMDD``: event id -> fingerprint and source, one hash per day of arrival, kept ``dedup_days``.
* ``meta``: ``stamp`` (unit versions), ``version`` (profile updates), ``erase_max``, ``reorders``.
* ``lease`` (string): the serial path's holder. ``fired`` (set): trigger ids produced.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final, NamedTuple

import orjson
import redis

from identity import (
    ApplyResult,
    ConfigurationError,
    Identifier,
    IdentityGraph,
    IdstreamError,
    InvalidInput,
    Match,
    Normalizer,
    Rejection,
    ResolutionPolicy,
    Touch,
    TransientError,
    UnsupportedEvent,
)
from identity.explain import GroupView
from identity.golden import Stored
from identity.graph import DEFAULT_ERASURE_KEY, erasure_hash, unsupported
from identity.touch import key_text
from identity.triggers import MissedCall
from streams.redis_errors import mapped

__all__ = [
    "KEY_NAMES",
    "LEGACY_KEY_NAMES",
    "MAX_CLAIMS",
    "READ_KEY_NAMES",
    "Found",
    "Preview",
    "RedisIdentityStore",
    "Refused",
    "Snapshot",
    "decode_profile",
    "node_of",
    "parse_read",
]

#: The fixed keys of one deployment (beside the daily ``seen:`` hashes and the ``fired`` set).
KEY_NAMES: Final = ("idx", "unit", "uagg", "uver", "prof", "redirect", "erased", "meta", "lease")
#: Keys of the layout before units (removed by ``idstream rebuild --force`` and :meth:`RedisIdentityStore.clear`).
LEGACY_KEY_NAMES: Final = (
    "seen", "owner", "person", "pidx", "gparent", "group", "ev", "born", "hparent", "hkey", "hsize", "agg",
    "shared", "apart", "efp",
)  # fmt: skip
#: Other persons named by one identifier's index entry (a spammed or shared value names the newest first few).
MAX_CLAIMS: Final = 100
#: Lost compare-and-set rounds before a batch takes the serial lease.
OPTIMISTIC_ATTEMPTS: Final = 4
LEASE_MS: Final = 30_000

RS, GS, FS = "\x1e", "\x1d", "\x1f"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_COMPRESS_OVER = 200  # bytes of JSON above which a stored value is zlib-compressed


def _script(name: str) -> str:
    """A Lua script with the shared helpers of ``lua/common.lua`` in front (scripts cannot share code)."""
    folder = resources.files("streams").joinpath("lua")
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + folder.joinpath(name).read_text(encoding="utf-8")


_LOAD_LUA = _script("load.lua")
_COMMIT_LUA = _script("commit.lua")
#: One person (by identifier or by profile id) in one round trip: see the script's header.
READ_LUA: Final = _script("read.lua")
READ_KEY_NAMES: Final = ("idx", "prof", "redirect")
_SNAPSHOT_LUA = _script("snapshot.lua")
_RAISE_VERSION_LUA = """
local now = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
if now < tonumber(ARGV[1]) then redis.call("HSET", KEYS[1], "version", ARGV[1]) end
"""
_RELEASE_LUA = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


def node_of(ident: Identifier) -> str:
    """An identifier as the store keeps it (its kind and value, separated by a control character)."""
    return f"{ident.kind}{FS}{ident.value}"


def _ident(node: str) -> Identifier:
    kind, _, value = node.partition(FS)
    return Identifier(kind, value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(text: str) -> tuple[int, str]:
    micros, _, event_id = text.partition("|")
    return int(micros), event_id


def unit_id(root: Identifier) -> str:
    """The id a unit is stored under: a digest of its root identifier (no value leaks into it)."""
    digest = hashlib.blake2b(node_of(root).encode(), digest_size=9).digest()
    return base64.urlsafe_b64encode(digest).decode()


#: The preset dictionary stored values are compressed with (``benchmarks/make_zdict.py``): the JSON keys and
#: values every unit, aggregate and profile repeat cost a few bits instead of being spelled out in each value.
#: A value names its dictionary in its first byte (``1``); a new dictionary gets a new file and tag.
_ZDICT = resources.files("streams").joinpath("zdict").joinpath("v1.bin").read_bytes()
_DEFLATE = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT)  # copied, primed, per value
_INFLATE = zlib.decompressobj(zdict=_ZDICT)


def _pack(value: Any) -> bytes:
    body = orjson.dumps(value)
    if len(body) <= _COMPRESS_OVER:
        return b"j" + body
    deflate = _DEFLATE.copy()
    return b"1" + deflate.compress(body) + deflate.flush()


def _unpack(raw: bytes) -> Any:
    tag = raw[:1]
    if tag == b"1":
        inflate = _INFLATE.copy()
        return orjson.loads(inflate.decompress(raw[1:]) + inflate.flush())
    return orjson.loads(zlib.decompress(raw[1:]) if tag == b"z" else raw[1:])


def _profile_record(profile: dict[str, Any], rank: tuple[int, str]) -> bytes:
    touches, last = rank
    return f"{touches}{RS}{last}{RS}".encode() + _pack(profile)


def decode_profile(record: bytes) -> dict[str, Any]:
    """The golden profile of a stored profile record."""
    body: dict[str, Any] = _unpack(record.split(RS.encode(), 2)[2])
    return body


class Snapshot(NamedTuple):
    """Profiles read atomically with the versions of their updates (see ``streams/lua/snapshot.lua``)."""

    profiles: dict[str, dict[str, Any]]  # live id -> golden profile
    live: dict[str, str]  # requested id -> live id
    last_version: int  # versions last - len(profiles) + 1 .. last belong to these profiles (then the extra ones)


class Found(NamedTuple):
    """A person read for a lookup: its live id, golden profile, and the persons claiming the identifier.

    ``candidates`` lists at most :data:`MAX_CLAIMS` other persons (the most relevant first when there are
    more); ``total`` counts every candidate.
    """

    profile_id: str
    profile: dict[str, Any]
    candidates: tuple[str, ...]
    shared: bool = False  # the identifier was found shared by several people
    total: int = 0

    @property
    def ambiguous(self) -> bool:
        return self.shared or self.total > 1


def parse_read(raw: Any) -> Found | None:
    """The answer of the read script (``streams/lua/read.lua``) as a :class:`Found`."""
    if not raw:
        return None
    record, pid_raw, flag_raw, others_raw, total_raw = raw
    pid, flag = _text(pid_raw), _text(flag_raw)
    profile = decode_profile(record)
    listed = [_text(o) for o in others_raw or ()]
    others = tuple(sorted({o for o in listed if o != pid}))  # ranked for display by the lookup API
    capped = _text(total_raw)
    beyond = int(capped) - len(listed) if capped else 0  # claimants past the cap, not read
    if flag == "s":
        own = sum(len(values) for values in profile["identifiers"].values())
        holder = (pid,) if own > 1 else ()  # a person of its own is no one's
        candidates = (*holder, *others)
        return Found(pid, profile, candidates, shared=True, total=len(candidates) + beyond)
    return Found(pid, profile, (pid, *others), total=1 + len(others) + beyond)


def _rank(view: IdentityGraph, members: frozenset[Identifier]) -> tuple[int, str]:
    """A person's (touches, key of its last touch): the header of its profile record, what rankings read."""
    touches, last = 0, ""
    for ident in members:
        agg = view.aggregate_of(ident)
        if agg is not None:
            data = agg.serialize()
            touches += sum(data.get("c", {}).values())
            last = max(last, data.get("l", [""])[0])
    return touches, last


def _person_ranks(view: IdentityGraph, root: Identifier) -> dict[str, tuple[int, str]]:
    """Each person of a unit -> its :func:`_rank`."""
    return {pid: _rank(view, members) for pid, members in view.unit_persons(root).items()}


def _descending(text: str) -> tuple[int, ...]:
    return (*(-ord(c) for c in text), 1)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


#: A touch as the store applies it: with its identifiers normalized (accepted, rejected).
_Prepared = tuple[Touch, tuple[list[Identifier], list[Rejection]]]


class Refused(NamedTuple):
    """An event the store would not apply (the worker dead-letters it): its error, as a dead letter carries it."""

    event_id: str
    error: dict[str, Any]


class Preview(NamedTuple):
    """What applying a batch would do (:meth:`RedisIdentityStore.preview`); nothing of it was written."""

    #: per touch, in order: the engine's outcome, or why the store would refuse the event
    results: list[ApplyResult | Refused]
    #: identifiers contested after the batch (claimed by another person than their holder, not shared) that
    #: were not before it; ``ApplyResult.shared`` names the identifiers each event made shared
    contested: tuple[Identifier, ...]


class _Loaded(NamedTuple):
    view: IdentityGraph
    versions: dict[str, str]  # unit id -> version read
    units: dict[str, tuple[dict[str, Any], frozenset[str]]]  # unit id -> (unit as read, its aggregates' nodes)
    persons: dict[str, frozenset[Identifier]]
    absent: list[str]  # the batch's nodes that had no index entry
    seen: dict[str, tuple[str, str]]
    erased: dict[str, tuple[int, str]]
    erase_max: str


class _Committed(NamedTuple):
    """The profiles a commit wrote and the last of the update versions it reserved for them."""

    profiles: dict[str, dict[str, Any]]
    last_version: int
    redirects: dict[str, str]  # retired id -> its survivor, as the batch's view knew them

    def snapshot(self, profile_ids: Sequence[str]) -> Snapshot | None:
        """The snapshot of these ids as of this commit, or None when one of them was not written by it.

        Versions ``last - len(profiles) + 1 .. last`` are within the ones the commit reserved, so an update
        with a higher version still always carries a later state.
        """
        live: dict[str, str] = {}
        for requested in profile_ids:
            pid = requested
            for _ in range(64):
                if pid in self.profiles:
                    break
                nxt = self.redirects.get(pid)
                if nxt is None:
                    return None
                pid = nxt
            else:
                return None
            live[requested] = pid
        profiles = {pid: self.profiles[pid] for pid in dict.fromkeys(live.values())}
        return Snapshot(profiles, live, self.last_version)


class RedisIdentityStore:
    """An :class:`identity.store.IdentityStore` whose state is in Redis and whose rules are :mod:`identity`'s."""

    def __init__(
        self,
        client: redis.Redis,
        policy: ResolutionPolicy | None = None,
        normalizer: Normalizer | None = None,
        prefix: str = "idstream",
        erasure_key: bytes = DEFAULT_ERASURE_KEY,
        *,
        dedup_days: int = 14,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(f"redis key prefix {prefix!r} must be 1-64 of letters, digits and _.:-")
        if dedup_days < 1:
            raise ConfigurationError("the applied-event retention (IDSTREAM_DEDUP_DAYS) must be at least 1 day")
        self.client = client
        self.policy = policy or ResolutionPolicy()
        self.normalizer = normalizer or Normalizer()
        self.prefix = prefix
        self.dedup_days = dedup_days
        self.clock = clock
        self._key = {name: f"{{{prefix}}}:{name}" for name in (*KEY_NAMES, "fired", "missed", "missed_data")}
        self.keys = [self._key[name] for name in KEY_NAMES]
        self.read_keys = [self._key[name] for name in READ_KEY_NAMES]
        self._load = client.register_script(_LOAD_LUA)
        self._commit = client.register_script(_COMMIT_LUA)
        self._read = client.register_script(READ_LUA)
        self._snapshot = client.register_script(_SNAPSHOT_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._erasure_key = erasure_key
        self._erase_max = ""  # the last erasure's key as this process last read it
        #: Identifiers in the largest unit (evidence group) the last apply_batch wrote: the blob watch.
        self.largest_component = 0
        #: Compare-and-set rounds lost to other workers, and batches that took the serial path (metrics).
        self.conflicts = 0
        self.serial_batches = 0
        self._committed: _Committed | None = None  # what the last commit wrote, for the snapshot after it

    # ------------------------------------------------------------------ keys

    def _seen_keys(self) -> list[str]:
        """Today's applied-id hash first, then the older ones still within the retention."""
        today = self.clock().astimezone(UTC).date()
        days = (today - timedelta(days=n) for n in range(self.dedup_days))
        return [f"{{{self.prefix}}}:seen:{day:%Y%m%d}" for day in days]

    # ------------------------------------------------------------------ writing

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        """Apply touches in order, atomically: load, resolve with the engine, compare-and-set."""
        self.largest_component = 0
        self._committed = None
        if not touches:
            return []
        prepared = [self._prepare(touch) for touch in touches]
        for _ in range(OPTIMISTIC_ATTEMPTS):
            results = self._attempt(prepared, "")
            if results is not None:
                return results
            self.conflicts += 1
            time.sleep(random.uniform(0.0, 0.005))  # noqa: S311 - jitter, not secrecy
        return self._serially(prepared)

    def _prepare(self, touch: Touch) -> _Prepared:
        """A touch checked as the store takes it, with its identifiers normalized; raises for one it refuses."""
        if not self.policy.applies(touch.type):
            raise UnsupportedEvent(unsupported(touch))
        touch = self.policy.prepare(touch)
        if touch.key[0] < 0:
            raise InvalidInput(f"event {touch.event_id!r} occurred before 1970")
        if _CONTROL.search(touch.event_id):
            raise InvalidInput(f"event id {touch.event_id!r} contains control characters")
        accepted, bad = self.normalizer.normalize_many(touch.identifiers)
        return touch, (list(accepted), list(bad))

    def _serially(self, prepared: list[tuple[Touch, tuple[list[Identifier], list[Rejection]]]]) -> list[ApplyResult]:
        """The serial path: hold the lease (other commits wait for it), then load, resolve and commit."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + LEASE_MS / 1000
        self.serial_batches += 1
        while time.monotonic() < deadline:
            with mapped("lease"):
                held = self.client.set(self._key["lease"], token, nx=True, px=LEASE_MS)
            if not held:
                time.sleep(random.uniform(0.002, 0.02))  # noqa: S311 - jitter, not secrecy
                continue
            try:
                for _ in range(OPTIMISTIC_ATTEMPTS):  # only an erasure elsewhere can still move under the lease
                    results = self._attempt(prepared, token)
                    if results is not None:
                        return results
            finally:
                with mapped("lease"):
                    self._release(keys=[self._key["lease"]], args=[token])
        raise TransientError("the serial lease stayed taken while a contended batch waited for it")

    def _attempt(
        self, prepared: list[tuple[Touch, tuple[list[Identifier], list[Rejection]]]], token: str
    ) -> list[ApplyResult] | None:
        loaded = self._read_batch(prepared)
        view = loaded.view
        results = [view.apply(touch, normalized) for touch, normalized in prepared]
        args, erasing, written = self._changes(loaded, token)
        keys = [self._key[n] for n in ("idx", "unit", "uagg", "uver", "prof", "redirect", "erased", "meta", "lease")]
        with mapped("commit"):
            done, last_version = self._commit(keys=[*keys, self._seen_keys()[0]], args=args)
        if not int(done):
            return None
        self._committed = _Committed(written, int(last_version), view.redirects)
        if erasing:
            with mapped("erasure"):
                self.client.slowlog_reset()  # the slow log keeps script arguments: the erased values among them
        return results

    def _read_batch(self, prepared: list[tuple[Touch, tuple[list[Identifier], list[Rejection]]]]) -> _Loaded:
        nodes: list[str] = []
        listed: set[str] = set()
        for _, (accepted, _bad) in prepared:
            for ident in accepted:
                node = node_of(ident)
                if node not in listed:
                    listed.add(node)
                    nodes.append(node)
        eids = list(dict.fromkeys(t.event_id for t, _ in prepared))
        oldest = key_text(min(t.key for t, _ in prepared))
        hashes = [erasure_hash(self._erasure_key, _ident(n)) for n in nodes] if oldest <= self._erase_max else []
        keys = [self._key[n] for n in ("idx", "unit", "uagg", "uver", "erased", "meta")] + self._seen_keys()
        with mapped("load"):
            values, units, gone, erase_max, seen = self._load(
                keys=keys, args=[len(nodes), *nodes, len(hashes), *hashes, *eids]
            )
        self._erase_max = _text(erase_max) if erase_max else ""
        if (
            not hashes and nodes and self._erase_max and oldest <= self._erase_max
        ):  # an erasure landed since: read its marks
            return self._read_batch(prepared)
        view = IdentityGraph(self.policy, self.normalizer, self._erasure_key, aggregate=Stored)
        if self._erase_max:
            view.erase_max = _key(self._erase_max)
        erased: dict[str, tuple[int, str]] = {}
        for digest, held in zip(hashes, _list(gone), strict=False):
            if held:
                erased[digest] = _key(_text(held))
                view.load_erased(digest, erased[digest])
        versions: dict[str, str] = {}
        raw_units: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
        persons: dict[str, frozenset[Identifier]] = {}
        for gid_raw, unit_raw, agg_raw, version in _list(units):
            gid = _text(gid_raw)
            versions[gid] = _text(version)
            unit = _unpack(unit_raw)
            root = view.load_unit(unit)
            aggs = _unpack(agg_raw) if agg_raw else {}
            for node, agg in aggs.items():
                view.load_aggregate(_ident(node), Stored(agg))
            raw_units[gid] = (unit, frozenset(aggs))
            persons.update(view.unit_persons(root))
        seen_before: dict[str, tuple[str, str]] = {}
        for eid, held in zip(eids, _list(seen), strict=True):
            if held:
                text = _text(held)
                seen_before[eid] = (text[:16], text[16:])
                view.load_seen(eid, text[:16], text[16:])
        view.folded.clear()
        view.born.clear()
        absent = [n for n, v in zip(nodes, _list(values), strict=True) if not v]
        return _Loaded(view, versions, raw_units, persons, absent, seen_before, erased, self._erase_max)

    def _index(self, view: IdentityGraph, root: Identifier, gid: str) -> dict[str, str]:
        """The index entries of one unit's identifiers (what a lookup reads for each).

        A contested or shared identifier names the other persons with a claim on it: all of them up to
        :data:`MAX_CLAIMS`, past that the first :data:`MAX_CLAIMS` as the lookup API ranks them (most
        touches, then the newest last touch, then by id) and, in a fifth field, how many there are in all.
        """
        claims = view.claims(root)
        out = {}
        ranks: dict[str, tuple[int, str]] | None = None
        for ident in view.unit_nodes(root):
            pid = view.lookup(ident)
            claim = claims.get(ident)
            if claim is None:
                out[node_of(ident)] = f"{gid}{RS}{pid}"
                continue
            shared, others = claim
            entry = f"{gid}{RS}{pid}{RS}{'s' if shared else 'c'}{RS}"
            hub = view.hub(ident)
            if hub is not None:  # a hub names the newest persons seen with it and counts them all
                count = hub[0]
                out[node_of(ident)] = entry + GS.join(sorted(others)) + (f"{RS}{count}" if count > len(others) else "")
                continue
            if len(others) <= MAX_CLAIMS:
                out[node_of(ident)] = entry + GS.join(sorted(others))
                continue
            if ranks is None:
                ranks = _person_ranks(view, root)
            first = sorted(others, key=lambda o: (-ranks[o][0], _descending(ranks[o][1]), o))[:MAX_CLAIMS]
            out[node_of(ident)] = entry + GS.join(first) + f"{RS}{len(others)}"
        return out

    def _changes(self, loaded: _Loaded, token: str) -> tuple[list[Any], bool, dict[str, dict[str, Any]]]:
        """The commit script's arguments (what was read, then what to write), whether it erases, and the
        profiles it writes."""
        view = loaded.view
        unit_set: list[Any] = []
        agg_set: list[Any] = []
        agg_del: list[str] = []
        stamped: list[str] = []
        index: dict[str, str] = {}
        persons: dict[str, frozenset[Identifier]] = {}
        live: set[str] = set()
        same_shape: set[str] = set()  # units read whose structure did not change (so neither did their index)
        folded = view.folded
        for root in view.unit_roots():
            gid = unit_id(root)
            live.add(gid)
            exported = view.export_unit(root)
            nodes = view.unit_nodes(root)
            aggs: dict[str, Any] = {}
            for ident in nodes:
                agg = view.aggregate_of(ident)
                if agg is not None:
                    aggs[node_of(ident)] = agg.serialize()
            before = loaded.units.get(gid)
            unit_persons = view.unit_persons(root)
            persons.update(unit_persons)
            if before is not None and before[0] == exported:
                same_shape.add(gid)
                # unchanged: the same identifiers with aggregates too, none of them folded into
                if before[1] == aggs.keys() and (not folded or folded.isdisjoint(nodes)):
                    continue
            self.largest_component = max(self.largest_component, len(nodes))
            stamped.append(gid)
            unit_set += [gid, _pack(exported)]
            if aggs:
                agg_set += [gid, _pack(aggs)]
            elif before is not None and before[1]:
                agg_del.append(gid)
            # the same structure names the same persons; only a long claim list is ranked by touches
            if gid not in same_shape or len(unit_persons) > MAX_CLAIMS + 1:
                index.update(self._index(view, root, gid))
        dropped = [gid for gid in loaded.units if gid not in live]
        entries: dict[str, str] = {}  # what the index held for the units read whose structure changed
        for gid, (unit, _aggs) in loaded.units.items():
            if gid not in same_shape:
                scratch = IdentityGraph(self.policy, self.normalizer, self._erasure_key, aggregate=Stored)
                entries.update(self._index(scratch, scratch.load_unit(unit), gid))
        idx_set: list[str] = []
        for node, entry in index.items():
            if entries.get(node) != entry:
                idx_set += [node, entry]
        kept = {node_of(i) for nodes in persons.values() for i in nodes}
        idx_del = [node for node in entries if node not in kept]
        folded_by = {view.lookup(i) for i in view.folded}
        prof_set: list[Any] = []
        written: dict[str, dict[str, Any]] = {}
        for pid, members in persons.items():
            if loaded.persons.get(pid) == members and pid not in folded_by:
                continue
            profile = view.live_profile(pid)
            if profile is None:  # pragma: no cover - every listed person is live
                continue
            prof_set += [pid, _profile_record(profile, _rank(view, members))]
            written[pid] = profile
        prof_del = [pid for pid in loaded.persons if pid not in persons]
        redirect_set: list[str] = []
        for old, new in view.redirects.items():
            if old not in persons:
                redirect_set += [old, new]
        # a person (re)created here drops the redirect it had, even if it merged or was erased since
        reborn = view.born - view.redirects.keys()
        redirect_del = sorted({pid for pid in persons if pid not in loaded.persons} | reborn)
        seen_set: list[str] = []
        for eid, (fingerprint, source) in view.seen_ids().items():
            if eid not in loaded.seen:
                seen_set += [eid, fingerprint + source]
        erased_pairs: list[str] = []
        for digest, key in view.erased().items():
            if loaded.erased.get(digest) != key:
                erased_pairs += [digest, key_text(key)]
        new_max = key_text(view.erase_max) if view.erase_max[0] >= 0 else ""
        erase_max = new_max if new_max > loaded.erase_max else ""
        args: list[Any] = [token, loaded.erase_max, self.dedup_days * 86_400 + 86_400]
        args += [len(loaded.versions)] + [x for gid, v in loaded.versions.items() for x in (gid, v)]
        args += [len(loaded.absent), *loaded.absent]
        for pairs, fields in (
            (idx_set, idx_del),
            (unit_set, dropped),
            (agg_set, agg_del + [g for g in dropped if g not in agg_del]),
            (prof_set, prof_del),
            (redirect_set, redirect_del),
            (erased_pairs, []),  # each mark written only if it covers newer data than the one held
            (seen_set, []),
        ):
            args += [len(pairs) // 2, *pairs, len(fields), *fields]
        args += [len(stamped), *stamped, len(dropped), *dropped, erase_max, view.reorders, len(written)]
        return args, bool(erased_pairs or erase_max), written

    def apply(self, touch: Touch) -> ApplyResult:
        return self.apply_batch([touch])[0]

    # ------------------------------------------------------------------ previewing (a dry run: nothing written)

    def preview(self, touches: Sequence[Touch]) -> Preview:
        """What :meth:`apply_batch` would do with these touches now, writing nothing.

        The same load (``lua/load.lua``, which only reads) and the same engine: the units the batch touches go
        into a scratch :class:`identity.IdentityGraph`, the touches are applied to it in order, and the graph is
        discarded; nothing is committed. Event ids applied before answer ``duplicate``. An event the store
        refuses is a :class:`Refused`, as the worker's one-by-one fallback would dead-letter it, and the
        others are resolved without it.
        """
        results: list[ApplyResult | Refused | None] = [None] * len(touches)
        prepared: list[tuple[int, _Prepared]] = []
        for i, touch in enumerate(touches):
            try:
                prepared.append((i, self._prepare(touch)))
            except (InvalidInput, UnsupportedEvent) as exc:
                results[i] = Refused(touch.event_id, exc.to_dict())
        loaded: _Loaded | None = None
        while prepared:
            loaded = self._read_batch([p for _, p in prepared])
            failed = self._resolve_preview(loaded.view, prepared, results)
            if failed is None:
                break
            # the worker applies a failing batch event by event and dead-letters the one that fails: resolve
            # the rest again, on a fresh load, without it
            prepared = [(i, p) for i, p in prepared if i != failed]
            loaded = None
        done = [r for r in results if r is not None]
        if len(done) != len(touches):  # pragma: no cover - every touch is answered or refused above
            raise RuntimeError("a previewed touch got no answer")
        return Preview(done, self._newly_contested(loaded) if loaded is not None else ())

    @staticmethod
    def _resolve_preview(
        view: IdentityGraph, prepared: list[tuple[int, _Prepared]], results: list[ApplyResult | Refused | None]
    ) -> int | None:
        """Apply the prepared touches to the scratch view; the index of the one the engine failed on, if any."""
        for i, (touch, normalized) in prepared:
            try:
                results[i] = view.apply(touch, normalized)
            except (TransientError, ConfigurationError):
                raise
            except IdstreamError as exc:
                results[i] = Refused(touch.event_id, exc.to_dict())
                return i
            except Exception as exc:  # what the worker's dead letter says of an error that is not idstream's
                results[i] = Refused(touch.event_id, {"code": "store_error", "message": str(exc)[:500]})
                return i
        return None

    def _newly_contested(self, loaded: _Loaded) -> tuple[Identifier, ...]:
        """Identifiers contested in the view after the batch that were not in the units as loaded (the claims
        the index would write with flag ``c``)."""

        def contested(graph: IdentityGraph, roots: Sequence[Identifier]) -> set[Identifier]:
            return {x for root in roots for x, (shared, others) in graph.claims(root).items() if others and not shared}

        before = IdentityGraph(self.policy, self.normalizer, self._erasure_key, aggregate=Stored)
        roots = [before.load_unit(unit) for unit, _aggs in loaded.units.values()]
        after = contested(loaded.view, loaded.view.unit_roots()) - contested(before, roots)
        return tuple(sorted(after, key=lambda i: (i.kind, i.value)))

    def apply_many(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        return [self.apply(t) for t in touches]

    # ------------------------------------------------------------------ reading

    def lookup(self, ident: Identifier) -> str | None:
        with mapped("lookup"):
            entry = self.client.hget(self._key["idx"], node_of(ident))
        return _text(entry).split(RS)[1] if entry is not None else None

    def match(self, ident: Identifier) -> Match | None:
        found = self.read_identifier(ident)
        return Match(found.profile_id, found.candidates, found.shared) if found else None

    def _unit_view(self, ident: Identifier) -> IdentityGraph | None:
        """A graph holding the unit of one identifier (explanations)."""
        with mapped("lookup"):
            entry = self.client.hget(self._key["idx"], node_of(ident))
            if entry is None:
                return None
            gid = _text(entry).split(RS)[0]
            unit_raw = self.client.hget(self._key["unit"], gid)
        if unit_raw is None:
            return None
        view = IdentityGraph(self.policy, self.normalizer, self._erasure_key, aggregate=Stored)
        view.load_unit(_unpack(unit_raw if isinstance(unit_raw, bytes) else unit_raw.encode()))
        return view

    def group_view(self, ident: Identifier) -> GroupView | None:
        """The evidence group of an identifier, as :mod:`identity.explain` reads it (two round trips)."""
        view = self._unit_view(ident)
        return view.group_view(ident) if view is not None else None

    def any_identifier(self, profile_id: str) -> Identifier | None:
        """One identifier of a live or retired profile id (to find its evidence group)."""
        profile = self.profile(profile_id)
        if profile is None:
            return None
        for kind, values in profile["identifiers"].items():
            if values:
                return Identifier(kind, values[0])
        return None

    def shared(self) -> frozenset[Identifier]:
        """The identifiers found shared by several people (they link nothing)."""
        out = set()
        for node, entry in self.client.hscan_iter(self._key["idx"], count=1000):
            fields = _text(entry).split(RS)
            if len(fields) > 2 and fields[2] == "s":
                out.add(_ident(_text(node)))
        return frozenset(out)

    def is_erased(self, ident: Identifier) -> bool:
        """Was this identifier erased (and not seen again since)?"""
        node = node_of(ident)
        return not self.client.hexists(self._key["idx"], node) and bool(
            self.client.hexists(self._key["erased"], erasure_hash(self._erasure_key, ident))
        )

    def read_identifier(self, ident: Identifier) -> Found | None:
        """The person holding an identifier, its profile and the persons contesting it: one round trip."""
        with mapped("lookup"):
            raw = self._read(keys=self.read_keys, args=["node", node_of(ident)])
        return parse_read(raw)

    def lookup_raw(self, kind: str, raw: str) -> str | None:
        ident = self.normalizer.normalize(kind, raw)
        return self.lookup(ident) if isinstance(ident, Identifier) else None

    def resolve(self, profile_id: str) -> str | None:
        for _ in range(64):
            if self.client.hexists(self._key["prof"], profile_id):
                return profile_id
            nxt = self.client.hget(self._key["redirect"], profile_id)
            if nxt is None:
                return None
            profile_id = _text(nxt)
        return None

    def profile(self, profile_id: str) -> dict[str, Any] | None:
        with mapped("lookup"):
            raw = self._read(keys=self.read_keys, args=["pid", profile_id])
        found = parse_read(raw)
        return found.profile if found else None

    def snapshot(self, profile_ids: Sequence[str], extra_versions: int = 0) -> Snapshot:
        """The live profiles of these ids and their update versions, read in one atomic script call.

        ``extra_versions`` more versions are reserved after the profiles' (for erased profiles).
        """
        if not profile_ids and not extra_versions:
            return Snapshot({}, {}, 0)
        committed, self._committed = self._committed, None
        if committed is not None and not extra_versions:
            fresh = committed.snapshot(profile_ids)
            if fresh is not None:
                return fresh
        keys = [self._key[name] for name in ("prof", "redirect", "meta")]
        with mapped("snapshot"):
            last, pairs, records = self._snapshot(keys=keys, args=[extra_versions, *profile_ids])
        live = {_text(requested): _text(pid) for requested, pid in _list(pairs)}
        profiles = {_text(pid): decode_profile(record) for pid, record in _list(records)}
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

    def add_pending(self, calls: Sequence[MissedCall]) -> None:
        """Remember missed calls until their windows close (idempotent by event id)."""
        if not calls:
            return
        with mapped("triggers"):
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self._key["missed"], {c.event_id: c.due for c in calls})
            pipe.hset(self._key["missed_data"], mapping={c.event_id: orjson.dumps(
                [c.profile_id, c.called_at, c.due, c.data]) for c in calls})  # fmt: skip
            pipe.execute()

    def due_pending(self, now: float, limit: int = 200) -> list[MissedCall]:
        """Missed calls whose windows have closed, oldest first."""
        with mapped("triggers"):
            found = self.client.zrangebyscore(self._key["missed"], "-inf", now, start=0, num=limit)
            ids = [_text(i) for i in found if isinstance(i, bytes | str)]
            raw = self.client.hmget(self._key["missed_data"], ids) if ids else []
        out = []
        for eid, held in zip(ids, raw, strict=True):
            if held is None:  # its details are gone: decided as nobody's, so it cannot block the queue
                out.append(MissedCall(eid, "", "1970-01-01T00:00:00+00:00", 0.0, {}))
                continue
            pid, called_at, due, data = orjson.loads(held)
            out.append(MissedCall(eid, pid, called_at, float(due), data))
        return out

    def drop_pending(self, event_ids: Sequence[str]) -> None:
        """Forget missed calls that were decided (fired or returned)."""
        if event_ids:
            with mapped("triggers"):
                pipe = self.client.pipeline(transaction=True)
                pipe.zrem(self._key["missed"], *event_ids)
                pipe.hdel(self._key["missed_data"], *event_ids)
                pipe.execute()

    def _records(self) -> Iterator[dict[str, Any]]:
        for _pid, raw in self.client.hscan_iter(self._key["prof"], count=1000):
            yield decode_profile(raw)

    def persons(self) -> dict[str, frozenset[Identifier]]:
        return {
            p["profile_id"]: frozenset(Identifier(k, v) for k, values in p["identifiers"].items() for v in values)
            for p in self._records()
        }

    def profiles(self) -> Iterator[dict[str, Any]]:
        yield from sorted(self._records(), key=lambda p: str(p["profile_id"]))

    def applied_among(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids the workers applied within the dedup window (the ingest API's duplicates)."""
        keys = self._seen_keys()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, list(event_ids))
        found: set[str] = set()
        for held in pipe.execute():
            found.update(eid for eid, value in zip(event_ids, held, strict=True) if value is not None)
        return found

    def applied_events(self) -> int:
        """Event ids applied within the retention (``dedup_days``)."""
        return sum(int(self.client.hlen(key)) for key in self._seen_keys())

    @property
    def redirects(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self._key["redirect"]).items()}

    @property
    def reorders(self) -> int:
        return int(self.client.hget(self._key["meta"], "reorders") or 0)

    def __len__(self) -> int:
        return int(self.client.hlen(self._key["prof"]))

    def _all_keys(self) -> list[str]:
        legacy = [f"{{{self.prefix}}}:{name}" for name in LEGACY_KEY_NAMES]
        days = [_text(k) for k in self.client.scan_iter(match=f"{{{self.prefix}}}:seen:*", count=1000)]
        extra = [self._key[name] for name in ("fired", "missed", "missed_data")]
        return [*self.keys, *extra, *legacy, *days]

    def is_empty(self) -> bool:
        """No key of this deployment exists (not even an applied event id, nor a key of the old layout)."""
        return not self.client.exists(*self._all_keys())

    def has_legacy_keys(self) -> bool:
        """Keys of the layout before units exist (``idstream rebuild --force`` replaces them)."""
        return bool(self.client.exists(*(f"{{{self.prefix}}}:{name}" for name in LEGACY_KEY_NAMES)))

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
                if old in known or old in wanted or self.client.hexists(self._key["prof"], old):
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
        """Delete this deployment's keys, those of the old layout included (tests, `idstream rebuild --force`)."""
        self.client.delete(*self._all_keys())
