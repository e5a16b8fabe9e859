"""`idstream connect metrica`: the Logs API flow against a fake API on loopback, into the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas import decode_touch
from streams.pullers.metrica import parse_tsv, visit_events
from tests.conftest import http_server
from tests.e2e import ROOT, Deployment

FIXTURES = Path(__file__).parent / "fixtures" / "metrica"
TOKEN = "y0_metrica-oauth-token-0123456789"  # noqa: S105 - a test token
REQUEST_ID = 34567890


class FakeLogsApi:
    """The Logs API of counter 123: a request is created, is 'created' on the first status check and
    'processed' with two parts after it. ``broken``: part 1 answers 500 until repaired."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.broken = False
        self.checks = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str) -> None:
                path = self.path.partition("?")[0].removeprefix("/management/v1/counter/123")
                fake.calls[f"{method} {path}"] += 1
                if self.headers.get("Authorization") != f"OAuth {TOKEN}":
                    body = {"errors": [{"error_type": "unauthorized", "message": "Invalid oauth_token"}],
                            "code": 403, "message": "Invalid oauth_token"}  # fmt: skip
                    self._send(403, json.dumps(body).encode())
                    return
                if path == "/logrequests/evaluate":
                    answer: Any = {"log_request_evaluation": {"possible": True, "max_possible_day_quantity": 365}}
                elif method == "POST" and path == "/logrequests":
                    answer = {"log_request": {"request_id": REQUEST_ID, "counter_id": 123, "status": "created"}}
                elif path == f"/logrequest/{REQUEST_ID}":
                    fake.checks += 1
                    done = fake.checks > 1
                    parts = [{"part_number": 0, "size": 500}, {"part_number": 1, "size": 200}] if done else []
                    status = "processed" if done else "created"
                    answer = {"log_request": {"request_id": REQUEST_ID, "status": status, "parts": parts}}
                elif path.startswith(f"/logrequest/{REQUEST_ID}/part/"):
                    part = int(path.split("/")[4])
                    if part == 1 and fake.broken:
                        self._send(500, b'{"code": 500, "message": "backend_error"}')
                        return
                    self._send(200, (FIXTURES / f"logs-part-{part}.tsv").read_bytes(), "text/tab-separated-values")
                    return
                elif path == f"/logrequest/{REQUEST_ID}/clean":
                    answer = {"log_request": {"request_id": REQUEST_ID, "status": "cleaned_by_user"}}
                else:
                    self._send(404, b'{"code": 404, "message": "not_found"}')
                    return
                self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server, self.url = http_server(Handler)


@pytest.fixture
def logs_api() -> Iterator[FakeLogsApi]:
    fake = FakeLogsApi()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def connect(
    d: Deployment, api: FakeLogsApi, checkpoint: Path, *extra: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {**d.env, "IDSTREAM_METRICA_URL": api.url, "IDSTREAM_METRICA_TOKEN": token}
    args = ["connect", "metrica", "--counter", "123", "--from", "2026-11-01", "--to", "2026-11-02", "--poll", "0.05",
            "--retries", "0", "--checkpoint", str(checkpoint), *extra]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def visits(d: Deployment) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in d.read(d.topic) if v is not None]


def test_visits_become_site_visits_with_their_browser_time_and_utm() -> None:
    rows = list(parse_tsv((FIXTURES / "logs-part-0.tsv").read_text(encoding="utf-8")))
    events = list(visit_events(iter(rows), ZoneInfo("Europe/Moscow")))
    assert [e["event_id"] for e in events] == ["metrica-7263459823465987123", "metrica-7263459823465990001"]
    first = events[0]
    assert first["identifiers"] == [{"kind": "ym_client_id", "value": "1718023302884211532"}]
    assert first["occurred_at"] == "2026-11-01T10:23:45+03:00"
    assert first["utm"] == {"source": "yandex", "medium": "cpc", "campaign": "brand_msk", "content": "banner_a",
                            "term": "купить\tквартиру"}  # fmt: skip
    assert first["attributes"]["goals"] == "[123456,234567]"
    assert "utm" not in events[1]
    for event in events:  # what the stream's decoder takes
        decode_touch(json.dumps(event))


def test_a_pull_stopped_by_a_failing_part_resumes_without_a_second_request(
    kafka: str, redis_url: str, tmp_path: Path, logs_api: FakeLogsApi
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    checkpoint = tmp_path / "metrica-123.json"
    logs_api.broken = True
    first = connect(d, logs_api, checkpoint)
    assert first.returncode == 1, first.stderr
    assert "run again to resume" in first.stderr
    assert [e["event_id"] for e in visits(d)] == ["metrica-7263459823465987123", "metrica-7263459823465990001"]
    held = json.loads(checkpoint.read_text())
    assert (held["request_id"], held["parts_done"], held["finished"]) == (REQUEST_ID, [0], False)

    logs_api.broken = False
    second = connect(d, logs_api, checkpoint)
    assert second.returncode == 0, second.stderr
    assert logs_api.calls["POST /logrequests"] == 1  # resumed: no second log request
    assert logs_api.calls[f"GET /logrequest/{REQUEST_ID}/part/0/download"] == 1  # part 0 was not produced twice
    assert logs_api.calls[f"POST /logrequest/{REQUEST_ID}/clean"] == 1
    ids = [e["event_id"] for e in visits(d)]
    assert ids == ["metrica-7263459823465987123", "metrica-7263459823465990001", "metrica-7263459823466000777"]
    assert json.loads(checkpoint.read_text())["finished"] is True
    assert TOKEN not in first.stderr + second.stderr
    d.stop()


def test_a_refused_token_is_a_clear_error_that_never_shows_the_token(
    kafka: str, redis_url: str, tmp_path: Path, logs_api: FakeLogsApi
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    wrong = "y0_wrong-token-0123456789abcdef"
    result = connect(d, logs_api, tmp_path / "cp.json", token=wrong)
    assert result.returncode == 2
    assert "Invalid oauth_token" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert visits(d) == []
    assert os.path.exists(tmp_path / "cp.json") is False
    d.stop()
