"""Yandex Metrica Logs API: the counter's visits as ``site_visit`` events, resumable from a checkpoint.

The flow is the API's own: evaluate the period, create a log request, poll it until ``processed``, download
each part (TSV with a header row), then clean it. The checkpoint (a small JSON file) records the request id
as soon as it exists and each part once every visit in it was acknowledged by the broker, so a run that stops
anywhere resumes without a second request and without producing a part twice; a finished period is recorded
too, and the next run starts two days before its end (Metrica keeps updating recent sessions; re-sent visits
are the same events, by visit id).

Each visit: ``event_id`` ``metrica-<visitID>``, ``ym_client_id`` (``ym:s:clientID``), the time
(``ym:s:dateTime``, in the counter's zone), UTM tags (``ym:s:UTMSource``.. or ``ym:s:lastUTMSource``..), the
entry page, the goals reached and the traffic source as attributes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from identity import IdstreamError, InvalidInput, TransientError

__all__ = [
    "DEFAULT_FIELDS",
    "Checkpoint",
    "LogsApi",
    "MetricaError",
    "Unavailable",
    "parse_tsv",
    "visit_events",
]

DEFAULT_FIELDS = (
    "ym:s:visitID",
    "ym:s:clientID",
    "ym:s:dateTime",
    "ym:s:startURL",
    "ym:s:lastTrafficSource",
    "ym:s:UTMSource",
    "ym:s:UTMMedium",
    "ym:s:UTMCampaign",
    "ym:s:UTMContent",
    "ym:s:UTMTerm",
    "ym:s:goalsID",
)
_UTM = ("Source", "Medium", "Campaign", "Content", "Term")
_UNESCAPE = {"t": "\t", "n": "\n", "\\": "\\", "'": "'", "0": "\0", "r": "\r"}
_FAILED = frozenset({"canceled", "processing_failed", "cleaned_by_user", "cleaned_automatically_as_too_old"})


class MetricaError(InvalidInput):
    """The Logs API refused the request (a wrong counter, token, field or period): retrying will not help."""

    code = "metrica_refused"


class Unavailable(TransientError):
    """The Logs API did not answer, or asked to wait (quota, backend error): the run can be resumed."""

    code = "metrica_unavailable"


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(_UNESCAPE.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_tsv(text: str) -> Iterator[dict[str, str]]:
    """Rows of a Logs API part by header name (the API may order columns its own way); rows whose column count
    is not the header's are skipped, as the API's own loader does."""
    lines = text.split("\n")
    header = lines[0].split("\t")
    for line in lines[1:]:
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) == len(header):
            yield {name: _unescape(cell) for name, cell in zip(header, cells, strict=True)}


def _utm(row: dict[str, str]) -> dict[str, str]:
    out = {}
    for tag in _UTM:
        value = row.get(f"ym:s:UTM{tag}") or row.get(f"ym:s:lastUTM{tag}") or ""
        if value.strip():
            out[tag.lower()] = value.strip()[:1024]
    return out


def visit_events(rows: Iterator[dict[str, str]], zone: ZoneInfo) -> Iterator[dict[str, Any]]:
    """Wire-format ``site_visit`` events of visits (a visit without a client id is not anybody's: skipped)."""
    for row in rows:
        visit, client = row.get("ym:s:visitID", ""), row.get("ym:s:clientID", "")
        if not visit.isdigit() or not client.isdigit() or int(client) == 0:
            continue
        try:
            moment = datetime.strptime(row.get("ym:s:dateTime", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        except ValueError:
            continue
        attributes: dict[str, Any] = {}
        page = row.get("ym:s:startURL", "").strip()
        if page:
            attributes["page"] = page[:4096]
        goals = row.get("ym:s:goalsID", "").strip()
        if goals and goals != "[]":
            attributes["goals"] = goals[:4096]
        traffic = row.get("ym:s:lastTrafficSource", "").strip()
        if traffic:
            attributes["traffic_source"] = traffic[:64]
        event: dict[str, Any] = {
            "event_id": f"metrica-{visit}",
            "type": "site_visit",
            "occurred_at": moment.isoformat(),
            "source": "metrica",
            "identifiers": [{"kind": "ym_client_id", "value": client}],
            "attributes": attributes,
        }
        utm = _utm(row)
        if utm:
            event["utm"] = utm
        yield event


@dataclass
class Checkpoint:
    """Where a pull stands; written atomically after each step."""

    counter: str
    date1: str
    date2: str
    fields: list[str]
    request_id: int | None = None
    parts_done: list[int] = field(default_factory=list)
    finished: bool = False
    #: the end of the last finished period (the next run starts two days before it)
    last_finished: str | None = None

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise MetricaError(f"the checkpoint {path} is unreadable ({exc}); move it away to start over") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        os.replace(tmp, path)

    def same_pull(self, counter: str, date1: str, date2: str, fields: list[str]) -> bool:
        return (self.counter, self.date1, self.date2, self.fields) == (counter, date1, date2, fields)


class LogsApi:
    """The Logs API of one counter (``Authorization: OAuth <token>``; the token is never logged)."""

    def __init__(self, base_url: str, token: str, counter: str, *, timeout: float = 60.0, retries: int = 5) -> None:
        self.base = base_url.rstrip("/") + f"/management/v1/counter/{urllib.parse.quote(counter)}"
        self._token = token
        self.timeout, self.retries = timeout, retries

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> bytes:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        delay = 1.0
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(  # noqa: S310 - the operator's configured https URL
                url,
                method=method,
                headers={"Authorization": f"OAuth {self._token}"},
                data=b"" if method == "POST" else None,
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                body = exc.read()[:2000].decode("utf-8", "replace")
                if exc.code in (420, 429) or exc.code >= 500:
                    if attempt < self.retries:
                        time.sleep(delay)
                        delay = min(delay * 2, 30.0)
                        continue
                    raise Unavailable(f"the Logs API answered {exc.code} {path}: {_message(body)}") from None
                raise MetricaError(f"the Logs API refused {method} {path} ({exc.code}): {_message(body)}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                raise Unavailable(f"the Logs API is unreachable ({type(exc).__name__})") from None
        raise Unavailable("the Logs API is unreachable")  # pragma: no cover - the loop returns or raises

    def _json(self, method: str, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            body = json.loads(self._call(method, path, params))
        except ValueError:
            raise Unavailable(f"the Logs API answered {path} with something that is not JSON") from None
        if not isinstance(body, dict):
            raise Unavailable(f"the Logs API answered {path} with something that is not an object")
        return body

    def evaluate(self, params: dict[str, str]) -> dict[str, Any]:
        return dict(self._json("GET", "/logrequests/evaluate", params).get("log_request_evaluation") or {})

    def create(self, params: dict[str, str]) -> dict[str, Any]:
        return dict(self._json("POST", "/logrequests", params).get("log_request") or {})

    def status(self, request_id: int) -> dict[str, Any]:
        return dict(self._json("GET", f"/logrequest/{request_id}").get("log_request") or {})

    def download(self, request_id: int, part: int) -> str:
        return self._call("GET", f"/logrequest/{request_id}/part/{part}/download").decode("utf-8", "replace")

    def clean(self, request_id: int) -> None:
        with contextlib.suppress(IdstreamError):  # already cleaned, or Metrica cleans it anyway
            self._call("POST", f"/logrequest/{request_id}/clean")


def _message(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200]
    return str(parsed.get("message", body))[:200] if isinstance(parsed, dict) else body[:200]


def period(checkpoint: Checkpoint | None, date1: str | None, date2: str | None, today: date) -> tuple[str, str]:
    """The period to pull: as given; else from two days before the last finished one (or yesterday) to
    yesterday (the Logs API has no data for today)."""
    end = date2 or (today - timedelta(days=1)).isoformat()
    if date1:
        return date1, end
    if checkpoint is not None and checkpoint.last_finished:
        start = date.fromisoformat(checkpoint.last_finished) - timedelta(days=2)
        return min(start.isoformat(), end), end
    return end, end


def pull(
    api: LogsApi,
    path: Path,
    counter: str,
    *,
    date1: str,
    date2: str,
    fields: list[str],
    deliver: Callable[[int, list[dict[str, Any]]], None],
    zone: ZoneInfo,
    poll: float = 20.0,
    patience: float = 3600.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Checkpoint:
    """Pull the period; ``deliver(part, events)`` must return only once every event is acknowledged (raise
    otherwise). The checkpoint at ``path`` is kept current; returns it, finished."""
    held = Checkpoint.load(path)
    if held is not None and held.same_pull(counter, date1, date2, fields) and not held.finished:
        point = held
        progress(f"resuming log request {point.request_id} ({len(point.parts_done)} parts done)")
    else:
        point = Checkpoint(counter, date1, date2, fields, last_finished=held.last_finished if held else None)
    params = {"date1": date1, "date2": date2, "source": "visits", "fields": ",".join(fields)}
    if point.request_id is None:
        evaluation = api.evaluate(params)
        if not evaluation.get("possible", False):
            days = evaluation.get("max_possible_day_quantity")
            raise MetricaError(
                f"Metrica cannot prepare {date1}..{date2} now (at most {days} days fit the quota): pull a "
                "shorter period, or clean old log requests"
            )
        created = api.create(params)
        if not isinstance(created.get("request_id"), int):
            raise Unavailable("the Logs API created a request without a request_id")
        point.request_id = int(created["request_id"])
        point.save(path)
        progress(f"log request {point.request_id} created")
    waited = 0.0
    while True:
        state = api.status(point.request_id)
        status = state.get("status")
        if status == "processed":
            break
        if status in _FAILED:
            point.request_id, point.parts_done = None, []
            point.save(path)
            raise MetricaError(f"log request ended as {status}; run again to ask anew")
        if waited >= patience:
            raise Unavailable(f"log request {point.request_id} still {status} after {patience:.0f} s; run again")
        progress(f"log request {point.request_id}: {status}, waiting")
        time.sleep(poll)
        waited += poll
    parts = sorted(int(p["part_number"]) for p in state.get("parts") or [] if isinstance(p, dict))
    for number in parts:
        if number in point.parts_done:
            continue
        events = list(visit_events(parse_tsv(api.download(point.request_id, number)), zone))
        deliver(number, events)
        point.parts_done.append(number)
        point.save(path)
        progress(f"part {number + 1}/{len(parts)}: {len(events)} visits")
    api.clean(point.request_id)
    point.finished, point.last_finished = True, date2
    point.save(path)
    return point
