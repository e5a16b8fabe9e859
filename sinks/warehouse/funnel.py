"""The deal funnel: how far the deals created in a period went, stage by stage, by channel or project, and over time.

A CRM sends stage changes (``deal_stages``); it does not send the order of its pipeline's stages. The order is
read off the deals themselves: a stage's place is the mean position at which deals first reached it, so a
pipeline ``new → qualified → meeting → contract → won`` comes out in that order even when some deals skip a
stage. A deal *reached* a stage when it reached that stage or any later one (a deal that jumped from ``new`` to
``contract`` passed ``qualified`` for the funnel's purpose); a won deal reached every open stage. Stages where
deals end lost (their deals' status is ``lost`` there) are not steps: they are counted apart, as ``lost``.

By channel, each deal counts with its attribution credit under the chosen model (a deal split 50/50 between
two channels adds half a deal to each), so a channel's funnel sums to its share of the deals. By project, a deal
counts for the project its person's touches named most often (``(none)`` when none did).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

from identity.attribution import MODELS
from identity.errors import InvalidInput, TransientError
from sinks.warehouse import tables as t
from sinks.warehouse.db import from_db, transient
from sinks.warehouse.report import _bounds

__all__ = ["Funnel", "FunnelRow", "deal_funnel"]

By = Literal["channel", "project"]
Period = Literal["week", "month"]


@dataclass(slots=True)
class FunnelRow:
    """One group's deals per stage (reached), and those lost and won."""

    name: str
    reached: list[float]
    lost: float = 0.0

    def conversion(self) -> list[float | None]:
        """Stage-to-stage conversion in percent (None for the first stage, or after a stage nobody reached)."""
        out: list[float | None] = [None]
        for before, after in zip(self.reached, self.reached[1:], strict=False):
            out.append(round(after / before * 100, 1) if before > 1e-9 else None)
        return out

    def to_dict(self) -> dict[str, Any]:
        first = self.reached[0] if self.reached else 0.0
        last = self.reached[-1] if self.reached else 0.0
        return {
            "name": self.name,
            "reached": [round(v, 3) for v in self.reached],
            "conversion": self.conversion(),
            "overall": round(last / first * 100, 1) if first > 1e-9 else None,
            "lost": round(self.lost, 3),
        }


@dataclass(slots=True)
class Funnel:
    model: str
    by: By
    period: Period
    start: date | None
    end: date | None
    tz: str
    stages: list[str]
    total: FunnelRow
    groups: list[FunnelRow] = field(default_factory=list)
    series: list[FunnelRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "by": self.by,
            "period": self.period,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "timezone": self.tz,
            "stages": self.stages,
            "total": self.total.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "series": [s.to_dict() for s in self.series],
        }


def _moment(value: Any) -> datetime:
    moment = from_db(value)
    if moment is None:  # NOT NULL columns: never, but a clear error beats a TypeError
        raise ValueError("a deal without its time in the warehouse")
    return moment


def _period_start(moment: datetime, period: str, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone).date()
    if period == "month":
        return local.replace(day=1).isoformat()
    return (local - timedelta(days=local.weekday())).isoformat()


