"""The I/O-free heart of the worker: a batch of inbound messages in, the messages to produce out.

It decodes and validates with ``schemas/``, applies the touches to the store in one call, and turns
the outcomes into profile updates, identity changes and dead letters. It never raises for bad input:
a message that cannot be applied becomes a dead letter with its original bytes and the reason.
It raises :class:`identity.TransientError` when the store is briefly unavailable; the caller retries
the whole batch, which is safe because the store ignores redelivered event ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from identity import (
    ApplyResult,
    ConfigurationError,
    IdstreamError,
    ResolutionPolicy,
    Touch,
    TouchType,
    TransientError,
    UnsupportedEvent,
)
from identity.card import screen_pop
from identity.golden import fit
from identity.graph import ChangeKind, manual_note, unsupported
from identity.triggers import Candidate, MissedCall, TriggerRules, candidates, missed_call, not_returned
from schemas import DeadLetter, IdentityChange, InvalidMessage, ProfileUpdate, Trigger, decode_touch
from streams.observe import DEAD_LETTERS, BatchStats
from streams.redis_store import Snapshot

__all__ = ["Inbound", "Outbound", "OutputTopics", "Processor", "ProfileSource", "output_dead_letter"]

log = logging.getLogger("idstream.processor")

#: When several things happened to one profile in a batch, its update carries the strongest kind.
_KIND_ORDER = {"updated": 0, "created": 1, "merged": 2, "split": 3, "erased": 4}


@dataclass(frozen=True, slots=True)
class Inbound:
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    key: bytes | None
    value: bytes | None  # None is a tombstone
    trigger_id: str | None = None  # a trigger: record it as fired once this message is delivered


@dataclass(frozen=True, slots=True)
class OutputTopics:
    profiles: str = "profiles.updates"
    changes: str = "identity.changes"
    dlq: str = "touches.dlq"
    triggers: str = "triggers"


class ProfileSource(Protocol):
    """What the processor needs from a store (RedisIdentityStore provides it)."""

    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]: ...

    def snapshot(self, profile_ids: Sequence[str], extra_versions: int = 0) -> Snapshot: ...

    def unfired(self, trigger_ids: Sequence[str]) -> set[str]: ...

    def mark_fired(self, trigger_ids: Sequence[str]) -> None: ...

    @property
    def policy(self) -> ResolutionPolicy:
        """The rules it resolves by (which event types it applies, among them)."""

    def add_pending(self, calls: Sequence[MissedCall]) -> None: ...

    def due_pending(self, now: float, limit: int = 200) -> list[MissedCall]: ...

    def drop_pending(self, event_ids: Sequence[str]) -> None: ...

    @property
    def largest_component(self) -> int:
        """Identifiers in the largest component the last ``apply_batch`` wrote (the blob watch)."""


_RULES = {
    TouchType.IDENTITY_LINK: "manual_link",
    TouchType.IDENTITY_UNLINK: "manual_unlink",
    TouchType.ERASE_REQUEST: "erasure",
}


def evidence(touch: Touch, result: ApplyResult) -> dict[str, Any]:
    """The compact evidence of a merge, split or erasure: the event, and the rule that decided.

    ``GET /v1/explain`` and ``idstream explain`` give the whole evidence path.
    """
    rule = _RULES.get(touch.type)
    if rule is None:
        if result.shared:
            rule = "shared_identifier"
        elif result.status == "reordered":
            rule = "late_event"  # an older event arrived: its evidence group was re-resolved in time order
        else:
            rule = "co_occurrence"
    out: dict[str, Any] = {
        "rule": rule,
        "event_id": touch.event_id,
        "type": touch.type.value,
        "source": touch.source,
        "occurred_at": touch.occurred_at.isoformat(),
    }
    if touch.type in (TouchType.IDENTITY_LINK, TouchType.IDENTITY_UNLINK):  # a manager's statement: who and why
        out["actor"], out["reason"] = manual_note(touch)
    if result.shared:
        out["shared"] = [{"kind": i.kind, "value": i.value} for i in result.shared]
    return out


def _json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def output_dead_letter(topics: OutputTopics, topic: str, key: str, size: int, limit: int) -> Outbound:
    """A dead letter for an output message that cannot be produced (too large), naming its key (a profile id)."""
    error = {
        "code": "output_too_large",
        "message": f"a message for {topic} keyed {key[:80]!r} is {size} bytes; the limit is {limit}",
        "retriable": False,
        "key": key[:200],
        "bytes": size,
        "limit": limit,
    }
    log.error("output too large for the broker: dead-lettered", extra={"topic": topic, "key": key[:200], "bytes": size})
    DEAD_LETTERS.labels(topic, "output_too_large").inc()
    return Outbound(topics.dlq, key.encode()[:200], _json(DeadLetter.of(topic, -1, -1, error, None)))


@dataclass
class _Pending:
    kind: ChangeKind = "updated"
    event_ids: list[str] = field(default_factory=list)
    merged_from: set[str] = field(default_factory=set)
    split_from: set[str] = field(default_factory=set)
    moved: set[tuple[str, str]] = field(default_factory=set)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def raise_kind(self, kind: ChangeKind) -> None:
        """Keep the strongest of the kinds that happened to the profile."""
        if _KIND_ORDER[kind] > _KIND_ORDER[self.kind]:
            self.kind = kind


def _fold(p: _Pending, retired_id: str, into: _Pending) -> None:
    """Move a retired id's pending update into its survivor's, which then announces the id as merged.

    A bare tombstone carries no version: without a versioned ``merged_from``, an older update of the id
    still on its way from another worker would bring it back in a subscriber.
    """
    into.raise_kind(p.kind)
    into.raise_kind("merged")
    into.event_ids.extend(e for e in p.event_ids if e not in into.event_ids)
    into.merged_from.update(p.merged_from, [retired_id])
    into.split_from.update(p.split_from)
    into.moved.update(p.moved)
    into.evidence.extend(p.evidence)


def _count(stats: BatchStats, topic: str, touch: Touch, result: ApplyResult) -> None:
    """Count one applied event; log what operators follow (splits, erasures, refused merges) with its id."""
    outcome = "duplicate" if result.status == "duplicate" else "applied"
    if result.reused_by is not None:
        outcome = "duplicate_conflict"  # idstream_events{outcome="duplicate_conflict"}: ids reused by producers
        log.warning("an event id came again with other content; the second event was not applied",
                    extra={"event_id": touch.event_id, "topic": topic})  # fmt: skip
    stats.count(topic, touch.type.value, outcome)
    stats.event_ids.append(touch.event_id)
    for change in result.changes:
        if change.kind == "merged":
            stats.merges += len(change.merged_from)
            if log.isEnabledFor(logging.DEBUG):  # merges are frequent: build the context only when it is logged
                log.debug("merged", extra={"event_id": touch.event_id, "profile_id": change.profile_id,
                                           "merged_from": list(change.merged_from)})  # fmt: skip
        elif change.kind == "split":
            stats.splits += 1
            log.info("split", extra={"event_id": touch.event_id, "profile_id": change.profile_id,
                                     "split_from": list(change.split_from)})  # fmt: skip
        elif change.kind == "erased":
            stats.erasures += 1
            log.info("erased", extra={"event_id": touch.event_id, "profile_id": change.profile_id})
    for conflict in result.conflicts:
        stats.conflicts[conflict.kind] = stats.conflicts.get(conflict.kind, 0) + 1
        log.info("merge refused", extra={"event_id": touch.event_id, "profile_id": conflict.profile_id,
                                         "kind": conflict.kind, "reason": conflict.reason})  # fmt: skip


class Processor:
    """Decode, apply, and say what to produce. Triggers are recorded as fired by :meth:`confirm`, which
    the caller runs once the batch's messages are delivered: a crash in between re-fires them (same
    ``trigger_id``) on redelivery instead of losing them."""

    def __init__(
        self,
        store: ProfileSource,
        topics: OutputTopics | None = None,
        rules: TriggerRules | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        max_message_bytes: int = 1_000_000,
        max_future_skew: float | None = 86_400.0,
    ) -> None:
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.max_future_skew = None if max_future_skew is None else timedelta(seconds=max_future_skew)
        self.topics = topics or OutputTopics()
        self.rules = rules or TriggerRules()
        self.clock = clock
        #: a batch applied whose outputs failed transiently: its retry resumes at the outputs (the store
        #: would answer "duplicate" for every event, and the merges and splits it made would go unannounced)
        self._half: tuple[tuple[tuple[str, int, int], ...], list[Outbound], BatchStats, list[Any]] | None = None

    def confirm(self, delivered: Sequence[Outbound]) -> None:
        """Record the triggers among delivered messages as fired."""
        self.store.mark_fired([o.trigger_id for o in delivered if o.trigger_id is not None])

    def process(self, batch: Sequence[Inbound]) -> list[Outbound]:
        return self.process_counted(batch)[0]

    def process_counted(self, batch: Sequence[Inbound]) -> tuple[list[Outbound], BatchStats]:
        """The messages to produce for a batch, and what the batch did (for metrics and logs)."""
        where = tuple((m.topic, m.partition, m.offset) for m in batch)
        if self._half is not None and self._half[0] == where:
            _, early, stats, results = self._half
            out = list(early)
        else:
            out, stats = [], BatchStats()
            results = self._apply(self._decode(batch, out, stats), out, stats)
            self._half = (where, list(out), stats, results)
        out.extend(self._outputs(results))  # may raise TransientError: the retry of this batch resumes here
        self._half = None
        return out, stats

    def apply_counted(self, batch: Sequence[Inbound]) -> BatchStats:
        """Apply a batch and say what it did, producing nothing (``idstream rebuild``: published already)."""
        stats = BatchStats()
        ignored: list[Outbound] = []
        self._apply(self._decode(batch, ignored, stats), ignored, stats)
        return stats

    def _decode(self, batch: Sequence[Inbound], out: list[Outbound], stats: BatchStats) -> list[tuple[Inbound, Touch]]:
        accepted: list[tuple[Inbound, Touch]] = []
        horizon = self.clock() + self.max_future_skew if self.max_future_skew is not None else None
        for msg in batch:
            try:
                touch = decode_touch(msg.value or b"").to_touch()
                if not self.store.policy.applies(touch.type):
                    raise UnsupportedEvent(unsupported(touch))
                if horizon is not None and touch.occurred_at > horizon:
                    raise InvalidMessage.single(
                        "occurred_at",
                        "in_future",
                        f"occurred_at {touch.occurred_at.isoformat()} is more than "
                        f"{self.max_future_skew} ahead of the worker's clock (IDSTREAM_MAX_FUTURE_SKEW)",
                    )
            except (InvalidMessage, UnsupportedEvent) as exc:
                out.append(self._dead_letter(msg, exc, stats))
                continue
            accepted.append((msg, touch))
        return accepted

    # ------------------------------------------------------------------ applying

    def _apply(
        self, accepted: list[tuple[Inbound, Touch]], out: list[Outbound], stats: BatchStats
    ) -> list[tuple[Touch, ApplyResult]]:
        touches = [t for _, t in accepted]
        try:
            results = self.store.apply_batch(touches)
        except (TransientError, ConfigurationError):  # the store or its settings, never this input: no dead letter
            raise
        except Exception as exc:
            if len(accepted) == 1:
                msg, touch = accepted[0]
                out.append(self._dead_letter(msg, exc, stats, touch))
                return []
            log.warning("batch of %d failed (%s); applying one by one", len(accepted), type(exc).__name__)
        else:
            stats.largest_component = max(stats.largest_component, self.store.largest_component)
            for (msg, touch), result in zip(accepted, results, strict=True):
                _count(stats, msg.topic, touch, result)
            return list(zip(touches, results, strict=True))
        applied = []
        for msg, touch in accepted:  # the store wrote nothing for the failed batch, so this is safe
            applied.extend(self._apply([(msg, touch)], out, stats))
        return applied

    def _dead_letter(self, msg: Inbound, exc: Exception, stats: BatchStats, touch: Touch | None = None) -> Outbound:
        error = exc.to_dict() if isinstance(exc, IdstreamError) else {"code": "store_error", "message": str(exc)[:500]}
        code = str(error.get("code", "error"))
        stats.count(msg.topic, touch.type.value if touch else "unknown", "dead_letter")
        stats.dead_letters[msg.topic, code] = stats.dead_letters.get((msg.topic, code), 0) + 1
        where = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset, "code": code}
        log.warning("dead letter: %s", code, extra={"event_id": touch.event_id if touch else None, **where})
        letter = DeadLetter.of(msg.topic, msg.partition, msg.offset, error, msg.value)
        return Outbound(self.topics.dlq, None, _json(letter))

    # ------------------------------------------------------------------ outputs

    def _outputs(self, results: list[tuple[Touch, ApplyResult]]) -> list[Outbound]:
        out: list[Outbound] = []
        pending: dict[str, _Pending] = {}
        for touch, result in results:
            self._changes(touch, result, out)
            if result.status == "duplicate":  # re-emit: the first delivery may have died before producing
                if result.profile_id is not None:
                    pending.setdefault(result.profile_id, _Pending()).event_ids.append(touch.event_id)
                continue
            for change in result.changes:
                p = pending.setdefault(change.profile_id, _Pending())
                p.raise_kind(change.kind)
                if touch.event_id not in p.event_ids:
                    p.event_ids.append(touch.event_id)
                p.merged_from.update(change.merged_from)
                p.split_from.update(change.split_from)
                p.moved.update(change.moved)
                if change.kind in ("merged", "split", "erased"):
                    p.evidence.append(evidence(touch, result))
        erased = sorted(pid for pid, p in pending.items() if p.kind == "erased")
        snap = self.store.snapshot(sorted(pid for pid in pending if pid not in erased), len(erased))
        profiles = snap.profiles
        for pid, live in snap.live.items():
            if live != pid:  # another worker merged it away after our apply: its update is the survivor's
                _fold(pending.pop(pid), pid, pending.setdefault(live, _Pending()))
        retired = {old for p in pending.values() for old in p.merged_from} - profiles.keys()
        first = snap.last_version - len(profiles) + 1
        for version, pid in enumerate([*sorted(profiles), *erased], start=first):
            p = pending.get(pid) or _Pending()
            update = ProfileUpdate(
                kind=p.kind,
                profile_id=pid,
                version=version,
                event_ids=p.event_ids,
                merged_from=sorted(p.merged_from - profiles.keys()),
                split_from=sorted(p.split_from),
                moved=[{"kind": k, "value": v} for k, v in sorted(p.moved)],
                evidence=p.evidence,
                profile=profiles.get(pid),
            )
            out.append(self._sized(update))
        out.extend(Outbound(self.topics.profiles, old.encode(), None) for old in sorted({*retired, *erased}))
        out.extend(self._triggers(results, snap))
        return out

    def _sized(self, update: ProfileUpdate) -> Outbound:
        """The update as a message within the broker's limit: the profile cut by :func:`identity.golden.fit`,
        or, when even its core does not fit, a dead letter naming the profile (lookups still serve it)."""
        body = _json(update)
        if len(body) <= self.max_message_bytes or update.profile is None:
            return Outbound(self.topics.profiles, update.profile_id.encode(), body)
        overhead = len(body) - len(orjson.dumps(update.profile))
        profile = fit(update.profile, self.max_message_bytes, overhead)
        if profile is not None:
            log.warning(
                "a profile update was cut to fit the message limit",
                extra={"profile_id": update.profile_id, "bytes": len(body), "limit": self.max_message_bytes},
            )
            update = update.model_copy(update={"profile": profile})
            return Outbound(self.topics.profiles, update.profile_id.encode(), _json(update))
        return output_dead_letter(
            self.topics, self.topics.profiles, update.profile_id, len(body), self.max_message_bytes
        )

    def due(self) -> tuple[list[Outbound], list[str]]:
        """Missed calls whose windows have closed: the triggers of those nobody returned (to deliver, then
        :meth:`settle`), and every such call's event id (to forget once delivered)."""
        pending = self.store.due_pending(self.clock().timestamp())
        if not pending:
            return [], []
        snap = self.store.snapshot(sorted({p.profile_id for p in pending if p.profile_id}))
        wanted: dict[str, Candidate] = {}
        for p in pending:
            live = snap.live.get(p.profile_id)
            found = not_returned(p, snap.profiles.get(live) if live else None, self.rules)
            if found is not None:
                wanted.setdefault(found.trigger_id, found)
        unfired = self.store.unfired(sorted(wanted))
        out = [self._trigger(c, snap) for tid, c in wanted.items() if tid in unfired]
        return out, [p.event_id for p in pending]

    def settle(self, delivered: Sequence[Outbound], decided: Sequence[str]) -> None:
        """After delivery: the triggers are fired, the missed calls decided."""
        self.confirm(delivered)
        self.store.drop_pending(decided)

    def _trigger(self, c: Candidate, snap: Snapshot) -> Outbound:
        message = Trigger(
            trigger_id=c.trigger_id,
            rule=c.rule,
            profile_id=c.profile_id,
            event_id=c.event_id,
            occurred_at=c.occurred_at,
            data=c.data,
            profile=screen_pop(snap.profiles[c.profile_id]),
        )
        return Outbound(self.topics.triggers, c.profile_id.encode(), _json(message), trigger_id=c.trigger_id)

    def _triggers(self, results: list[tuple[Touch, ApplyResult]], snap: Snapshot) -> list[Outbound]:
        if not self.rules.enabled:
            return []
        now = self.clock()
        pending = [
            found
            for touch, result in results
            if (found := missed_call(touch, snap.live.get(result.profile_id or ""), self.rules, now=now))
        ]
        self.store.add_pending(pending)  # idempotent: a redelivered batch adds the same calls again
        wanted: dict[str, Candidate] = {}
        for touch, result in results:
            pid = snap.live.get(result.profile_id or "")
            if pid is None:
                continue
            merged = [old for c in result.changes for old in c.merged_from]
            for c in candidates(touch, snap.profiles.get(pid), self.rules, now=now, merged_from=merged):
                wanted.setdefault(c.trigger_id, c)
        if not wanted:
            return []
        asked = sorted({*wanted, *(i for c in wanted.values() for i in c.inherit)})
        unfired = self.store.unfired(asked)
        inherited = [tid for tid, c in wanted.items() if tid in unfired and any(i not in unfired for i in c.inherit)]
        self.store.mark_fired(inherited)  # a merged person already fired it: nothing to produce, nothing to lose
        return [self._trigger(c, snap) for tid, c in wanted.items() if tid in unfired and tid not in inherited]

    def _changes(self, touch: Touch, result: ApplyResult, out: list[Outbound]) -> None:
        common = {"event_id": touch.event_id, "source": touch.source, "occurred_at": touch.occurred_at.isoformat()}
        changes: list[IdentityChange] = []
        why = evidence(touch, result)
        for change in result.changes:
            if change.kind == "merged":
                changes.append(
                    IdentityChange(
                        type="merged",
                        profile_id=change.profile_id,
                        merged_from=list(change.merged_from),
                        evidence=why,
                        **common,
                    )
                )
            elif change.kind == "split":
                changes.append(
                    IdentityChange(
                        type="split",
                        profile_id=change.profile_id,
                        split_from=list(change.split_from),
                        moved=[{"kind": i.kind, "value": i.value} for i in change.moved],
                        evidence=why,
                        **common,
                    )
                )
            elif change.kind == "erased":
                changes.append(IdentityChange(type="erased", profile_id=change.profile_id, evidence=why, **common))
        changes.extend(
            IdentityChange(type="conflict", profile_id=c.profile_id, conflict=c.to_dict(), **common)
            for c in result.conflicts
        )
        if result.shared:
            changes.append(
                IdentityChange(
                    type="shared",
                    profile_id=result.profile_id,
                    shared=[{"kind": i.kind, "value": i.value} for i in result.shared],
                    **common,
                )
            )
        if result.reused_by is not None:
            changes.append(IdentityChange(type="duplicate_conflict", profile_id=result.profile_id,
                                          first_source=result.reused_by, **common))  # fmt: skip
        if result.rejected:
            changes.append(
                IdentityChange(
                    type="rejected_identifiers",
                    profile_id=result.profile_id,
                    rejected=[r.to_dict() for r in result.rejected],
                    **common,
                )
            )
        for message in changes:
            key = message.profile_id.encode() if message.profile_id else None
            out.append(Outbound(self.topics.changes, key, _json(message)))
