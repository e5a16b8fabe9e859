"""``idstream rebuild``: Kafka is the source of truth and Redis a view of it.

Replays every touch topic from its first retained offset into an empty Redis graph, then restores
what the graph keeps beside the touches, each from the topic that recorded it:

* the profile-update version counter, from ``profiles.updates`` (above every version published, so
  subscribers that keep the highest version accept what the workers publish next);
* the triggers already fired, from ``triggers`` (a rebuilt graph does not fire a cause again);
* the redirects of retired profile ids, from the merges on ``identity.changes`` (a CRM that stored an
  id which was later merged away still finds its person).

The replay merges the partitions by event time (each partition in its own order), so it applies the
touches in the order they happened, as the workers did when touches arrived in time. Merges and splits
resolve independently of arrival order anyway; an erasure does not (an erasure applied before older
touches of the same person arrive forgets only what it knew), so time order is what makes an erasure
replay exactly as it first happened: what was erased stays erased. Nothing is produced: the outputs
of these events were published the first time. Run it with the workers stopped (they would publish
profiles of a half-built graph).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from identity import ConfigurationError, IdstreamError
from identity.touch import key_text
from schemas import InvalidMessage, decode_touch
from streams.processor import Inbound, Processor
from streams.redis_store import RedisIdentityStore

__all__ = ["RebuildReport", "Replay", "end_offsets", "rebuild"]

Progress = Callable[[int, int], None]


@dataclass
class RebuildReport:
    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # applied, duplicate, dead_letter
    dead_letters: Counter[str] = field(default_factory=Counter)  # by error code
    persons: int = 0
    version: int = 0
    fired: int = 0
    redirects: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            **{k: self.outcomes[k] for k in sorted(self.outcomes)},
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "persons": self.persons,
            "version": self.version,
            "fired_triggers": self.fired,
            "redirects_restored": self.redirects,
            "seconds": round(self.seconds, 1),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
        }


def end_offsets(consumer: Any, partitions: Sequence[Any]) -> dict[Any, int]:
    """The next offset to be written per partition, read from a fetch (the consumer is left assigned).

    Not ``ListOffsets`` alone: the embedded broker (Tansu 0.6) answers it with the base offset of the
    last record batch plus one, short by the batch's other records; a fetch's high watermark is right.
    """
    listed = consumer.end_offsets(list(partitions))
    consumer.assign(list(partitions))
    for tp in partitions:
        consumer.seek(tp, max(listed[tp] - 1, 0))
    waiting = {tp for tp in partitions if listed[tp] > 0}
    deadline = time.monotonic() + 10
    while waiting and time.monotonic() < deadline:
        consumer.poll(200)
        waiting = {tp for tp in waiting if consumer.highwater(tp) is None}
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in partitions}


class Replay:
    """Every record of some topics from the first retained offset to the end as of the start (no group)."""

    def __init__(self, bootstrap: str, topics: Sequence[str], batch_size: int = 1000) -> None:
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415 - only the CLI needs kafka here

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, max_poll_records=batch_size
        )
        missing = [t for t in topics if not self.consumer.partitions_for_topic(t)]
        if missing:
            self.consumer.close()
            raise ConfigurationError(f"no such topic on {bootstrap}: {', '.join(missing)}")
        self.partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or ())
        ]
        starts = self.consumer.beginning_offsets(self.partitions)
        self.ends = end_offsets(self.consumer, self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.total = sum(self.ends[tp] - starts[tp] for tp in self.partitions)

    def in_time_order(self, batch_size: int, buffer: int = 5000) -> Iterator[list[Inbound]]:
        """The records merged across partitions by event time (each partition read in its own order).

        Holds at most ``buffer`` records per partition: a partition far ahead is paused until the
        others catch up. A record that is not a readable touch sorts first (it only becomes a count).
        """
        pending: dict[Any, deque[tuple[tuple[str, str], Inbound]]] = {tp: deque() for tp in self.partitions}
        open_ = {tp for tp in self.partitions if self.consumer.position(tp) < self.ends[tp]}
        out: list[Inbound] = []
        try:
            while open_ or any(pending.values()):
                if any(not pending[tp] for tp in open_):
                    full = [tp for tp in open_ if len(pending[tp]) >= buffer]
                    self.consumer.pause(*full)
                    self.consumer.resume(*(open_ - set(full)))
                    for tp, records in self.consumer.poll(500).items():
                        pending[tp].extend(
                            (_time_key(r.value), Inbound(r.value, r.topic, r.partition, r.offset))
                            for r in records
                            if r.offset < self.ends[tp]
                        )
                    open_ = {tp for tp in open_ if self.consumer.position(tp) < self.ends[tp]}
                    continue
                first = min((tp for tp in pending if pending[tp]), key=lambda tp: pending[tp][0][0])
                out.append(pending[first].popleft()[1])
                if len(out) >= batch_size:
                    yield out
                    out = []
            if out:
                yield out
        finally:
            self.consumer.close()

    def batches(self) -> Iterator[list[Inbound]]:
        try:
            while any(self.consumer.position(tp) < self.ends[tp] for tp in self.partitions):
                batch = [
                    Inbound(r.value, r.topic, r.partition, r.offset)
                    for tp, records in self.consumer.poll(500).items()
                    for r in records
                    if r.offset < self.ends[tp]
                ]
                if batch:
                    yield batch
        finally:
            self.consumer.close()


def rebuild(
    store: RedisIdentityStore,
    bootstrap: str,
    *,
    touch_topics: Sequence[str],
    profiles_topic: str,
    triggers_topic: str,
    changes_topic: str,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> RebuildReport:
    """Replay the touch topics into ``store`` (which must be empty) and restore versions, triggers, redirects."""
    if not store.is_empty():
        layout = " (in the layout of an earlier version)" if store.has_legacy_keys() else ""
        raise ConfigurationError(
            f"the Redis graph {{{store.prefix}}} is not empty{layout}: rebuild fills an empty one "
            "(`idstream rebuild --force` deletes this graph first)"
        )
    report = RebuildReport()
    started = time.monotonic()
    processor = Processor(store)
    replay = Replay(bootstrap, touch_topics, batch_size)
    if progress:
        progress(0, replay.total)
    for batch in replay.in_time_order(batch_size):
        stats = processor.apply_counted(batch)
        report.events += len(batch)
        for (_topic, _type, outcome), n in stats.events.items():
            report.outcomes[outcome] += n
        for (_topic, code), n in stats.dead_letters.items():
            report.dead_letters[code] += n
        if progress:
            progress(report.events, replay.total)
    report.version = _restore_version(store, bootstrap, profiles_topic)
    report.fired = _restore_fired(store, bootstrap, triggers_topic)
    report.redirects = _restore_redirects(store, bootstrap, changes_topic)
    report.persons = len(store)
    report.seconds = time.monotonic() - started
    return report


def _time_key(value: bytes | None) -> tuple[str, str]:
    """The order of a touch in event time: its key (UTC microseconds, event id), or first if unreadable."""
    try:
        return key_text(decode_touch(value or b"").to_touch().key), ""
    except (InvalidMessage, IdstreamError):
        return "", ""


def _values(bootstrap: str, topic: str) -> Iterator[dict[str, Any]]:
    """The JSON objects on a topic (tombstones and unreadable values skipped)."""
    for batch in Replay(bootstrap, [topic]).batches():
        for msg in batch:
            if msg.value:
                try:
                    value = orjson.loads(msg.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    yield value


def _restore_version(store: RedisIdentityStore, bootstrap: str, topic: str) -> int:
    highest = max((v["version"] for v in _values(bootstrap, topic) if isinstance(v.get("version"), int)), default=0)
    store.raise_version(highest)
    return highest


def _restore_fired(store: RedisIdentityStore, bootstrap: str, topic: str) -> int:
    fired = sorted({v["trigger_id"] for v in _values(bootstrap, topic) if isinstance(v.get("trigger_id"), str)})
    for i in range(0, len(fired), 1000):
        store.mark_fired(fired[i : i + 1000])
    return len(fired)


def _restore_redirects(store: RedisIdentityStore, bootstrap: str, topic: str) -> int:
    pairs = [
        (old, v["profile_id"])
        for v in _values(bootstrap, topic)
        if v.get("type") == "merged" and isinstance(v.get("profile_id"), str)
        for old in v.get("merged_from") or ()
        if isinstance(old, str)
    ]
    return store.restore_redirects(pairs)
