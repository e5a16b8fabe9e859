"""`idstream connect vkads`: client credentials kept and refreshed, campaigns paged, cost per day, into the broker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from schemas.spend import decode_spend
from streams.app import ensure_topics
from tests.conftest import http_server
from tests.e2e import ROOT, Deployment

SECRET = "vk-client-secret-0123456789"  # noqa: S105 - a test secret
PLANS = [{"id": 101, "name": "brand_msk"}, {"id": 102, "name": "retarget"}, {"id": 103, "name": "lookalike"}]
STATS = {
    101: [{"date": "2026-11-01", "base": {"shows": 15230, "clicks": 212, "spent": "3120.55"}},
          {"date": "2026-11-02", "base": {"shows": 0, "clicks": 0, "spent": "0.00"}}],
    103: [{"date": "2026-11-02", "base": {"shows": 900, "clicks": 7, "spent": 40}}],
}  # fmt: skip


class FakeVkAds:
    """ads.vk.com: tokens (``cap``: the five-token limit is reached until tokens are deleted), ad plans in pages of
    two, daily statistics."""

    def __init__(self, *, cap: bool = False) -> None:
        self.calls: Counter[str] = Counter()
        self.cap = cap
        self.tokens = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                path = self.path.partition("?")[0]
                fake.calls[f"{path} {form.get('grant_type', '')}".strip()] += 1
                if form.get("client_secret") != SECRET:
                    return self._send(
                        401, {"error": {"code": "invalid_client", "message": "Client credentials are invalid"}}
                    )
                if path == "/api/v2/oauth2/token/delete.json":
                    fake.cap = False
                    return self._send(200, {})
                if form["grant_type"] == "client_credentials" and fake.cap:
                    return self._send(403, {"error": {"code": "token_limit_exceeded", "message": "Too many tokens"}})
                fake.tokens += 1
                return self._send(
                    200,
                    {
                        "access_token": f"tok-{fake.tokens}",
                        "token_type": "bearer",
                        "expires_in": "86400",
                        "refresh_token": f"ref-{fake.tokens}",
                    },
                )

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                q = dict(urllib.parse.parse_qsl(query))
                fake.calls[path] += 1
                if not (self.headers.get("Authorization") or "").startswith("Bearer tok-"):
                    return self._send(401, {"error": {"code": "invalid_token", "message": "bad token"}})
                if path == "/api/v2/ad_plans.json":
                    offset = int(q.get("offset", "0"))
                    return self._send(200, {"count": len(PLANS), "offset": offset, "items": PLANS[offset : offset + 2]})
                if path == "/api/v2/statistics/ad_plans/day.json":
                    ids = [int(i) for i in q["id"].split(",")]
                    items = [{"id": i, "rows": STATS.get(i, []), "total": {}} for i in ids]
                    return self._send(200, {"items": items, "total": {}})
                return self._send(404, {"error": {"code": "not_found", "message": "no such resource"}})

            def log_message(self, *args: Any) -> None:
                pass

        self.server, self.url = http_server(Handler)


@pytest.fixture
def vk() -> Iterator[FakeVkAds]:
    fake = FakeVkAds()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def run(d: Deployment, fake: FakeVkAds, tmp: Path, secret: str = SECRET) -> subprocess.CompletedProcess[str]:
    topic = d.settings.touch_topics[0].replace("touches", "spend")
    ensure_topics(d.settings.model_copy(update={"spend_topic": topic}), d.kafka)
    env = {**d.env, "IDSTREAM_VKADS_URL": fake.url, "IDSTREAM_VKADS_CLIENT_ID": "app-7",
           "IDSTREAM_VKADS_CLIENT_SECRET": secret, "IDSTREAM_SPEND_TOPIC": topic,
           "IDSTREAM_STATE_FILE": str(tmp / "runtime.json")}  # fmt: skip
    args = ["connect", "vkads", "--from", "2026-11-01", "--to", "2026-11-02"]
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_campaign_costs_land_and_the_token_is_kept_between_runs(
    kafka: str, redis_url: str, tmp_path: Path, vk: FakeVkAds
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    first = run(d, vk, tmp_path)
    assert first.returncode == 0, first.stderr
    topic = d.settings.touch_topics[0].replace("touches", "spend")
    rows = [decode_spend(v) for _, v in d.read(topic) if v is not None]
    assert [(str(r.date), r.campaign, r.cost, r.source, r.medium) for r in rows] == [
        ("2026-11-01", "brand_msk", 3120.55, "vk", "cpc"),
        ("2026-11-02", "lookalike", 40.0, "vk", "cpc"),
    ]  # zero days are not spend; the third campaign came on the second page
    assert vk.calls["/api/v2/ad_plans.json"] == 2
    token_file = tmp_path / "vkads-app-7.token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600  # readable by this user only
    second = run(d, vk, tmp_path)
    assert second.returncode == 0, second.stderr
    assert vk.calls["/api/v2/oauth2/token.json client_credentials"] == 1  # the kept token was used again
    assert SECRET not in first.stderr + second.stderr
    d.stop()


def test_at_the_token_cap_old_tokens_are_deleted_and_a_wrong_secret_is_named(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    d = Deployment(kafka, redis_url, tmp_path, partitions=1)
    fake = FakeVkAds(cap=True)
    try:
        capped = run(d, fake, tmp_path)
        assert capped.returncode == 0, capped.stderr
        assert fake.calls["/api/v2/oauth2/token/delete.json"] == 1
        wrong = run(d, fake, tmp_path / "other", secret="vk-wrong-secret-0123456789")  # noqa: S106
        assert wrong.returncode == 2
        assert "Client credentials are invalid" in wrong.stderr
        assert "vk-wrong-secret-0123456789" not in wrong.stderr
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        d.stop()
