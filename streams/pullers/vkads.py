"""VK Ads (ads.vk.com) statistics: each campaign's ("ad plan's") cost per day as ``ad_spend`` messages.

Authentication is OAuth2 client credentials (``POST /api/v2/oauth2/token.json``). VK Ads allows five tokens per
application and user and a token lives a day, so the token is kept in a private file and refreshed
(``grant_type=refresh_token``), never minted per run; at the five-token cap the application's tokens are deleted
(``/api/v2/oauth2/token/delete.json``) and one is minted. Campaigns come from ``/api/v2/ad_plans.json`` (paged),
their cost from ``/api/v2/statistics/ad_plans/day.json`` (``metrics=base``, at most 200 ids and 92 days a call;
``spent`` is a decimal string). Each campaign-day becomes ``{"type": "ad_spend", "source": "vk", "medium": "cpc",
"campaign": <name or id>, ...}`` (the source and medium as your ads' UTM tags say). VK Ads revises recent days, so a
run starts seven days before the end of the last finished period.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from identity import InvalidInput, TransientError

__all__ = ["VkAds", "VkAdsError", "VkAdsUnavailable", "chunks_of", "spend_rows"]

MAX_IDS, MAX_DAYS = 200, 92


class VkAdsError(InvalidInput):
    """VK Ads refused (credentials, an account without access): retrying will not help."""

    code = "vkads_refused"


class VkAdsUnavailable(TransientError):
    """VK Ads did not answer, or asked to slow down: run again to resume."""

    code = "vkads_unavailable"


def chunks_of(ids: list[int], date1: date, date2: date) -> Iterator[tuple[list[int], date, date]]:
    """The calls a period needs: at most 200 ids and 92 days each."""
    for i in range(0, len(ids), MAX_IDS):
        start = date1
        while start <= date2:
            end = min(start + timedelta(days=MAX_DAYS - 1), date2)
            yield ids[i : i + MAX_IDS], start, end
            start = end + timedelta(days=1)


class VkAds:
    """The VK Ads API of one application (``client_id``, ``client_secret``), its token kept at ``token_file``."""

    def __init__(
        self, base_url: str, client_id: str, client_secret: str, token_file: Path, *, timeout: float = 60.0
    ) -> None:
        self.base = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.token_file = token_file
        self.timeout = timeout
        self._token: dict[str, Any] | None = None

    # ---------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, *, form: dict[str, str] | None = None,
                 query: dict[str, str] | None = None, bearer: str | None = None) -> tuple[int, Any]:  # fmt: skip
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read()[:4000] or b"null")
            except ValueError:
                body = None
            return exc.code, body
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise VkAdsUnavailable(f"VK Ads is unreachable ({type(exc).__name__})") from None

    # ---------------------------------------------------------------- the token

    def _save(self, answer: dict[str, Any]) -> dict[str, Any]:
        token = {
            "access_token": answer["access_token"],
            "refresh_token": answer.get("refresh_token"),
            "expires_at": time.time() + float(answer.get("expires_in") or 86_400),
        }
        self.token_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.token_file.parent, prefix=self.token_file.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: readable by this user only
            json.dump(token, out)
        os.replace(tmp, self.token_file)
        self._token = token
        return token

    def _grant(self, form: dict[str, str]) -> tuple[int, Any]:
        return self._request("POST", "/api/v2/oauth2/token.json",
                             form={**form, "client_id": self.client_id, "client_secret": self._secret})  # fmt: skip

    def token(self) -> str:
        """A live access token: the kept one, refreshed when less than 30 minutes remain, else a new one."""
        held = self._token
        if held is None and self.token_file.exists():
            try:
                held = json.loads(self.token_file.read_text(encoding="utf-8"))
            except ValueError:
                held = None
        if held and float(held.get("expires_at", 0)) - time.time() > 1800:
            self._token = held
            return str(held["access_token"])
        if held and held.get("refresh_token"):
            status, answer = self._grant({"grant_type": "refresh_token", "refresh_token": held["refresh_token"]})
            if status == 200 and isinstance(answer, dict) and answer.get("access_token"):
                return str(self._save(answer)["access_token"])
        status, answer = self._grant({"grant_type": "client_credentials"})
        if status == 403:  # five tokens already: delete the application's tokens and mint one
            self._request("POST", "/api/v2/oauth2/token/delete.json",
                          form={"client_id": self.client_id, "client_secret": self._secret})  # fmt: skip
            status, answer = self._grant({"grant_type": "client_credentials"})
        if status != 200 or not isinstance(answer, dict) or not answer.get("access_token"):
            raise VkAdsError(f"VK Ads refused the client credentials ({status}): {_message(answer)}")
        return str(self._save(answer)["access_token"])

    def get(self, path: str, query: dict[str, str]) -> Any:
        """One GET with the token; an expired one is refreshed once."""
        for attempt in range(2):
            status, answer = self._request("GET", path, query=query, bearer=self.token())
            if status == 200:
                return answer
            if status == 401 and attempt == 0 and self._token is not None:  # expired early: refresh, once
                self._token = {**self._token, "expires_at": 0}
                continue
            if status == 429 or status >= 500:
                raise VkAdsUnavailable(f"VK Ads answered {status} to {path}: {_message(answer)}")
            raise VkAdsError(f"VK Ads refused {path} ({status}): {_message(answer)}")
        raise VkAdsError(f"VK Ads refused the token for {path}")

    # ---------------------------------------------------------------- reading

    def ad_plans(self) -> dict[int, str]:
        """Every campaign of the account: id -> name."""
        out: dict[int, str] = {}
        offset = 0
        while True:
            page = self.get("/api/v2/ad_plans.json", {"fields": "id,name", "limit": "250", "offset": str(offset)})
            items = page.get("items") or [] if isinstance(page, dict) else []
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("id"), int):
                    out[item["id"]] = str(item.get("name") or item["id"])
            offset += len(items)
            if not items or offset >= int(page.get("count") or 0):
                return out

    def daily(self, ids: list[int], date1: date, date2: date) -> Iterator[tuple[int, str, float]]:
        """(campaign id, day, cost) for every campaign-day with a cost."""
        for chunk, start, end in chunks_of(ids, date1, date2):
            query = {"id": ",".join(map(str, chunk)), "date_from": start.isoformat(), "date_to": end.isoformat(),
                     "metrics": "base"}  # fmt: skip
            answer = self.get("/api/v2/statistics/ad_plans/day.json", query)
            items = answer.get("items") if isinstance(answer, dict) else None
            for item in items or []:
                for row in item.get("rows") or []:
                    try:
                        spent = float(str((row.get("base") or {}).get("spent", "0")))
                    except ValueError:
                        continue
                    if spent > 0:
                        yield int(item["id"]), str(row["date"]), spent


def _message(answer: Any) -> str:
    if isinstance(answer, dict):
        inner = answer.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else answer
        return str(error.get("message") or error.get("code") or "")[:200]
    return ""


def spend_rows(
    api: VkAds, date1: date, date2: date, *, currency: str, source: str, medium: str, campaign_by: str
) -> list[dict[str, Any]]:
    """``ad_spend`` messages of the account's campaigns for the period."""
    plans = api.ad_plans()
    stamp = datetime.now(UTC).isoformat()
    return [
        {
            "type": "ad_spend",
            "date": day,
            "source": source,
            "medium": medium,
            "campaign": (plans[pid] if campaign_by == "name" else str(pid))[:256],
            "cost": round(cost, 2),
            "currency": currency,
            "account": api.client_id[:128],
            "reported_at": stamp,
        }
        for pid, day, cost in api.daily(sorted(plans), date1, date2)
    ]
