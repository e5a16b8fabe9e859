"""Yandex Direct Reports API (v5): each campaign's cost per day as ``ad_spend`` messages.

One ``CAMPAIGN_PERFORMANCE_REPORT`` (``Date``, ``CampaignId``, ``CampaignName``, ``Cost``) for the period, in money
(``returnMoneyInMicros: false``), without the title and total rows. The API builds large reports offline: it
answers 201 or 202 with ``retryIn`` and the identical request is sent again until it answers 200; the report's name
is a digest of the request, so a run that stops while waiting asks for the same report again (Direct keeps a
built report five hours). Each row becomes ``{"type": "ad_spend", "date", "source": "yandex", "medium": "cpc",
"campaign", "cost", "currency", "account", "reported_at"}``; the campaign is the campaign's name or id, as the ads'
``utm_campaign`` carries it. A day's cost is restated for days after it, so a run starts three days before the end
of the last finished period (the newest report of a day replaces older ones downstream).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from identity import InvalidInput, TransientError

__all__ = ["DirectError", "DirectUnavailable", "Reports", "spend_rows"]

FIELDS = ("Date", "CampaignId", "CampaignName", "Cost")


class DirectError(InvalidInput):
    """Direct refused the request (token, login, period): retrying will not help."""

    code = "direct_refused"


class DirectUnavailable(TransientError):
    """Direct did not answer in time, or asked to wait longer than the run may: run again to resume."""

    code = "direct_unavailable"


class Reports:
    """The Reports service for one advertiser (``Client-Login``; an agency's token reaches its clients)."""

    def __init__(self, url: str, token: str, login: str | None, *, timeout: float = 120.0, retries: int = 5) -> None:
        self.url = url
        self._token = token
        self.login = login
        self.timeout, self.retries = timeout, retries

    def body(self, date1: str, date2: str, *, vat: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            "SelectionCriteria": {"DateFrom": date1, "DateTo": date2},
            "FieldNames": list(FIELDS),
            "ReportType": "CAMPAIGN_PERFORMANCE_REPORT",
            "DateRangeType": "CUSTOM_DATE",
            "Format": "TSV",
            "IncludeVAT": "YES" if vat else "NO",
            "IncludeDiscount": "NO",
        }
        digest = hashlib.sha1(json.dumps([params, self.login], sort_keys=True).encode(), usedforsecurity=False)
        params["ReportName"] = f"idstream_spend_{date1}_{date2}_{digest.hexdigest()[:10]}"
        return {"params": params}

    def fetch(
        self, body: dict[str, Any], *, patience: float = 3600.0, wait: Callable[[float], None] = time.sleep
    ) -> str:
        """The report's TSV, waiting as Direct asks (``retryIn``) while it builds it offline."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept-Language": "en",
            "processingMode": "auto",
            "returnMoneyInMicros": "false",
            "skipReportHeader": "true",
            "skipReportSummary": "true",
            "Content-Type": "application/json; charset=utf-8",
        }
        if self.login:
            headers["Client-Login"] = self.login
        data = json.dumps(body).encode()
        waited, failures = 0.0, 0
        while True:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    status = int(response.status)
                    text = str(response.read().decode("utf-8-sig", "replace"))
                    retry_in = max(1.0, float(response.headers.get("retryIn") or 10))
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc.read()[:2000])
                if exc.code >= 500 and failures < self.retries:
                    failures += 1
                    wait(min(2.0**failures, 30.0))
                    continue
                if exc.code >= 500:
                    raise DirectUnavailable(f"Direct answered {exc.code}: {detail}") from None
                raise DirectError(f"Direct refused the report ({exc.code}): {detail}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                if failures < self.retries:
                    failures += 1
                    wait(min(2.0**failures, 30.0))
                    continue
                raise DirectUnavailable(f"Direct is unreachable ({type(exc).__name__})") from None
            if status == 200:
                return text
            if waited >= patience:  # 201 queued, 202 building
                raise DirectUnavailable(f"Direct is still building the report after {patience:.0f} s; run again")
            wait(retry_in)
            waited += retry_in


def _error_text(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error", {})
    except (ValueError, AttributeError):
        return raw.decode("utf-8", "replace")[:200]
    return f"{error.get('error_string', '')} {error.get('error_detail', '')}".strip()[:300]


def spend_rows(
    tsv: str, *, currency: str, account: str, campaign_by: str, reported_at: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """``ad_spend`` messages of a report (rows whose cost is not a number are skipped)."""
    lines = [line for line in tsv.split("\n") if line.strip()]
    if not lines:
        return
    header = lines[0].split("\t")
    if not set(FIELDS) <= set(header):
        raise DirectError(f"the report has columns {header[:8]}, not {list(FIELDS)}")
    stamp = (reported_at or datetime.now(UTC)).isoformat()
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells, strict=True))
        try:
            cost = float(row["Cost"])
        except ValueError:
            continue
        campaign = row["CampaignName"] if campaign_by == "name" else row["CampaignId"]
        yield {
            "type": "ad_spend",
            "date": row["Date"],
            "source": "yandex",
            "medium": "cpc",
            "campaign": campaign[:256] or None,
            "cost": round(cost, 2),
            "currency": currency,
            "account": account[:128],
            "reported_at": stamp,
        }
