"""The call report from the warehouse: answered, missed, returned in time, by channel, day and hour."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine

from identity import CallInfo, Normalizer, ResolutionPolicy, Touch, Utm
from sinks.warehouse.calls import call_report, render_calls
from sinks.warehouse.report import ReportSettings
from streams.lookup_api import ApiConfig
from tests.conftest import serve_api, touch
from tests.test_warehouse import Pipeline, postgres_server, warehouse  # noqa: F401 - the warehouse fixtures

ANNA, BORIS = ("phone", "+7 916 100-00-01"), ("phone", "+7 916 100-00-02")
VERA, GLEB = ("phone", "+7 916 100-00-03"), ("phone", "+7 916 100-00-04")
CPC, ORGANIC = Utm("yandex", "cpc", "brand"), Utm("google", "organic")


def call(eid: str, minute: float, who: tuple[str, str], status: str | None, *, wait: float | None = None,
         utm: Utm | None = None, dialled: str | None = None) -> Touch:  # fmt: skip
    base = touch(eid, minute, who, type="call", source="calltouch", utm=utm)
    return dataclasses.replace(base, call=CallInfo(status, wait, None, dialled) if status else None)


def calls() -> list[Touch]:
    """T0 is 2026-11-01 09:00 UTC (12:00 in Moscow)."""
    return [
        call("a1", 0, ANNA, "missed", wait=40, utm=CPC),  # returned 20 minutes later by a callback
        call("a2", 20, ANNA, "answered", wait=0),
        call("b1", 60, BORIS, "missed", wait=65, utm=ORGANIC),  # returned only after 60 minutes
        call("b2", 120, BORIS, "answered", wait=5, utm=ORGANIC),
        call("v1", 300, VERA, "answered", wait=12, utm=CPC),
        call("g1", 301, GLEB, None),  # a producer that sends no outcome
    ]


@pytest.fixture
def fed(redis_client: redis.Redis, warehouse: Engine) -> Engine:  # noqa: F811
    Pipeline(redis_client, warehouse).feed(calls())
    return warehouse


def test_missed_calls_returned_in_time_are_counted_by_channel_and_hour(fed: Engine) -> None:
    report = call_report(fed, tz="Europe/Moscow", within=30).to_dict()
    total = report["total"]
    assert (total["calls"], total["answered"], total["missed"]) == (6, 3, 2)
    assert (total["missed_known"], total["returned"], total["returned_share"]) == (2, 1, 0.5)
    assert total["avg_wait_s"] == pytest.approx((40 + 0 + 65 + 5 + 12) / 5, abs=0.05)
    channels = {(c["source"], c["medium"]): c for c in report["channels"]}
    assert (channels[("yandex", "cpc")]["missed"], channels[("yandex", "cpc")]["returned"]) == (1, 1)
    assert (channels[("google", "organic")]["missed"], channels[("google", "organic")]["returned"]) == (1, 0)
    hours = {h["hour"]: h for h in report["hours"]}  # Moscow hours
    assert (hours[12]["calls"], hours[12]["missed"]) == (2, 1)
    assert (hours[13]["missed"], hours[14]["answered"], hours[17]["calls"]) == (1, 1, 2)
    assert [d["day"] for d in report["days"]] == ["2026-11-01"]
    longer = call_report(fed, tz="Europe/Moscow", within=90).to_dict()["total"]
    assert longer["returned_share"] == 1.0
    assert "50% of the missed returned within 30 min" in render_calls(call_report(fed, tz="Europe/Moscow"))


def test_days_are_the_report_zones(fed: Engine) -> None:
    one_day = call_report(fed, start=date(2026, 11, 1), end=date(2026, 11, 1), tz="Europe/Moscow")
    assert one_day.total.calls == 6
    utc_day_before = call_report(fed, start=date(2026, 10, 31), end=date(2026, 10, 31), tz="Europe/Moscow")
    assert utc_day_before.total.calls == 0


def test_the_api_serves_the_call_report_to_a_lookup_token(fed: Engine, redis_url: str) -> None:
    token = "report-token-for-tests-0123456789"  # noqa: S105 - a test token
    url = fed.url.render_as_string(hide_password=False)
    config = ApiConfig(redis_url, ResolutionPolicy(), Normalizer(), "idstream", (token.encode(),), url,
                       ReportSettings(tz="Europe/Moscow"))  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/v1/reports/calls")).status == 401
        answer = await client.get("/v1/reports/calls?within=30&from=2026-11-01&to=2026-11-01", headers=auth)
        assert answer.status == 200
        body = await answer.json()
        assert (body["total"]["missed"], body["total"]["returned"], body["timezone"]) == (2, 1, "Europe/Moscow")
        for query in ("?within=soon", "?from=yesterday"):
            assert (await client.get("/v1/reports/calls" + query, headers=auth)).status == 400, query

    serve_api(config, scenario)


def test_calls_without_utm_take_the_channel_of_the_tracking_number_they_dialled(
    redis_client: redis.Redis,
    warehouse: Engine,  # noqa: F811
) -> None:
    policy = ResolutionPolicy(tracking_numbers={"+7 (495) 111-22-33": "yandex/cpc/brand", "84952223344": "avito/cpa"})
    dialled = [
        call("t1", 0, ANNA, "answered", wait=5, dialled="74951112233"),
        call("t2", 1, BORIS, "missed", wait=30, dialled="+7 495 222-33-44"),
        call("t3", 2, VERA, "answered", wait=1, dialled="+7 495 999-99-99"),
        call("t4", 3, GLEB, "answered", wait=1, dialled="74951112233", utm=ORGANIC),
    ]
    pipeline = Pipeline(redis_client, warehouse, policy)
    pipeline.feed(dialled)
    channels = {(c["source"], c["medium"]): c["calls"] for c in call_report(warehouse).to_dict()["channels"]}
    # a known number names the channel; an unknown one stays direct; UTM tags win over the number
    assert channels == {("yandex", "cpc"): 1, ("avito", "cpa"): 1, ("(direct)", "(none)"): 1, ("google", "organic"): 1}
    anna = pipeline.store.lookup_raw(*ANNA)
    assert anna is not None
    profile = pipeline.store.profile(anna)
    assert profile is not None
    assert profile["attribution"]["lead_at"] is not None
    assert {"source": "yandex", "medium": "cpc", "campaign": "brand"}.items() <= profile["attribution"]["models"][
        "first"
    ][0].items()


def test_a_tracking_number_table_with_a_bad_entry_is_refused() -> None:
    from identity import ConfigurationError

    with pytest.raises(ConfigurationError, match="source/medium"):
        ResolutionPolicy(tracking_numbers={"+7 495 111-22-33": "yandex"})
