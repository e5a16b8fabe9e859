"""The channel report: per source/medium/campaign, what it brought and what it cost.

Read from the warehouse tables with plain SQL aggregates (the same numbers a BI tool gets):

* ``visits``: site visits in the period; ``persons``: distinct persons with a marketing touch then;
* ``leads``, ``deals``: conversions in the period (a person's first call, form or deal; a deal's
  creation), each split between channels by the chosen attribution model;
* ``won_deals``, ``revenue``: the share of deals created in the period that are won now, and of
  their amounts (a cohort view: a January deal won in April counts for January);
* ``cost``: ad spend of the period's days, in the report currency;
* ``cpl`` = cost / leads, ``cost_per_deal`` = cost / deals, ``cost_per_won`` = cost / won deals,
  ``romi`` = (revenue - cost) / cost, in percent;
* ``assisted``: won deals (created in the period) on whose path the channel appeared before the final
  touch, whatever the model.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.exc import DBAPIError

from identity.attribution import MODELS, Model
from identity.errors import ConfigurationError, InvalidInput, TransientError
from sinks.warehouse import tables as t
from sinks.warehouse.db import to_db, transient

__all__ = ["ChannelReport", "ChannelRow", "ReportSettings", "channel_report", "parse_day", "plot", "render"]

_KEY = tuple[str, str, str]


@dataclass(slots=True)
class ChannelRow:
    source: str
    medium: str
    campaign: str
    visits: int = 0
    persons: int = 0
    leads: float = 0.0
    deals: float = 0.0
    won_deals: float = 0.0
    revenue: float = 0.0
    cost: float = 0.0
    cpl: float | None = None
    cost_per_deal: float | None = None
    cost_per_won: float | None = None
    romi: float | None = None
    assisted: int = 0

    def finish(self) -> None:
        self.cpl = self.cost / self.leads if self.leads > 1e-9 and self.cost else None
        self.cost_per_deal = self.cost / self.deals if self.deals > 1e-9 and self.cost else None
        self.cost_per_won = self.cost / self.won_deals if self.won_deals > 1e-9 and self.cost else None
        self.romi = (self.revenue - self.cost) / self.cost * 100 if self.cost > 0 else None


@dataclass(slots=True)
class ChannelReport:
    model: Model
    start: date | None
    end: date | None
    currency: str
    rows: list[ChannelRow]
    total: ChannelRow

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "currency": self.currency,
            "rows": [_rounded(asdict(r)) for r in self.rows],
            "total": _rounded(asdict(self.total)),
        }


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """The operator's report defaults (from ``IDSTREAM_REPORT_*`` and ``IDSTREAM_CURRENCY_RATES``)."""

    model: str = "last_non_direct"
    currency: str = "RUB"
    rates: Mapping[str, float] | None = None
    tz: str = "UTC"

    def report(self, engine: Engine, model: str | None, start: date | None, end: date | None) -> ChannelReport:
        return channel_report(
            engine, model=model or self.model, start=start, end=end, tz=self.tz, currency=self.currency,
            rates=self.rates,
        )  # fmt: skip


def parse_day(text: str | None, name: str) -> date | None:
    """A YYYY-MM-DD day from a command line or a query string, or a clear error."""
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a day as YYYY-MM-DD, not {text[:40]!r}") from None


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def _bounds(start: date | None, end: date | None, tz: str) -> tuple[datetime | None, datetime | None]:
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {tz!r} (an IANA name such as Europe/Moscow)") from None
    low = to_db(datetime.combine(start, time(), zone)) if start else None
    high = to_db(datetime.combine(end + timedelta(days=1), time(), zone)) if end else None
    return low, high


