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
* an ``erased`` update deletes the person's rows everywhere.

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
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, select, tuple_, update
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
from identity.touch import Touch, TouchType
from schemas import DeadLetter, InvalidMessage, ProfileUpdate, decode_spend, decode_touch
from sinks.warehouse import tables as t
from sinks.warehouse.db import chunks, from_db, insert, to_db, transient

__all__ = ["Message", "WarehouseTopics", "WarehouseWriter", "WriteStats"]

log = logging.getLogger("idstream.warehouse")

_KEY_EVENT = tuple[datetime, str]


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


@dataclass(slots=True)
class _Batch:
    touches: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, ProfileUpdate | None] = field(default_factory=dict)  # None: a tombstone
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
        """The keyed hash of the identifier a touch is recorded under (its strongest), as the golden profile does."""
        accepted, _ = self.normalizer.normalize_many(touch.identifiers)
        if not accepted:
            return None
        rank = self.policy.kind_rank
        return erasure_hash(self.key, min(accepted, key=lambda i: (rank(i.kind), i.value)))

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
        out.profiles[update_.profile_id] = update_  # the last message of a profile wins (one partition per key)

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
        anchor = self.anchor(touch)
        when = to_db(touch.occurred_at)
        crm = touch.crm
        if touch.type is TouchType.CRM_STAGE and crm is not None:
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
            return
        channel = channel_of(touch)
        if channel is None:
            return  # manual links, unlinks and erasure requests: no history row
        utm = touch.utm
        page, project = touch.attributes.get("page"), touch.attributes.get("project")
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
            }
        )

    # ------------------------------------------------------------------ writing

    def _write(self, conn: Connection, batch: _Batch, stats: WriteStats) -> None:
        dirty_anchors: set[str] = set()
        affected_persons: set[str] = set()
        affected_deals: set[str] = set()

        new_touches = self._insert_new(conn, t.touches, batch.touches)
        new_stages = self._insert_new(conn, t.deal_stages, batch.stages)
        stats.touches, stats.stages = len(new_touches), len(new_stages)
        dirty_anchors.update(r["anchor"] for r in (*new_touches, *new_stages) if r["anchor"])
        affected_deals.update(r["deal_id"] for r in new_stages)

        updates: list[ProfileUpdate] = []
        for pid, message in batch.profiles.items():
            if message is None:
                dirty_anchors |= self._retire(conn, pid)
                affected_persons.add(pid)
                stats.retired += 1
            elif message.kind == "erased":
                affected_deals |= self._erase(conn, pid)
                stats.erased += 1
            else:
                updates.append(message)
        anchors, changed = self._persons(conn, updates)
        dirty_anchors |= anchors
        affected_persons |= changed
        stats.persons = len(changed)

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

    def _erase(self, conn: Connection, pid: str) -> set[str]:
        """The person was erased on request: every row of theirs goes. Returns the deals that lost rows."""
        deal_ids = set(conn.scalars(select(t.deal_stages.c.deal_id).where(t.deal_stages.c.profile_id == pid)))
        for table in (t.touches, t.deal_stages, t.attribution, t.assists, t.person_identifiers, t.deals, t.persons):
            conn.execute(delete(table).where(table.c.profile_id == pid))
        return deal_ids

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


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return to_db(datetime.fromisoformat(text))


def _dead_letter(msg: Message, exc: Exception) -> DeadLetter:
    if isinstance(exc, ValidationError):
        exc = InvalidMessage.from_validation_error(exc)
    error = exc.to_dict() if isinstance(exc, IdstreamError) else {"code": "invalid_message", "message": str(exc)[:500]}
    return DeadLetter.of(msg.topic, msg.partition, msg.offset, error, msg.value)
