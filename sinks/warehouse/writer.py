"""The warehouse sink: a batch of Kafka messages in, one database transaction out.

It reads three kinds of topic: the touch topics (visits, calls, forms, CRM stage changes), the
``profiles.updates`` topic (who is who now, merges and splits applied), and the ad-spend topic. The
streams arrive in any order, so every table is written to converge:

* touches and stage changes are keyed by ``event_id`` (a redelivery inserts nothing);
* a touch is recorded under its ``anchor``, the keyed hash of its strongest identifier, the same
  rule the golden profile folds by; ``person_identifiers`` says which profile holds each anchor now,
  newest profile version first, so a merge or a split re-homes rows by updating ``profile_id`` of
  the rows whose anchors moved, whichever of the two streams came first;
* deals and attribution are recomputed from the rows for every deal and person a batch touched;
* an ad-spend row keeps the report with the newest ``reported_at``;
* an ``erased`` update deletes the person's rows everywhere, and the erasure is remembered (keyed
  hashes only, in ``erasures``) through the newest event the warehouse knows the person by; an
  ``erase_request`` on a touch topic is remembered for the identifiers it names. Every event not newer
  than the erasure of an identifier is written as if it did not carry it (the resolver's rule): an
  event left with none writes no row, so an old event re-sent or redelivered after an erasure never
  brings a touch, a stage change, a deal or a person back, while a newer one may start a new person.

Bad ad-spend and profile messages come back as dead letters; bad touches are skipped (the resolver
already dead-letters them, once).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, and_, delete, null, or_, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from identity.attribution import (
    LEAD_TYPES,
    MARKETING_TYPES,
    MODELS,
    Channel,
    PathStep,
    assists,
    attribute,
    channel_of,
)
from identity.errors import IdstreamError, TransientError
from identity.graph import erasure_hash
from identity.normalize import Identifier, Normalizer
from identity.policy import ResolutionPolicy
from identity.touch import Touch, TouchType, event_key
from schemas import DeadLetter, InvalidMessage, ProfileUpdate, decode_spend, decode_touch
from sinks.warehouse import tables as t
from sinks.warehouse.db import chunks, from_db, insert, to_db, transient

__all__ = ["Message", "WarehouseTopics", "WarehouseWriter", "WriteStats"]

log = logging.getLogger("idstream.warehouse")

_KEY_EVENT = tuple[datetime, str]
#: An event key as the resolver orders events: (UTC microseconds since 1970, event id).
_Key = tuple[int, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The kind a profile id is hashed under in ``erasures``: no identifier kind can take this name.
_PROFILE_KIND = "@profile"


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class WarehouseTopics:
    touches: tuple[str, ...] = ("touches.site", "touches.calls", "touches.forms", "touches.crm")
    profiles: str = "profiles.updates"
    spend: str = "ad.spend"


@dataclass(slots=True)
class WriteStats:
    """What one batch did (for logs and tests)."""

    touches: int = 0
    stages: int = 0
    persons: int = 0
    retired: int = 0
    erased: int = 0
    spend: int = 0
    skipped: int = 0
    dead: int = 0
    rehomed: int = 0
    deals: int = 0
    attributed: int = 0
    #: touches and stage changes not written: every identifier they carry was erased as of their time
    refused: int = 0


@dataclass(slots=True)
class _Batch:
    touches: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: per touch or stage event id: its key and its identifiers' keyed hashes, strongest first
    identified: dict[str, tuple[_Key, tuple[str, ...]]] = field(default_factory=dict)
    #: erase requests read on the touch topics, by event id: their key and the hashes they name
    requests: dict[str, tuple[_Key, tuple[str, ...]]] = field(default_factory=dict)
    profiles: dict[str, ProfileUpdate | None] = field(default_factory=dict)  # None: a tombstone
    #: per erased profile, the newest update of it this batch held before the erasure (what it knew of it)
    superseded: dict[str, ProfileUpdate] = field(default_factory=dict)
    spend: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)


class WarehouseWriter:
    """Writes batches of messages into the warehouse; one transaction per batch."""

    def __init__(
        self,
        engine: Engine,
        policy: ResolutionPolicy,
        normalizer: Normalizer,
        erasure_key: bytes,
        topics: WarehouseTopics | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.normalizer = normalizer
        self.key = erasure_key
        self.topics = topics or WarehouseTopics()
        self._touch_topics = frozenset(self.topics.touches)

    # ------------------------------------------------------------------ public

    def write(self, batch: Sequence[Message]) -> tuple[WriteStats, list[DeadLetter]]:
        """Write a batch; returns what it did and the dead letters to publish.

        Raises :class:`TransientError` when the database is unavailable (nothing was written: retry).
        """
        parsed = self._parse(batch)
        stats = WriteStats(dead=len(parsed.dead))
        stats.skipped = (
            len(batch)
            - len(parsed.dead)
            - (len(parsed.touches) + len(parsed.stages) + len(parsed.spend) + len(parsed.profiles))
            - len(parsed.requests)
        )
        try:
            with self.engine.begin() as conn:
                self._write(conn, parsed, stats)
        except DBAPIError as exc:
            if transient(exc):
                raise TransientError(f"warehouse unavailable: {type(exc.orig).__name__}: {exc.orig}") from None
            raise
        return stats, parsed.dead

    def anchor(self, touch: Touch) -> str | None:
        """The keyed hash of the identifier a touch is recorded under (its strongest), as the golden profile does.

        Before any erasure, that is: the writer skips identifiers erased as of the touch's time.
        """
        hashes = self.hashes(touch)
        return hashes[0] if hashes else None

    def hashes(self, touch: Touch) -> tuple[str, ...]:
        """The keyed hashes of a touch's identifiers, strongest first (the order the golden profile folds by)."""
        accepted, _ = self.normalizer.normalize_many(touch.identifiers)
        if not accepted:
            return ()
        rank = self.policy.kind_rank
        ordered = sorted(set(accepted), key=lambda i: (rank(i.kind), i.value))
        return tuple(erasure_hash(self.key, i) for i in ordered)

    def profile_digest(self, profile_id: str) -> str:
        """The keyed hash an erased profile id is remembered by."""
        return erasure_hash(self.key, Identifier(_PROFILE_KIND, profile_id))

    # ------------------------------------------------------------------ parsing

    def _parse(self, batch: Sequence[Message]) -> _Batch:
        out = _Batch()
        for msg in batch:
            try:
                if msg.topic == self.topics.profiles:
                    self._parse_profile(msg, out)
                elif msg.topic == self.topics.spend:
                    self._parse_spend(msg, out)
                elif msg.topic in self._touch_topics:
                    self._parse_touch(msg, out)
            except (InvalidMessage, ValidationError, IdstreamError) as exc:
                out.dead.append(_dead_letter(msg, exc))
        return out

    def _parse_profile(self, msg: Message, out: _Batch) -> None:
        if msg.value is None:
            if msg.key:  # a tombstone: the id was retired by a merge, or erased (then it follows the erasure)
                pid = msg.key.decode()
                held = out.profiles.get(pid)
                if held is None or held.kind != "erased":
                    out.profiles[pid] = None
            return
        update_ = ProfileUpdate.model_validate_json(msg.value)
        pid = update_.profile_id
        held = out.profiles.get(pid)
        if held is not None and held.kind == "erased" and held.version > update_.version:
            return  # an older update after the erasure: it cannot bring the person back
        if update_.kind == "erased" and held is not None and held.kind != "erased":
            known = out.superseded.get(pid)
            if known is None or known.version < held.version:
                out.superseded[pid] = held
        out.profiles[pid] = update_  # the last message of a profile wins (one partition per key)

    def _parse_spend(self, msg: Message, out: _Batch) -> None:
        spend = decode_spend(msg.value or b"")
        channel = Channel.of(spend.source, spend.medium, spend.campaign)
        row = {
            "date": spend.date,
            "source": channel.source,
            "medium": channel.medium,
            "campaign": channel.campaign,
            "account": spend.account,
            "currency": spend.currency,
            "cost": spend.cost,
            "reported_at": to_db(spend.reported_at),
        }
        pk = tuple(row[k] for k in ("date", "source", "medium", "campaign", "account", "currency"))
        held = out.spend.get(pk)
        if held is None or held["reported_at"] <= row["reported_at"]:
            out.spend[pk] = row

    def _parse_touch(self, msg: Message, out: _Batch) -> None:
        try:
            touch = decode_touch(msg.value or b"").to_touch()
        except (InvalidMessage, IdstreamError):
            return  # the resolver dead-letters bad touches; counted as skipped
        if not self.policy.applies(touch.type):
            return  # nor does it apply types it does not know
        touch = self.policy.prepare(touch)
        hashes = self.hashes(touch)
        if touch.type is TouchType.ERASE_REQUEST:
            if hashes:
                out.requests[touch.event_id] = (touch.key, hashes)
            return
        anchor = hashes[0] if hashes else None  # settled at write time, without identifiers erased by then
        when = to_db(touch.occurred_at)
        crm = touch.crm
        if crm is not None:  # a CRM stage, a purchase, a declared conversion: a deal's row
            out.stages.append(
                {
                    "event_id": touch.event_id,
                    "deal_id": crm.deal_id,
                    "stage": crm.stage,
                    "previous_stage": crm.previous_stage,
                    "pipeline": crm.pipeline,
                    "amount": crm.amount,
                    "occurred_at": when,
                    "system": touch.source,
                    "anchor": anchor,
                }
            )
            out.identified[touch.event_id] = (touch.key, hashes)
        channel = channel_of(touch, self.policy.channel_rules)
        if channel is None:
            return  # manual links, unlinks and erasure requests: no history row
        utm = touch.utm
        page, project = touch.attributes.get("page"), touch.attributes.get("project")
        call = touch.call
        out.touches.append(
            {
                "event_id": touch.event_id,
                "type": touch.type.value,
                "occurred_at": when,
                "system": touch.source,
                "source": channel.source,
                "medium": channel.medium,
                "campaign": channel.campaign,
                "content": utm.content if utm else None,
                "term": utm.term if utm else None,
                "page": page if isinstance(page, str) else None,
                "project": project if isinstance(project, str) else None,
                "anchor": anchor,
                "call_status": call.status if call else None,
                "wait_s": call.wait_s if call else None,
                "talk_s": call.talk_s if call else None,
                "tracking_number": call.tracking_number if call else None,
                "operator": call.operator if call else None,
            }
        )
        out.identified[touch.event_id] = (touch.key, hashes)

    # ------------------------------------------------------------------ writing

    def _write(self, conn: Connection, batch: _Batch, stats: WriteStats) -> None:
        dirty_anchors: set[str] = set()
        affected_persons: set[str] = set()
        affected_deals: set[str] = set()

        # who is who first (never an erased profile again), then the erasures, then the rows: an erasure
        # holds for every event of this batch too, whichever order the streams brought them in
        updates: list[ProfileUpdate] = []
        erased: list[ProfileUpdate] = []
        for pid, message in batch.profiles.items():
            if message is None:
                dirty_anchors |= self._retire(conn, pid)
                affected_persons.add(pid)
                stats.retired += 1
            elif message.kind == "erased":
                erased.append(message)
            else:
                updates.append(message)
        anchors, changed = self._persons(conn, updates)
        dirty_anchors |= anchors
        affected_persons |= changed
        stats.persons = len(changed)

        if erased or batch.requests:
            deals_hit, persons_hit, moved = self._erase(conn, erased, batch.requests, batch.superseded)
            affected_deals |= deals_hit
            affected_persons |= persons_hit
            dirty_anchors |= moved
            stats.erased = len(erased)

        touches, stages = self._admit(conn, batch, stats)
        new_touches = self._insert_new(conn, t.touches, touches)
        new_stages = self._insert_new(conn, t.deal_stages, stages)
        stats.touches, stats.stages = len(new_touches), len(new_stages)
        dirty_anchors.update(r["anchor"] for r in (*new_touches, *new_stages) if r["anchor"])
        affected_deals.update(r["deal_id"] for r in new_stages)

        if dirty_anchors:
            before, after, deals_moved = self._rehome(conn, dirty_anchors)
            stats.rehomed = len(before | after)
            affected_persons |= before | after
            affected_deals |= deals_moved
        stats.deals = self._deals(conn, affected_deals)
        stats.attributed = self._attribute(conn, {p for p in affected_persons if p})
        for row in batch.spend.values():
            self._spend(conn, row)
        stats.spend = len(batch.spend)

    def _insert_new(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert rows whose event id is new; returns those (a redelivery returns nothing)."""
        if not rows:
            return []
        by_id = {r["event_id"]: r for r in rows}
        held: set[str] = set()
        for ids in chunks(by_id):
            held.update(conn.scalars(select(table.c.event_id).where(table.c.event_id.in_(ids))))
        fresh = [r for eid, r in by_id.items() if eid not in held]
        if fresh:
            conn.execute(insert(conn, table).on_conflict_do_nothing(index_elements=["event_id"]), fresh)
        return fresh

    def _persons(self, conn: Connection, updates: list[ProfileUpdate]) -> tuple[set[str], set[str]]:
        """Upsert persons from newer profile versions, and who holds which identifier.

        Returns the anchors whose holder may have changed and the profiles that changed. A few statements
        per batch, whatever its size (one per profile made the sink the bottleneck).
        """
        if updates:
            gone_for_good = self._erased_profiles(conn, {u.profile_id for u in updates})
            updates = [u for u in updates if u.profile_id not in gone_for_good]  # an old update, redelivered
        if not updates:
            return set(), set()
        ps, pi = t.persons, t.person_identifiers
        held: dict[str, int] = {}
        for group in chunks(sorted(u.profile_id for u in updates)):
            held.update(conn.execute(select(ps.c.profile_id, ps.c.version).where(ps.c.profile_id.in_(group))).all())
        fresh = [u for u in updates if held.get(u.profile_id, 0) < u.version]  # else redelivered or overtaken
        if not fresh:
            return set(), set()
        now = to_db(datetime.now(UTC))
        rows: list[dict[str, Any]] = []
        claims: list[dict[str, Any]] = []
        wanted: dict[str, set[str]] = {}
        for message in fresh:
            pid, profile = message.profile_id, message.profile or {}
            identifiers: dict[str, list[str]] = profile.get("identifiers") or {}
            last = _last_touch(profile)
            rows.append(
                {
                    "profile_id": pid,
                    "version": message.version,
                    "display_name": profile.get("display_name"),
                    "created_at": _parse_time(profile.get("created_at")),
                    "lead_at": _parse_time((profile.get("attribution") or {}).get("lead_at")),
                    "lead_score": int(profile.get("lead_score") or 0),
                    "touches": sum(int(n) for n in (profile.get("touch_counts") or {}).values()),
                    "identifiers": json.dumps(identifiers, ensure_ascii=False, sort_keys=True),
                    "updated_at": now,
                    "last_touch_at": to_db(_moment(last)) if last else None,
                    "last_event_id": last[1] if last else None,
                }
            )
            mine = wanted[pid] = set()
            for kind, values in identifiers.items():
                for value in values:
                    anchor = erasure_hash(self.key, Identifier(kind, value))
                    mine.add(anchor)
                    claims.append({"anchor": anchor, "kind": kind, "profile_id": pid, "version": message.version})
        stmt = insert(conn, ps)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["profile_id"], set_={k: stmt.excluded[k] for k in rows[0] if k != "profile_id"}
            ),
            rows,
        )
        versions = {u.profile_id: u.version for u in fresh}
        gone: list[tuple[str, str]] = []
        for group in chunks(sorted(versions)):
            query = select(pi.c.anchor, pi.c.profile_id, pi.c.version).where(pi.c.profile_id.in_(group))
            for anchor, pid, version in conn.execute(query).all():
                if version < versions[pid] and anchor not in wanted[pid]:
                    gone.append((anchor, pid))  # the identifier left this person (a split, an erasure)
        for pairs in chunks(gone):
            conn.execute(delete(pi).where(tuple_(pi.c.anchor, pi.c.profile_id).in_(pairs)))
        if claims:
            stmt = insert(conn, pi)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["anchor"],
                    set_={
                        "kind": stmt.excluded.kind,
                        "profile_id": stmt.excluded.profile_id,
                        "version": stmt.excluded.version,
                    },
                    where=pi.c.version < stmt.excluded.version,
                ),
                claims,
            )
        return {c["anchor"] for c in claims} | {a for a, _ in gone}, set(versions)

    def _retire(self, conn: Connection, pid: str) -> set[str]:
        """A tombstone: the id is no longer live. Its anchors not yet claimed by a newer profile are freed."""
        pi = t.person_identifiers
        anchors = set(conn.scalars(select(pi.c.anchor).where(pi.c.profile_id == pid)))
        conn.execute(delete(pi).where(pi.c.profile_id == pid))
        conn.execute(delete(t.persons).where(t.persons.c.profile_id == pid))
        return anchors

    # ------------------------------------------------------------------ erasure

    def _erase(
        self,
        conn: Connection,
        erased: list[ProfileUpdate],
        requests: dict[str, tuple[_Key, tuple[str, ...]]],
        superseded: dict[str, ProfileUpdate],
    ) -> tuple[set[str], set[str], set[str]]:
        """Delete the rows of erased persons and remember the erasures (requests and ``erased`` updates).

        Each erased identifier is remembered through the newest of: its erasure request, the erased
        person's last touch and its rows, taken over every person the same request erased; as the resolver
        remembers it through the newest thing it erased. Returns the deals that lost rows, the other
        persons that lost rows, and the anchors of rows that had moved to another person (they re-home).
        """
        pids = sorted({m.profile_id for m in erased})
        anchors, newest = self._identities(conn, pids, superseded)
        gone, deals_hit, moved = self._rows_of(conn, pids, anchors, newest)
        # every person erased by one request is remembered through the newest of them all
        through: dict[str, _Key] = {eid: key for eid, (key, _) in requests.items()}
        requested: dict[str, list[str]] = {}
        for message in erased:
            pid = message.profile_id
            events = _erasure_events(message)
            requested[pid] = [eid for eid, _ in events]
            own = max([newest.get(pid, (0, "")), *(key for _, key in events)])
            newest[pid] = own
            for eid in requested[pid]:
                through[eid] = max(through.get(eid, own), own)
        marks: dict[str, tuple[str, _Key]] = {}

        def mark(digest: str, subject: str, key: _Key) -> None:
            held = marks.get(digest)
            if held is None or held[1] < key:
                marks[digest] = (subject, key)

        for request_id, (_, hashes) in requests.items():
            for digest in hashes:
                mark(digest, "identifier", through[request_id])
        for pid in pids:
            until = max([newest[pid], *(through[eid] for eid in requested[pid])])
            for digest in anchors[pid]:
                mark(digest, "identifier", until)
            mark(self.profile_digest(pid), "profile", until)

        for table, eids in gone.items():
            for ids in chunks(eids):
                conn.execute(delete(table).where(table.c.event_id.in_(ids)))
        for group in chunks(pids):
            for table in (t.attribution, t.assists, t.person_identifiers, t.persons):
                conn.execute(delete(table).where(table.c.profile_id.in_(group)))
            deals_hit.update(conn.scalars(select(t.deals.c.deal_id).where(t.deals.c.profile_id.in_(group))))
            conn.execute(delete(t.deals).where(t.deals.c.profile_id.in_(group)))
        more_deals, persons_hit = self._remember(conn, marks)
        return deals_hit | more_deals, persons_hit - set(pids), moved

    def _identities(
        self, conn: Connection, pids: list[str], superseded: dict[str, ProfileUpdate]
    ) -> tuple[dict[str, set[str]], dict[str, _Key]]:
        """What the warehouse knows erased persons by: the hashes of their identifiers and their last touch.

        From each one's newest profile seen (the table's row, or an update this batch held before the
        erasure) and the identifiers ``person_identifiers`` still gives it.
        """
        ps, pi = t.persons, t.person_identifiers
        known: dict[str, tuple[int, dict[str, list[str]], _Key | None]] = {}  # version, identifiers, last touch
        query = select(ps.c.profile_id, ps.c.version, ps.c.identifiers, ps.c.last_touch_at, ps.c.last_event_id)
        for group in chunks(pids):
            for row in conn.execute(query.where(ps.c.profile_id.in_(group))):
                last = _key_of(row.last_touch_at, row.last_event_id) if row.last_event_id else None
                known[row.profile_id] = (row.version, json.loads(row.identifiers), last)
        for pid in pids:
            message = superseded.get(pid)
            if message is not None and message.profile and (pid not in known or known[pid][0] < message.version):
                known[pid] = (message.version, message.profile.get("identifiers") or {}, _last_touch(message.profile))
        anchors: dict[str, set[str]] = {pid: set() for pid in pids}
        newest: dict[str, _Key] = {}
        for pid, (_, identifiers, last) in known.items():
            anchors[pid] = {
                erasure_hash(self.key, Identifier(kind, value))
                for kind, values in identifiers.items()
                for value in values
            }
            if last is not None:
                newest[pid] = last
        for group in chunks(pids):
            for anchor, holder in conn.execute(select(pi.c.anchor, pi.c.profile_id).where(pi.c.profile_id.in_(group))):
                anchors[holder].add(anchor)
        return anchors, newest

    def _rows_of(
        self, conn: Connection, pids: list[str], anchors: dict[str, set[str]], newest: dict[str, _Key]
    ) -> tuple[dict[Any, list[str]], set[str], set[str]]:
        """The rows erased persons hold: erased with them, unless another person holds their anchor now.

        Adds their anchors and keys to ``anchors`` and ``newest``; returns the event ids to delete per
        table, the deals of those stage rows, and the anchors of the rows that moved (a split or merge this
        batch applied first: they re-home).
        """
        tc, ds = t.touches, t.deal_stages
        homed: list[tuple[Any, str, str | None, datetime, str, str | None]] = []
        touch_rows = select(tc.c.event_id, tc.c.anchor, tc.c.occurred_at, tc.c.profile_id)
        stage_rows = select(ds.c.event_id, ds.c.anchor, ds.c.occurred_at, ds.c.profile_id, ds.c.deal_id)
        for group in chunks(pids):
            for r in conn.execute(touch_rows.where(tc.c.profile_id.in_(group))):
                homed.append((tc, r.event_id, r.anchor, r.occurred_at, r.profile_id, None))
            for stage in conn.execute(stage_rows.where(ds.c.profile_id.in_(group))):
                homed.append((ds, stage.event_id, stage.anchor, stage.occurred_at, stage.profile_id, stage.deal_id))
        theirs = {a for held in anchors.values() for a in held}
        strange = sorted({row[2] for row in homed if row[2] is not None and row[2] not in theirs})
        elsewhere: dict[str, str] = {}
        pi = t.person_identifiers
        for group in chunks(strange):
            elsewhere.update(conn.execute(select(pi.c.anchor, pi.c.profile_id).where(pi.c.anchor.in_(group))).all())
        gone: dict[Any, list[str]] = defaultdict(list)
        deals_hit: set[str] = set()
        moved: set[str] = set()
        for table, eid, anchor, when, pid, deal_id in homed:
            if anchor is not None and elsewhere.get(anchor, pid) != pid:
                moved.add(anchor)
                continue
            if anchor is not None:
                anchors[pid].add(anchor)
            key = _key_of(when, eid)
            if pid not in newest or newest[pid] < key:
                newest[pid] = key
            gone[table].append(eid)
            if deal_id is not None:
                deals_hit.add(deal_id)
        return gone, deals_hit, moved

    def _remember(self, conn: Connection, marks: dict[str, tuple[str, _Key]]) -> tuple[set[str], set[str]]:
        """Record erasures (a stored one is only ever pushed later), then delete the rows they cover.

        Returns the deals and the persons that lost rows.
        """
        if not marks:
            return set(), set()
        e = t.erasures
        rows = [
            {"digest": d, "subject": s, "through_at": to_db(_moment(k)), "through_event_id": k[1]}
            for d, (s, k) in sorted(marks.items())
        ]
        stmt = insert(conn, e)
        ex = stmt.excluded
        binary = _binary(conn)
        later = or_(
            e.c.through_at < ex.through_at,
            and_(e.c.through_at == ex.through_at, binary(e.c.through_event_id) < binary(ex.through_event_id)),
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["digest"],
                set_={"through_at": ex.through_at, "through_event_id": ex.through_event_id},
                where=later,
            ),
            rows,
        )
        through = self._erased(conn, {d for d, (s, _) in marks.items() if s == "identifier"})
        deals_hit: set[str] = set()
        persons_hit: set[str] = set()
        for group in chunks(sorted(through)):
            for table in (t.touches, t.deal_stages):
                deal = t.deal_stages.c.deal_id if table is t.deal_stages else null()
                query = select(table.c.event_id, table.c.anchor, table.c.occurred_at, table.c.profile_id, deal)
                covered = [
                    (eid, pid, deal_id)
                    for eid, anchor, when, pid, deal_id in conn.execute(query.where(table.c.anchor.in_(group)))
                    if _key_of(when, eid) <= through[anchor]
                ]
                for ids in chunks([eid for eid, _, _ in covered]):
                    conn.execute(delete(table).where(table.c.event_id.in_(ids)))
                persons_hit.update(pid for _, pid, _ in covered if pid is not None)
                deals_hit.update(deal_id for _, _, deal_id in covered if deal_id is not None)
        return deals_hit, persons_hit

    def _erased(self, conn: Connection, digests: set[str]) -> dict[str, _Key]:
        """Which of these identifier hashes are erased, each with the key through which it is."""
        e = t.erasures
        out: dict[str, _Key] = {}
        for group in chunks(sorted(digests)):
            query = select(e.c.digest, e.c.through_at, e.c.through_event_id).where(
                e.c.digest.in_(group), e.c.subject == "identifier"
            )
            for digest, when, eid in conn.execute(query):
                out[digest] = _key_of(when, eid)
        return out

    def _erased_profiles(self, conn: Connection, pids: set[str]) -> set[str]:
        """Which of these profile ids were erased (an erased id never lives again)."""
        e = t.erasures
        by_digest = {self.profile_digest(pid): pid for pid in pids}
        out: set[str] = set()
        for group in chunks(sorted(by_digest)):
            query = select(e.c.digest).where(e.c.digest.in_(group), e.c.subject == "profile")
            out.update(by_digest[d] for d in conn.scalars(query))
        return out

    def _admit(self, conn: Connection, batch: _Batch, stats: WriteStats) -> tuple[list[dict[str, Any]], ...]:
        """The touch and stage rows to write, each anchored on its strongest identifier not erased as of its key.

        An event all of whose identifiers were erased as of its key writes no row (the resolver refuses it).
        One lookup per batch (per 500 hashes), whatever the number of events.
        """
        through = self._erased(conn, {d for _, hashes in batch.identified.values() for d in hashes})
        if not through:
            return batch.touches, batch.stages
        out: list[list[dict[str, Any]]] = []
        for rows in (batch.touches, batch.stages):
            kept: list[dict[str, Any]] = []
            for row in rows:
                key, hashes = batch.identified[row["event_id"]]
                live = [d for d in hashes if d not in through or through[d] < key]
                if not live and hashes:
                    stats.refused += 1
                    continue
                kept.append(row if len(live) == len(hashes) else {**row, "anchor": live[0]})
            out.append(kept)
        return out[0], out[1]

    def _rehome(self, conn: Connection, anchors: set[str]) -> tuple[set[str], set[str], set[str]]:
        """Point the rows of these anchors at the profile holding each anchor now (or at nobody).

        Returns the profiles that held moved rows before, those that hold them now, and the deals whose
        stage rows moved.
        """
        pi = t.person_identifiers
        before: set[str] = set()
        after: set[str] = set()
        moved_deals: set[str] = set()
        for group in chunks(sorted(anchors)):
            holder = dict(conn.execute(select(pi.c.anchor, pi.c.profile_id).where(pi.c.anchor.in_(group))).all())
            for table in (t.touches, t.deal_stages):
                deal = table.c.deal_id if table is t.deal_stages else table.c.anchor
                rows = conn.execute(
                    select(table.c.anchor, table.c.profile_id, deal).where(table.c.anchor.in_(group)).distinct()
                ).all()
                stale = [(a, p, d) for a, p, d in rows if p != holder.get(a)]
                if not stale:
                    continue
                before.update(p for _, p, _ in stale if p is not None)
                after.update(holder[a] for a, _, _ in stale if a in holder)
                if table is t.deal_stages:
                    moved_deals.update(d for _, _, d in stale)
                now = select(pi.c.profile_id).where(pi.c.anchor == table.c.anchor).scalar_subquery()
                stale_anchors = sorted({a for a, _, _ in stale})
                conn.execute(update(table).where(table.c.anchor.in_(stale_anchors)).values(profile_id=now))
        return before, after, moved_deals

    def _deals(self, conn: Connection, deal_ids: set[str]) -> int:
        """Recompute the state of these deals from their stage rows."""
        ds = t.deal_stages
        if not deal_ids:
            return 0
        stages: dict[str, list[Any]] = defaultdict(list)
        for group in chunks(sorted(deal_ids)):
            for row in conn.execute(select(ds).where(ds.c.deal_id.in_(group))):
                stages[row.deal_id].append(row)
        now = to_db(datetime.now(UTC))
        for group in chunks(sorted(deal_ids - stages.keys())):
            conn.execute(delete(t.deals).where(t.deals.c.deal_id.in_(group)))
        rows = []
        status = self.policy.deal_status
        for deal_id, history in stages.items():
            history.sort(key=lambda r: (from_db(r.occurred_at), r.event_id))
            latest = history[-1]
            amount = next((r.amount for r in reversed(history) if r.amount is not None), None)
            pipeline = next((r.pipeline for r in reversed(history) if r.pipeline is not None), None)
            owner = next((r.profile_id for r in reversed(history) if r.profile_id is not None), None)
            won = next((r.occurred_at for r in history if status(r.stage) == "won"), None)
            lost = next((r.occurred_at for r in history if status(r.stage) == "lost"), None)
            rows.append(
                {
                    "deal_id": deal_id,
                    "profile_id": owner,
                    "pipeline": pipeline,
                    "stage": latest.stage,
                    "status": status(latest.stage),
                    "amount": amount,
                    "created_at": history[0].occurred_at,
                    "won_at": won if status(latest.stage) == "won" else None,
                    "lost_at": lost if status(latest.stage) == "lost" else None,
                    "updated_at": now,
                }
            )
        if rows:
            stmt = insert(conn, t.deals)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["deal_id"], set_={k: stmt.excluded[k] for k in rows[0] if k != "deal_id"}
                ),
                rows,
            )
        return len(rows)

    def _attribute(self, conn: Connection, persons: set[str]) -> int:
        """Recompute the lead and deal attribution of these persons from their rows."""
        if not persons:
            return 0
        tc, ds = t.touches, t.deal_stages
        paths: dict[str, list[tuple[_KEY_EVENT, Channel, str]]] = defaultdict(list)
        created: dict[str, tuple[str, _KEY_EVENT]] = {}  # deal -> (person, key of its first stage)
        marketing = [tt.value for tt in MARKETING_TYPES]
        for group in chunks(sorted(persons)):
            conn.execute(delete(t.attribution).where(t.attribution.c.profile_id.in_(group)))
            conn.execute(delete(t.assists).where(t.assists.c.profile_id.in_(group)))
            query = select(tc.c.profile_id, tc.c.occurred_at, tc.c.event_id, tc.c.type, tc.c.source, tc.c.medium,
                           tc.c.campaign).where(tc.c.profile_id.in_(group), tc.c.type.in_(marketing))  # fmt: skip
            for pid, when, eid, kind, source, medium, campaign in conn.execute(query).all():
                paths[pid].append(((_utc(when), eid), Channel(source, medium, campaign), kind))
            query2 = select(ds.c.profile_id, ds.c.deal_id, ds.c.occurred_at, ds.c.event_id).where(
                ds.c.profile_id.in_(group)
            )
            for pid, deal_id, when, eid in conn.execute(query2).all():
                key = (_utc(when), eid)
                held = created.get(deal_id)
                if held is None or key < held[1]:
                    created[deal_id] = (pid, key)
        deals_of: dict[str, list[tuple[str, _KEY_EVENT]]] = defaultdict(list)
        for deal_id, (pid, key) in created.items():
            deals_of[pid].append((deal_id, key))
        for group in chunks(sorted(created)):  # a deal that moved between persons loses its old rows too
            conn.execute(delete(t.attribution).where(t.attribution.c.conversion == "deal",
                                                     t.attribution.c.conversion_id.in_(group)))  # fmt: skip
            conn.execute(delete(t.assists).where(t.assists.c.deal_id.in_(group)))
        credit_rows: list[dict[str, Any]] = []
        assist_rows: list[dict[str, Any]] = []
        ranks = self.policy.ranks
        for pid in sorted(persons):
            steps = sorted(paths.get(pid, []), key=lambda s: s[0])
            keys = [s[0] for s in steps]
            path: list[PathStep] = [(s[0], s[1]) for s in steps]
            lead = next((s[0] for s in steps if TouchType(s[2]) in LEAD_TYPES), None)
            deal_keys = [k for _, k in deals_of.get(pid, [])]
            converted = min([k for k in (lead, *deal_keys) if k is not None], default=None)
            conversions: list[tuple[str, str, _KEY_EVENT]] = []
            if converted is not None:
                conversions.append(("lead", pid, converted))
            conversions += [("deal", deal_id, key) for deal_id, key in deals_of.get(pid, [])]
            for conversion, conversion_id, key in conversions:
                n = bisect.bisect_right(keys, key)
                before = path[:n]
                for model in MODELS:
                    for channel, credit in attribute(before, model, ranks).items():
                        credit_rows.append(
                            {
                                "conversion": conversion,
                                "conversion_id": conversion_id,
                                "model": model,
                                **channel.to_dict(),
                                "credit": credit,
                                "profile_id": pid,
                                "converted_at": to_db(key[0]),
                            }
                        )
                if conversion == "deal":
                    assist_rows += [
                        {"deal_id": conversion_id, **c.to_dict(), "profile_id": pid} for c in sorted(assists(before))
                    ]
        if credit_rows:
            conn.execute(insert(conn, t.attribution), credit_rows)
        if assist_rows:
            conn.execute(insert(conn, t.assists), assist_rows)
        return len(credit_rows)

    def _spend(self, conn: Connection, row: dict[str, Any]) -> None:
        stmt = insert(conn, t.ad_spend)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["date", "source", "medium", "campaign", "account", "currency"],
                set_={"cost": stmt.excluded.cost, "reported_at": stmt.excluded.reported_at},
                where=t.ad_spend.c.reported_at <= stmt.excluded.reported_at,
            ),
            row,
        )


def _utc(moment: datetime) -> datetime:
    out = from_db(moment)
    assert out is not None  # noqa: S101 - NOT NULL columns
    return out


def _key_of(moment: datetime, event_id: str) -> _Key:
    """The key of a stored event."""
    return event_key(_utc(moment), event_id)


def _moment(key: _Key) -> datetime:
    """The time of an event key (UTC)."""
    return _EPOCH + timedelta(microseconds=key[0])


def _when(text: Any, event_id: Any) -> _Key | None:
    """The key of an event given as an ISO time and an id (a profile's last touch, an erasure's evidence)."""
    if not isinstance(text, str) or not isinstance(event_id, str) or not event_id:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return event_key(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC), event_id)


def _last_touch(profile: dict[str, Any]) -> _Key | None:
    """The key of a golden profile's newest touch."""
    last = profile.get("last_touch")
    return _when(last.get("occurred_at"), last.get("event_id")) if isinstance(last, dict) else None


def _erasure_events(message: ProfileUpdate) -> list[tuple[str, _Key]]:
    """The erasure requests an ``erased`` update names in its evidence: their ids and keys."""
    out = []
    for why in message.evidence:
        key = _when(why.get("occurred_at"), why.get("event_id")) if why.get("rule") == "erasure" else None
        if key is not None:
            out.append((key[1], key))
    return out


def _binary(conn: Connection) -> Any:
    """Compare text by code point, as Python does (PostgreSQL would use the database's collation)."""
    if conn.dialect.name == "postgresql":
        return lambda column: column.collate("C")
    return lambda column: column


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return to_db(datetime.fromisoformat(text))


def _dead_letter(msg: Message, exc: Exception) -> DeadLetter:
    if isinstance(exc, ValidationError):
        exc = InvalidMessage.from_validation_error(exc)
    error = exc.to_dict() if isinstance(exc, IdstreamError) else {"code": "invalid_message", "message": str(exc)[:500]}
    return DeadLetter.of(msg.topic, msg.partition, msg.offset, error, msg.value)