def channel_report(
    engine: Engine,
    *,
    model: str = "last_non_direct",
    start: date | None = None,
    end: date | None = None,
    tz: str = "UTC",
    currency: str = "RUB",
    rates: Mapping[str, float] | None = None,
) -> ChannelReport:
    """The channel report for days ``start``..``end`` (inclusive, in ``tz``; None: unbounded)."""
    if model not in MODELS:
        raise InvalidInput(f"unknown attribution model {model!r}; choose one of {', '.join(MODELS)}")
    if start and end and start > end:
        raise InvalidInput(f"the period starts ({start}) after it ends ({end})")
    low, high = _bounds(start, end, tz)
    rows: dict[_KEY, ChannelRow] = {}

    def row(key: Any) -> ChannelRow:
        k = (str(key[0]), str(key[1]), str(key[2]))
        held = rows.get(k)
        if held is None:
            held = rows[k] = ChannelRow(*k)
        return held

    def period(column: Any) -> list[Any]:
        out = []
        if low is not None:
            out.append(column >= low)
        if high is not None:
            out.append(column < high)
        return out

    tc, at, dl, asg, sp = t.touches, t.attribution, t.deals, t.assists, t.ad_spend
    channel = (tc.c.source, tc.c.medium, tc.c.campaign)
    try:
        with engine.connect() as conn:
            visits = select(*channel, func.count()).where(tc.c.type == "site_visit", *period(tc.c.occurred_at))
            for *key, n in conn.execute(visits.group_by(*channel)).all():
                row(key).visits = int(n)
            persons = select(*channel, func.count(tc.c.profile_id.distinct())).where(
                tc.c.profile_id.is_not(None), *period(tc.c.occurred_at)
            )
            for *key, n in conn.execute(persons.group_by(*channel)).all():
                row(key).persons = int(n)
            credited = (at.c.source, at.c.medium, at.c.campaign)
            conversions = select(*credited, at.c.conversion, func.sum(at.c.credit)).where(
                at.c.model == model, *period(at.c.converted_at)
            )
            for *key, conversion, credit in conn.execute(conversions.group_by(*credited, at.c.conversion)).all():
                if conversion == "lead":
                    row(key).leads = float(credit)
                else:
                    row(key).deals = float(credit)
            won = (
                select(*credited, func.sum(at.c.credit), func.sum(at.c.credit * func.coalesce(dl.c.amount, 0.0)))
                .select_from(at.join(dl, and_(at.c.conversion == "deal", dl.c.deal_id == at.c.conversion_id)))
                .where(at.c.model == model, dl.c.status == "won", *period(at.c.converted_at))
            )
            for *key, credit, revenue in conn.execute(won.group_by(*credited)).all():
                row(key).won_deals = float(credit)
                row(key).revenue = float(revenue or 0.0)
            assisted_by = (asg.c.source, asg.c.medium, asg.c.campaign)
            assisted = (
                select(*assisted_by, func.count())
                .select_from(asg.join(dl, dl.c.deal_id == asg.c.deal_id))
                .where(dl.c.status == "won", *period(dl.c.created_at))
            )
            for *key, n in conn.execute(assisted.group_by(*assisted_by)).all():
                row(key).assisted = int(n)
            spent_on = (sp.c.source, sp.c.medium, sp.c.campaign)
            days = []
            if start:
                days.append(sp.c.date >= start)
            if end:
                days.append(sp.c.date <= end)
            spend = select(*spent_on, sp.c.currency, func.sum(sp.c.cost)).where(*days)
            for *key, cur, cost in conn.execute(spend.group_by(*spent_on, sp.c.currency)).all():
                row(key).cost += float(cost) * _rate(cur, currency, rates or {})
            # one person, many channels: the total is not the sum of the rows
            everyone = select(func.count(tc.c.profile_id.distinct())).where(
                tc.c.profile_id.is_not(None), *period(tc.c.occurred_at)
            )
            persons_total = int(conn.scalar(everyone) or 0)
    except DBAPIError as exc:
        if transient(exc):
            raise TransientError(f"warehouse unavailable: {exc.orig}") from None
        raise
    ordered = sorted(rows.values(), key=lambda r: (-r.revenue, -r.cost, -r.leads, r.source, r.medium, r.campaign))
    total = ChannelRow("(total)", "", "")
    for r in ordered:
        r.finish()
        for f in ("visits", "leads", "deals", "won_deals", "revenue", "cost"):
            setattr(total, f, getattr(total, f) + getattr(r, f))
    total.persons = persons_total
    total.assisted = sum(r.assisted for r in ordered)
    total.finish()
    return ChannelReport(model, start, end, currency, ordered, total)


