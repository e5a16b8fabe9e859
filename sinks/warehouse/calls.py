"""The call report: answered and missed calls by channel, day and hour; waiting; missed calls returned in time.

A missed call is *returned* when an answered call with the same person (either way: the client calling again
and getting through, or the call center calling back) follows it within ``within`` minutes; calls of nobody
known (no person in the warehouse) cannot be returned and are counted apart. Days and hours are the report
time zone's. Calls without an outcome (a producer that sends no ``call.status``) count as calls only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from identity import InvalidInput, TransientError
from sinks.warehouse import tables as t
from sinks.warehouse.db import from_db, transient
from sinks.warehouse.report import _bounds

__all__ = ["CallCounts", "CallReport", "call_report", "render_calls"]


@dataclass
class CallCounts:
    calls: int = 0
    answered: int = 0
    missed: int = 0
    busy: int = 0
    #: missed calls of known persons, and those of them returned within the window
    missed_known: int = 0
    returned: int = 0
    wait_total_s: float = 0.0
    waits: int = 0

    def add(self, status: str | None, wait: float | None) -> None:
        self.calls += 1
        if status == "answered":
            self.answered += 1
        elif status == "missed":
            self.missed += 1
        elif status == "busy":
            self.busy += 1
        if wait is not None:
            self.wait_total_s += wait
            self.waits += 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in ("wait_total_s", "waits")}
        out["avg_wait_s"] = round(self.wait_total_s / self.waits, 1) if self.waits else None
        out["returned_share"] = round(self.returned / self.missed_known, 4) if self.missed_known else None
        return out


@dataclass
class CallReport:
    start: date | None
    end: date | None
    tz: str
    within_minutes: int
    total: CallCounts = field(default_factory=CallCounts)
    by_channel: dict[tuple[str, str], CallCounts] = field(default_factory=dict)
    by_day: dict[str, CallCounts] = field(default_factory=dict)
    by_hour: dict[int, CallCounts] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "timezone": self.tz,
            "returned_within_minutes": self.within_minutes,
            "total": self.total.to_dict(),
            "channels": [
                {"source": s, "medium": m, **c.to_dict()}
                for (s, m), c in sorted(self.by_channel.items(), key=lambda kv: (-kv[1].calls, kv[0]))
            ],
            "days": [{"day": d, **c.to_dict()} for d, c in sorted(self.by_day.items())],
            "hours": [{"hour": h, **c.to_dict()} for h, c in sorted(self.by_hour.items())],
        }


def call_report(
    engine: Engine, *, start: date | None = None, end: date | None = None, tz: str = "UTC", within: int = 30
) -> CallReport:
    """Calls of days ``start``..``end`` (inclusive, in ``tz``); returns looked for ``within`` minutes after."""
    if within <= 0:
        raise InvalidInput("the return window must be a positive number of minutes")
    if start and end and start > end:
        raise InvalidInput(f"the period starts ({start}) after it ends ({end})")
    low, high = _bounds(start, end, tz)
    zone = ZoneInfo(tz)
    tc = t.touches
    query = select(tc.c.occurred_at, tc.c.source, tc.c.medium, tc.c.call_status, tc.c.wait_s, tc.c.profile_id).where(
        tc.c.type == "call"
    )
    if low is not None:
        query = query.where(tc.c.occurred_at >= low)
    if high is not None:  # answers to the last missed calls may come just after the period
        query = query.where(tc.c.occurred_at < high + timedelta(minutes=within))
    try:
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(tc.c.occurred_at)).all()
    except DBAPIError as exc:
        if transient(exc):
            raise TransientError(f"warehouse unavailable: {exc.orig}") from None
        raise
    report = CallReport(start, end, tz, within)
    answered_at: defaultdict[str, list[datetime]] = defaultdict(list)
    calls = []
    for occurred, source, medium, status, wait, person in rows:
        moment = from_db(occurred)
        if moment is None:  # the column is NOT NULL: never, but the type says it may be
            continue
        calls.append((moment, source, medium, status, wait, person))
        if status == "answered" and person:
            answered_at[person].append(moment)
    window = timedelta(minutes=within)
    for moment, source, medium, status, wait, person in calls:
        if high is not None and moment >= high:
            continue  # only looked at as an answer
        local = moment.astimezone(zone)
        groups = [
            report.total,
            report.by_channel.setdefault((source, medium), CallCounts()),
            report.by_day.setdefault(local.date().isoformat(), CallCounts()),
            report.by_hour.setdefault(local.hour, CallCounts()),
        ]
        returned = (
            status == "missed"
            and person is not None
            and any(moment < later <= moment + window for later in answered_at.get(person, ()))
        )
        for group in groups:
            group.add(status, wait)
            if status == "missed" and person is not None:
                group.missed_known += 1
                group.returned += int(returned)
    return report


def render_calls(report: CallReport) -> str:
    """The report as a text table (channels, then hours)."""
    total = report.total.to_dict()
    share = "n/a" if total["returned_share"] is None else f"{total['returned_share']:.0%}"
    wait = "n/a" if total["avg_wait_s"] is None else f"{total['avg_wait_s']} s"
    lines = [
        f"calls {report.start or '...'}..{report.end or '...'} ({report.tz}): {total['calls']} calls, "
        f"{total['answered']} answered, {total['missed']} missed; {share} of the missed returned within "
        f"{report.within_minutes} min; average wait {wait}",
        "",
        f"{'source / medium':<36} {'calls':>6} {'answered':>9} {'missed':>7} {'returned':>9} {'avg wait':>9}",
    ]
    for row in report.to_dict()["channels"]:
        name = f"{row['source']} / {row['medium']}"[:36]
        wait = "" if row["avg_wait_s"] is None else f"{row['avg_wait_s']:.0f} s"
        lines.append(
            f"{name:<36} {row['calls']:>6} {row['answered']:>9} {row['missed']:>7} "
            f"{row['returned']:>4}/{row['missed_known']:<4} {wait:>9}"
        )
    lines += ["", f"{'hour':<6} {'calls':>6} {'answered':>9} {'missed':>7}"]
    for row in report.to_dict()["hours"]:
        lines.append(f"{row['hour']:02d}:00  {row['calls']:>6} {row['answered']:>9} {row['missed']:>7}")
    return "\n".join(lines) + "\n"
