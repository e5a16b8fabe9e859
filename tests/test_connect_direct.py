"""`idstream connect direct`: the Reports API's offline flow against a fake Direct on loopback, into the broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from schemas.spend import decode_spend
from streams.app import ensure_topics
from streams.settings import Settings
from tests.conftest import http_server
from tests.e2e import ROOT, Deployment

FIXTURES = Path(__file__).parent / "fixtures" / "direct"
TOKEN = "y0_direct-oauth-token-0123456789"  # noqa: S105 - a test token


class FakeDirect:
    """The Reports service: the report is queued (201), then built (202), then ready (200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    error = {"error": {"request_id": "1", "error_code": 53, "error_string": "Authorization error",
                                      "error_detail": "Invalid OAuth token"}}  # fmt: skip
                    payload = json.dumps(error).encode()
                    self.send_response(400)
                elif len(fake.requests) < 3:
                    payload = b""
                    self.send_response(201 if len(fake.requests) == 1 else 202)
                    self.send_header("retryIn", "0")
                else:
                    payload = (FIXTURES / "campaign-performance.tsv").read_bytes()
                    self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server, self.url = http_server(Handler)
        self.url += "/json/v5/reports"


@pytest.fixture
def direct() -> Iterator[FakeDirect]:
    fake = FakeDirect()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def run(d: Deployment, fake: FakeDirect, tmp: Path, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**d.env, "IDSTREAM_DIRECT_URL": fake.url, "IDSTREAM_DIRECT_TOKEN": token,
           "IDSTREAM_SPEND_TOPIC": spend_topic(d)}  # fmt: skip
    args = ["connect", "direct", "--login", "client-1", "--from", "2026-11-01", "--to", "2026-11-02",
            "--checkpoint", str(tmp / "direct.json")]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def spend_topic(d: Deployment) -> str:
    """The deployment's own spend topic, created beside its other topics."""
    topic = d.settings.touch_topics[0].replace("touches", "spend")
    ensure_topics(d.settings.model_copy(update={"spend_topic": topic}), d.kafka)
    return topic


def test_an_offline_report_is_waited_for_and_each_campaign_day_becomes_spend(
    kafka: str, redis_url: str, tmp_path: Path, direct: FakeDirect
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    result = run(d, direct, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(direct.requests) == 3  # 201 queued, 202 building, 200 ready: the same request each time
    bodies = [body for _, body in direct.requests]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["params"]["ReportName"].startswith("idstream_spend_2026-11-01_2026-11-02_")
    headers = direct.requests[0][0]
    assert (headers["client-login"], headers["returnmoneyinmicros"]) == ("client-1", "false")
    rows = [decode_spend(v) for _, v in d.read(spend_topic(d)) if v is not None]
    assert [(str(r.date), r.campaign, r.cost, r.currency) for r in rows] == [
        ("2026-11-01", "brand_msk", 4310.25, "RUB"),
        ("2026-11-01", "retarget_rsya", 2987.1, "RUB"),
        ("2026-11-02", "brand_msk", 3900.0, "RUB"),
    ]  # the placeholder cost is skipped
    assert {(r.source, r.medium, r.account) for r in rows} == {("yandex", "cpc", "client-1")}
    assert json.loads((tmp_path / "direct.json").read_text()) == {"last_finished": "2026-11-02"}
    assert TOKEN not in result.stderr + result.stdout
    d.stop()


def test_a_refused_token_is_named_and_lands_nothing(
    kafka: str, redis_url: str, tmp_path: Path, direct: FakeDirect
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    wrong = "y0_wrong-direct-token-0123456789"
    result = run(d, direct, tmp_path, token=wrong)
    assert result.returncode == 2
    assert "Invalid OAuth token" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert d.read(spend_topic(d)) == []
    assert not (tmp_path / "direct.json").exists()
    assert Settings().spend_topic == "ad.spend"  # the tests used their own topic
    d.stop()