def _rate(code: str, currency: str, rates: Mapping[str, float]) -> float:
    if code == currency:
        return 1.0
    rate = rates.get(code)
    if rate is None:
        raise ConfigurationError(
            f"ad spend in {code} but no rate to {currency}: set IDSTREAM_CURRENCY_RATES, e.g. '{{\"{code}\": 1.0}}' "
            f"(1 {code} in {currency})"
        )
    return rate


# ----------------------------------------------------------------------------- output

_COLUMNS = [f.name for f in fields(ChannelRow)]
_HEADINGS = {
    "source": "source", "medium": "medium", "campaign": "campaign", "visits": "visits", "persons": "persons",
    "leads": "leads", "deals": "deals", "won_deals": "won", "revenue": "revenue", "cost": "cost", "cpl": "CPL",
    "cost_per_deal": "cost/deal", "cost_per_won": "cost/won", "romi": "ROMI %", "assisted": "assisted",
}  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 100 or value == int(value) else f"{value:.2f}"
    return str(value)


#: A spreadsheet runs a cell that starts with one of these as a formula: UTM tags are anyone's to write.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(value: Any) -> Any:
    """A text cell of the CSV that a spreadsheet shows as text, never runs (``=HYPERLINK(...)`` in a UTM tag)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def render(report: ChannelReport, fmt: str) -> str:
    """The report as ``table`` (for a terminal), ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"
    rows = [*report.rows, report.total]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    "" if v is None else round(v, 6) if isinstance(v, float) else _text_cell(v)
                    for v in asdict(r).values()
                ]
            )
        return out.getvalue()
    if fmt != "table":
        raise InvalidInput(f"unknown format {fmt!r}; choose table, csv or json")
    cells = [[_HEADINGS[c] for c in _COLUMNS], *[[_cell(v) for v in asdict(r).values()] for r in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    numeric = {i for i, c in enumerate(_COLUMNS) if c not in ("source", "medium", "campaign")}
    period = f"{report.start or 'the beginning'} to {report.end or 'now'}"
    lines = [f"channels, {period}, model {report.model}, money in {report.currency}"]
    for n, line in enumerate(cells):
        text = "  ".join(v.rjust(widths[i]) if i in numeric else v.ljust(widths[i]) for i, v in enumerate(line))
        lines.append(text.rstrip())
        if n == 0 or n == len(cells) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def plot(report: ChannelReport, path: Path, top: int = 12) -> Path:
    """A PNG comparing the channels: cost and revenue bars, leads and won deals, ROMI labels."""
    import matplotlib  # noqa: PLC0415 - heavy, and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = report.rows[:top]
    labels = [f"{r.source}/{r.medium}" + (f"\n{r.campaign}" if r.campaign != "(not set)" else "") for r in rows]
    fig, (money, counts) = plt.subplots(1, 2, figsize=(14, max(4.0, 0.6 * len(rows) + 1.5)), sharey=True)
    ys = list(range(len(rows)))
    height = 0.38
    money.barh([y - height / 2 for y in ys], [r.cost for r in rows], height, label="cost", color="#d9534f")
    money.barh([y + height / 2 for y in ys], [r.revenue for r in rows], height, label="revenue", color="#5cb85c")
    for y, r in zip(ys, rows, strict=True):
        if r.romi is not None:
            money.annotate(f"ROMI {r.romi:,.0f}%", (max(r.cost, r.revenue), y), xytext=(4, 0),
                           textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    money.margins(x=0.18)  # room for the ROMI labels
    money.set_yticks(ys, labels)
    money.invert_yaxis()
    money.set_xlabel(report.currency)
    money.set_title("cost and revenue")
    money.legend(loc="lower right")
    counts.barh([y - height / 2 for y in ys], [r.leads for r in rows], height, label="leads", color="#5bc0de")
    counts.barh([y + height / 2 for y in ys], [r.won_deals for r in rows], height, label="won deals", color="#f0ad4e")
    counts.set_title("leads and won deals")
    counts.legend(loc="lower right")
    period = f"{report.start or 'the beginning'} to {report.end or 'now'}"
    fig.suptitle(f"Channels, {period} (attribution: {report.model})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
