"""The dashboard: its session (cookie flags, no token in a URL, logout), its JSON, and the page
itself in a real browser (Debian's chromium driven by Playwright: nothing is downloaded)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import TOKEN, openai_model

CHROMIUM = "/usr/bin/chromium"
KEY = "dash-team-key-0123456789"
MSG = [{"role": "user", "content": "hi"}]
SOME = re.compile(r"^[1-9][0-9]*$")
AT_LEAST_TWO = re.compile(r"^([2-9]|[1-9][0-9]+)$")


def dashboard_config(url: str) -> dict:
    return {"models": [openai_model("openai/gpt-4o", url, model_size="BIG",
                                    requests_per_minute=100),
                       openai_model("openai/gpt-4o-mini", url, model_size="SMALL",
                                    budget={"daily": 5}),
                       openai_model("broken", url)],
            "keys": [{"name": "team-a", "key": KEY}]}


def browser_like() -> aiohttp.ClientSession:
    """A client that keeps cookies from 127.0.0.1, as a browser does."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(proxy, http: aiohttp.ClientSession, token: str = TOKEN) -> aiohttp.ClientResponse:
    return await http.post(proxy.url("/dashboard/login"), data={"token": token},
                           allow_redirects=False)


class TestSession:
    async def test_login_sets_a_strict_http_only_cookie_and_no_token_in_any_url(
            self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy(dashboard_config(url))
        async with browser_like() as http:
            await self.walk_through(proxy, http)

    async def walk_through(self, proxy, http):
        async with http.get(proxy.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/dashboard/login"
        async with http.get(proxy.url("/dashboard/login")) as resp:
            form = await resp.text()
            assert 'method="post"' in form and TOKEN not in form
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        resp = await login(proxy, http)
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/dashboard" in cookie and TOKEN not in cookie
        async with http.get(proxy.url("/dashboard")) as resp:
            assert resp.status == 200 and "<table id=\"models\">" in await resp.text()
        async with http.get(proxy.url("/dashboard/api/overview")) as resp:
            assert resp.status == 200
            overview = await resp.json()
        names = [m["name"] for m in overview["models"]]
        assert names == ["openai/gpt-4o", "openai/gpt-4o-mini", "broken"]
        assert overview["models"][0]["breaker"] == "closed"
        assert overview["models"][0]["limits"] == {"requests_per_minute": 100}
        assert overview["models"][1]["budget"]["daily"] == 5
        assert overview["groups"] == {"BIG": ["openai/gpt-4o"], "SMALL": ["openai/gpt-4o-mini"]}
        # Logging out ends the session even for a copy of the cookie.
        stolen = {c.key: c.value for c in http.cookie_jar}
        async with http.post(proxy.url("/dashboard/logout"),
                                   allow_redirects=False) as resp:
            assert resp.status == 303
        async with aiohttp.ClientSession(cookies=stolen) as other:
            async with other.get(proxy.url("/dashboard/api/overview")) as resp:
                assert resp.status == 401

    async def test_wrong_tokens_and_other_credentials_are_refused(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}],
                                   "keys": [{"name": "team-a", "key": KEY}]})
        for token in ("wrong", KEY, ""):
            resp = await login(proxy, proxy.http, token)
            assert resp.status == 401
            assert "Set-Cookie" not in resp.headers
            assert "not the admin token" in await resp.text()
        # The JSON needs the session: a bearer token, even the admin's, is not one.
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            async with proxy.http.get(proxy.url("/dashboard/api/recent"),
                                      headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "login_required"
        # A body that is no form (found by tests/test_fuzz.py: multipart without a boundary
        # was a 500) is the client's 400, and no session.
        broken_part = (b'--b\r\nContent-Disposition: form-data; name="\x7f\x1a"\r\n\r\nx\r\n'
                       b"--b--\r\n")
        for content_type, data in (("multipart/form-data", b"token=" + TOKEN.encode()),
                                   ("multipart/form-data; boundary=b", broken_part),
                                   ("application/x-www-form-urlencoded", b"token=\xff\xfe")):
            async with proxy.http.post(proxy.url("/dashboard/login"), data=data,
                                       headers={"Content-Type": content_type},
                                       allow_redirects=False) as resp:
                assert resp.status == 400, content_type
                assert (await resp.json())["error"]["code"] == "invalid_body"
                assert "Set-Cookie" not in resp.headers
        # A forged cookie is no session either.
        async with aiohttp.ClientSession(cookies={"aiproxy_session": "9999999999.x.y"}) as s:
            async with s.get(proxy.url("/dashboard/api/overview")) as resp:
                assert resp.status == 401

    async def test_recent_requests_and_traffic_json(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["broken"] = "500"
        proxy = await start_proxy(dashboard_config(url))
        await proxy.client.chat.completions.create(model="BIG", messages=MSG)
        async with browser_like() as http:
            (await login(proxy, http)).close()
            async with http.get(proxy.url("/dashboard/api/recent?limit=5")) as resp:
                (last,) = (await resp.json())["requests"]
            async with http.get(proxy.url("/dashboard/api/traffic")) as resp:
                series = (await resp.json())["series"]
            async with http.get(proxy.url("/dashboard/api/recent?limit=0")) as resp:
                assert resp.status == 400
        assert (last["requested"], last["tried"], last["status"]) == (
            "BIG", ["openai/gpt-4o"], 200)
        assert "messages" not in last and "'hi'" not in str(last)  # no prompt, ever
        assert sum(r["requests"] for r in series) == 1


async def test_the_dashboard_in_a_real_browser(start_proxy, fake_upstream, tmp_path: Path):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                    "chromium); this test must run, not skip")
    fake, url = fake_upstream
    fake.defaults["broken"] = "500"
    proxy = await start_proxy(dashboard_config(url))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A wrong token is refused, and the form says so.
            await page.goto(proxy.url("/dashboard"))
            assert page.url.endswith("/dashboard/login")
            await page.fill("#login-token", "not-the-token")
            await page.click("#login-submit")
            await page.wait_for_selector("#login-error")
            assert "not the admin token" in await page.inner_text("#login-error")
            # The admin token logs in; the token never shows in a URL.
            await page.fill("#login-token", TOKEN)
            await page.click("#login-submit")
            await page.wait_for_selector("#models tbody tr")
            assert page.url == proxy.url("/dashboard") and TOKEN not in page.url
            rows = await page.locator("#models tbody tr").all_inner_texts()
            assert [r.split("\t")[0] for r in rows] == ["openai/gpt-4o", "openai/gpt-4o-mini",
                                                        "broken"]
            assert "closed" in rows[0] and "rpm 0/100" in rows[0] and "BIG" in rows[0]
            assert await page.locator("#recent tbody tr").count() == 0
            # Traffic, through the openai SDK as clients send it; one request fails.
            for i in range(6):
                await proxy.client.chat.completions.create(
                    model=("BIG", "SMALL")[i % 2], messages=MSG)
            with pytest.raises(Exception, match="all candidates failed"):
                await proxy.client.chat.completions.create(model="broken", messages=MSG)
            # The page updates itself: the last requests, the charts, the model table.
            # (Playwright's expect polls without eval, which the page's CSP forbids.)
            await expect(page.locator("#recent tbody tr")).to_have_count(7, timeout=15000)
            first = await page.locator("#recent tbody tr").first.inner_text()
            assert "broken → broken → broken → broken" in first and "502" in first
            await expect(page.locator("#chart-spend-model")).to_have_attribute(
                "data-points", AT_LEAST_TWO, timeout=15000)
            await expect(page.locator("#chart-rps")).to_have_attribute("data-points", SOME)
            assert await page.locator("#chart-spend-key rect.bar").count() >= 1
            assert await page.locator("#chart-latency path.series").count() == 3
            await expect(page.locator("#models tbody tr").first).to_contain_text("rpm 3/100")
            spend = await page.inner_text("#kpi-spend")
            assert spend.startswith("$") and spend != "$0"
            # Another range redraws the usage charts.
            await page.click("#ranges button[data-range='1h']")
            await expect(page.locator("#chart-tokens-model")).to_have_attribute(
                "data-points", AT_LEAST_TWO)
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            assert errors == []
            # Logging out leaves the page unusable until the next login.
            await page.click("#logout")
            await page.wait_for_selector("#login-token")
        finally:
            await browser.close()