def deal_funnel(
    engine: Engine,
    *,
    model: str = "last_non_direct",
    by: str = "channel",
    period: str = "week",
    start: date | None = None,
    end: date | None = None,
    tz: str = "UTC",
    groups: int = 10,
) -> Funnel:
    """The funnel of deals created in days ``start``..``end`` (inclusive, in ``tz``)."""
    if model not in MODELS:
        raise InvalidInput(f"unknown attribution model {model!r}; choose one of {', '.join(MODELS)}")
    if by not in ("channel", "project"):
        raise InvalidInput(f"by must be 'channel' or 'project', not {by[:40]!r}")
    if period not in ("week", "month"):
        raise InvalidInput(f"period must be 'week' or 'month', not {period[:40]!r}")
    if start and end and start > end:
        raise InvalidInput(f"the period starts ({start}) after it ends ({end})")
    low, high = _bounds(start, end, tz)
    zone = ZoneInfo(tz)
    dl, ds, at, tc = t.deals, t.deal_stages, t.attribution, t.touches
    window = [
        c for c in (dl.c.created_at >= low if low else None, dl.c.created_at < high if high else None) if c is not None
    ]
    try:
        with engine.connect() as conn:
            deals = {
                row.deal_id: row
                for row in conn.execute(
                    select(dl.c.deal_id, dl.c.profile_id, dl.c.stage, dl.c.status, dl.c.created_at).where(*window)
                )
            }
            history: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
            if deals:
                chosen = select(dl.c.deal_id).where(*window).scalar_subquery()
                steps = select(ds.c.deal_id, ds.c.stage, ds.c.occurred_at).where(ds.c.deal_id.in_(chosen))
                for deal_id, stage, occurred in conn.execute(steps):
                    history[deal_id].append((_moment(occurred), stage))
            keyed: dict[str, dict[str, float]] = defaultdict(dict)
            if deals and by == "channel":
                chosen = select(dl.c.deal_id).where(*window).scalar_subquery()
                credits = select(at.c.conversion_id, at.c.source, at.c.medium, at.c.credit).where(
                    at.c.conversion == "deal", at.c.model == model, at.c.conversion_id.in_(chosen)
                )
                for deal_id, source, medium, credit in conn.execute(credits):
                    name = f"{source} / {medium}"
                    keyed[deal_id][name] = keyed[deal_id].get(name, 0.0) + float(credit)
            elif deals:
                people = select(dl.c.profile_id).where(*window, dl.c.profile_id.is_not(None)).scalar_subquery()
                named = (
                    select(tc.c.profile_id, tc.c.project, func.count())
                    .where(tc.c.profile_id.in_(people), tc.c.project.is_not(None), tc.c.project != "")
                    .group_by(tc.c.profile_id, tc.c.project)
                )
                best: dict[str, tuple[int, str]] = {}
                for profile_id, project, n in conn.execute(named):
                    if (int(n), project) > best.get(profile_id, (0, "")):
                        best[profile_id] = (int(n), project)
                for deal_id, row in deals.items():
                    keyed[deal_id][best[row.profile_id][1] if row.profile_id in best else "(none)"] = 1.0
    except DBAPIError as exc:
        if transient(exc):
            raise TransientError(f"warehouse unavailable: {exc.orig}") from None
        raise
    for deal_id, row in deals.items():  # a deal whose stage changes are not (yet) in the warehouse: its current one
        if not history[deal_id]:
            history[deal_id].append((_moment(row.created_at), row.stage))
        history[deal_id].sort()
    lost_at = Counter(row.stage for row in deals.values() if row.status == "lost")
    current = Counter(row.stage for row in deals.values())
    lost_stages = {stage for stage, n in lost_at.items() if n * 2 > current[stage]}
    won_stages = {row.stage for row in deals.values() if row.status == "won"}
    positions: dict[str, list[int]] = defaultdict(list)
    for path in history.values():
        seen: list[str] = []
        for _, stage in path:
            if stage not in seen and stage not in lost_stages:
                seen.append(stage)
        for i, stage in enumerate(seen):
            positions[stage].append(i)
    order = sorted(positions, key=lambda s: (s in won_stages, sum(positions[s]) / len(positions[s]), s))
    index = {stage: i for i, stage in enumerate(order)}

    def furthest(deal_id: str) -> int:
        row = deals[deal_id]
        if row.status == "won":
            return len(order) - 1
        return max((index[s] for _, s in history[deal_id] if s in index), default=-1)

    def new_row(name: str) -> FunnelRow:
        return FunnelRow(name, [0.0] * len(order))

    total = new_row("(total)")
    by_group: dict[str, FunnelRow] = {}
    by_time: dict[str, FunnelRow] = {}
    for deal_id, row in deals.items():
        reach = furthest(deal_id)
        lost = row.status == "lost"
        when = _period_start(_moment(row.created_at), period, zone)
        shares = keyed.get(deal_id) or ({"(none)": 1.0} if by == "project" else {"(no attribution)": 1.0})
        targets = [(total, 1.0), (by_time.setdefault(when, new_row(when)), 1.0)]
        targets += [(by_group.setdefault(name, new_row(name)), credit) for name, credit in shares.items()]
        for target, weight in targets:
            for i in range(reach + 1):
                target.reached[i] += weight
            if lost:
                target.lost += weight
    ranked = sorted(by_group.values(), key=lambda r: (-(r.reached[0] if r.reached else 0.0), r.name))
    return Funnel(
        model, by, period, start, end, tz, order, total,  # type: ignore[arg-type]
        ranked[:groups], [by_time[k] for k in sorted(by_time)],
    )  # fmt: skip
