"""An example subscriber of ``profiles.updates``: a local mirror of golden profiles, as a CRM keeps one.

Run it as ``idstream crm-mirror --db mirror.sqlite`` (``--follow`` to keep going, ``--check`` to
compare the mirror with ``idstream export``). It shows every rule a subscriber needs:

* **Keep the highest version per profile.** Versions grow across all workers, and a profile and its
  version are read in one atomic step, so a higher version is always a newer state. Messages of
  different profiles live on different partitions and may arrive in any interleaving.
* **created / updated / split**: upsert the profile. A ``split`` moved identifiers between this
  profile and those in ``split_from``; each of them has its own update in the same batch.
* **merged**: the ids in ``merged_from`` are retired into this one. Re-home everything you filed
  under them (here: deals) to the survivor, and ignore any older update of a retired id that is
  still on its way (its version is lower than the merge's). A retired id can come back later (a split
  gives a person its id back) with a higher version: then it is live again.
* **tombstone** (a null value under a profile id's key): the id is retired; drop its row.
* **erased**: the person was erased on request; delete everything about it.

Offsets are stored in the same SQLite transaction as the data they produced, so a crash of the
mirror never applies a message twice or skips one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from schemas import ProfileUpdate

__all__ = ["Mirror", "follow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (profile_id TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retired (profile_id TEXT PRIMARY KEY, survivor TEXT, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deals (deal_id TEXT PRIMARY KEY, profile_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT, partition INTEGER, next_offset INTEGER, PRIMARY KEY (topic, partition));
"""


class Mirror:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.db = sqlite3.connect(str(path))
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ applying

    def _version(self, pid: str) -> int:
        row = self.db.execute(
            "SELECT max(v) FROM (SELECT version AS v FROM profiles WHERE profile_id = ?"
            " UNION ALL SELECT version FROM retired WHERE profile_id = ?)",
            (pid, pid),
        ).fetchone()
        return int(row[0] or 0)

    def _forget(self, pid: str) -> None:
        self.db.execute("DELETE FROM profiles WHERE profile_id = ?", (pid,))

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one message (not committed: see :meth:`apply_many`)."""
        if key is None:
            return
        if value is None:  # tombstone: the id was retired by a merge (the merge message names the survivor)
            self._forget(key.decode())
            return
        update = ProfileUpdate.model_validate_json(value)
        pid = update.profile_id
        if update.version <= self._version(pid):
            return  # stale: a newer state, or the merge that retired this id, is already here
        if update.kind == "erased" or update.profile is None:
            self._forget(pid)
            self.db.execute("DELETE FROM deals WHERE profile_id = ?", (pid,))
            self.db.execute(
                "INSERT OR REPLACE INTO retired (profile_id, survivor, version) VALUES (?, NULL, ?)",
                (pid, update.version),
            )
            return
        self.db.execute("DELETE FROM retired WHERE profile_id = ?", (pid,))  # a live id again, if it was retired
        self.db.execute(
            "INSERT OR REPLACE INTO profiles (profile_id, version, body) VALUES (?, ?, ?)",
            (pid, update.version, json.dumps(update.profile, ensure_ascii=False, sort_keys=True)),
        )
        for old in update.merged_from:
            if self._version(old) < update.version:
                self._forget(old)
                self.db.execute(
                    "INSERT OR REPLACE INTO retired (profile_id, survivor, version) VALUES (?, ?, ?)",
                    (old, pid, update.version),
                )
            self.db.execute("UPDATE deals SET profile_id = ? WHERE profile_id = ?", (pid, old))  # re-home
        for deal_id in update.profile.get("deals", {}):
            self.db.execute("INSERT OR REPLACE INTO deals (deal_id, profile_id) VALUES (?, ?)", (deal_id, pid))

    def apply_many(
        self, messages: Iterable[tuple[bytes | None, bytes | None]], position: tuple[str, int, int] | None = None
    ) -> None:
        """Apply messages and (optionally) the next offset of their partition, in one transaction."""
        with self.db:
            for key, value in messages:
                self.apply(key, value)
            if position is not None:
                self.db.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", position)

    # ------------------------------------------------------------------ reading

    def profiles(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT body FROM profiles ORDER BY profile_id")
        return [json.loads(body) for (body,) in rows]

    def deals(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT deal_id, profile_id FROM deals ORDER BY deal_id").fetchall())

    def survivor(self, pid: str) -> str | None:
        """Where a retired id's records went (following chains of merges)."""
        for _ in range(64):
            row = self.db.execute("SELECT survivor FROM retired WHERE profile_id = ?", (pid,)).fetchone()
            if row is None:
                return pid
            if row[0] is None:
                return None
            pid = row[0]
        return None

    def next_offsets(self, topic: str) -> dict[int, int]:
        rows = self.db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,))
        return dict(rows.fetchall())


def follow(mirror: Mirror, bootstrap: str, topic: str, *, forever: bool = False, idle: float = 1.0) -> Iterator[int]:
    """Consume ``topic`` into the mirror from its stored offsets; yields the number applied per poll.

    Assign mode with offsets kept in the mirror's own database (no consumer group): the mirror's state
    and its position always commit together.
    """
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        stored = mirror.next_offsets(topic)
        for tp in partitions:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        quiet_since = time.monotonic()
        while True:
            polled = consumer.poll(200)
            applied = 0
            for tp, records in polled.items():
                mirror.apply_many(((r.key, r.value) for r in records), (topic, tp.partition, records[-1].offset + 1))
                applied += len(records)
            if applied:
                quiet_since = time.monotonic()
                yield applied
                continue
            ends = consumer.end_offsets(partitions)
            caught_up = all(consumer.position(tp) >= ends[tp] for tp in partitions)
            if not forever and caught_up and time.monotonic() - quiet_since >= idle:
                return
    finally:
        consumer.close()
