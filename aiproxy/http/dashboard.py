"""The operator dashboard at ``/dashboard``: a login with the admin token, then one page that
reads four JSON endpoints and refreshes itself. Static files from ``aiproxy/dashboard/``, no
build step, nothing from another origin (the page's CSP says so)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from aiproxy.errors import ProxyError
from aiproxy.generation import Generation
from aiproxy.http.session import (
    COOKIE,
    DASHBOARD,
    LIFETIME,
    REVOKED,
    issue,
    session_id,
    set_cookie,
)
from aiproxy.http.state import RUNTIME, generation_of
from aiproxy.http.usage import LEDGER, usage
from aiproxy.observability import get_logger
from aiproxy.usage.ledger import Ledger, budget_cells, periods
from aiproxy.usage.prices import PriceBook
from aiproxy.usage.query import recent, traffic, windows
from aiproxy.usage.store import StoreUnavailable

__all__ = ["add_routes"]

log = get_logger("aiproxy.dashboard")

_ASSETS = {"dashboard.js": "text/javascript", "charts.js": "text/javascript",
           "dashboard.css": "text/css"}
# Everything from this origin only; no inline script, no frames, no form posting elsewhere.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_PAGE_HEADERS = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                 "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY",
                 "Referrer-Policy": "no-referrer"}
_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}
_FAILED_LOGIN_DELAY = 0.3  # slows guessing; the answer is the same for every wrong token


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files("aiproxy").joinpath("dashboard", name).read_bytes()


def _login_page(message: str = "") -> bytes:
    error = f'<p class="error" id="login-error">{html.escape(message)}</p>' if message else ""
    return _asset("login.html").replace(b"<!--error-->", error.encode())


def _see_other(location: str) -> web.Response:
    # Returned, not raised: the gateway records the status the client really got.
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _live(request: web.Request) -> Generation:
    generation = request.app[RUNTIME].current
    if generation is None:
        raise ProxyError(503, "the proxy is not ready", code="not_ready")
    return generation


async def page(request: web.Request) -> web.Response:
    if session_id(request, _live(request).settings.auth_token) is None:
        return _see_other(f"{DASHBOARD}/login")
    return web.Response(body=_asset("index.html"), headers=_PAGE_HEADERS)


async def login_form(request: web.Request) -> web.Response:
    if session_id(request, _live(request).settings.auth_token) is not None:
        return _see_other(DASHBOARD)
    return web.Response(body=_login_page(), headers=_PAGE_HEADERS)


async def login(request: web.Request) -> web.Response:
    """The form posts the token in its body (never in a URL); a session cookie comes back."""
    token = (await _form(request)).get("token")
    expected = _live(request).settings.auth_token
    if not isinstance(token, str) or not hmac.compare_digest(token.strip().encode(),
                                                             expected.encode()):
        log.warning("dashboard_login_failed", peer=request.remote)
        await asyncio.sleep(_FAILED_LOGIN_DELAY)
        return web.Response(status=401, body=_login_page("That is not the admin token."),
                            headers=_PAGE_HEADERS)
    response = _see_other(DASHBOARD)
    set_cookie(request, response, issue(expected))
    log.info("dashboard_login", peer=request.remote)
    return response


async def _form(request: web.Request) -> Mapping[str, Any]:
    """The posted form; a body that is not one (multipart without a boundary, a part header
    with a control character, bytes that are not UTF-8) is the client's 400, not a 500."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    try:
        return await request.post()
    # aiohttp's parsers: ValueError (UnicodeDecodeError too) from the form and multipart
    # readers, HttpProcessingError (InvalidHeader...) from a part's headers.
    except (ValueError, HttpProcessingError):
        raise ProxyError(400, "the login form could not be read", code="invalid_body") from None


async def logout(request: web.Request) -> web.Response:
    nonce = session_id(request, _live(request).settings.auth_token)
    revoked = request.app[REVOKED]
    now = time.time()
    for old in [n for n, until in revoked.items() if until < now]:
        del revoked[old]  # expired anyway
    if nonce is not None:
        revoked[nonce] = now + LIFETIME
    response = _see_other(f"{DASHBOARD}/login")
    response.del_cookie(COOKIE, path=DASHBOARD)
    return response


async def asset(request: web.Request) -> web.Response:
    name = request.path.rsplit("/", 1)[-1]
    return web.Response(body=_asset(name), headers={
        "Content-Type": f"{_ASSETS[name]}; charset=utf-8", "Cache-Control": "no-cache"})


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), headers=_JSON)


async def _read(ledger: Ledger, coro: Any) -> Any:
    try:
        return await coro
    except StoreUnavailable as exc:
        raise ProxyError(503, f"the usage database is unavailable: {exc}",
                         code="usage_unavailable", retry_after=5) from None


async def overview(request: web.Request) -> web.Response:
    """The models and groups: breaker state (this process), limits and what the ledger saw
    in their windows, recent error rate and latency, prices and budgets; the keys' budgets."""
    generation = generation_of(request)
    ledger = request.app[LEDGER]
    await ledger.flush_soon()
    now = time.time()
    seen = await _read(ledger, windows(ledger.store, now))
    recent_by_model = {r["model"]: r for r in await _read(
        ledger, traffic(ledger.store, now - 300.0, now + 1.0, 300.0, by_model=True))}
    config, router = generation.config, generation.router
    prices = PriceBook(config).prices
    day, month = periods(now)
    cells = [c for m in config.models for c in budget_cells(f"model:{m.name}", m.budget, day,
                                                             month)]
    cells += [c for k in config.keys for c in budget_cells(f"key:{k.name}", k.budget, day,
                                                           month)]
    spent = await ledger.spent(cells)
    member_of: dict[str, list[str]] = {}
    for group, members in router.groups.items():
        for member in members:
            member_of.setdefault(member, []).append(group)
    models = []
    for model in config.models:
        route = router.routes[model.name]
        last = recent_by_model.get(model.name, {})
        requests = last.get("requests", 0)
        price = prices.get(model.name)
        models.append({
            "name": model.name, "provider": model.provider,
            "upstream_model": model.upstream_model_id, "priority": model.priority,
            "groups": member_of.get(model.name, []),
            "breaker": route.breaker.state.value,
            "limits": {k: getattr(model, k) for k in (
                "requests_per_minute", "requests_per_hour", "requests_per_day",
                "tokens_per_minute", "tokens_per_day") if getattr(model, k)},
            "seen": seen.get(model.name, {}),
            "recent": {"requests": requests, "errors": last.get("errors", 0),
                       "error_rate": (last.get("errors", 0) / requests) if requests else None,
                       "p50_ms": last.get("p50_ms"), "p95_ms": last.get("p95_ms")},
            "price": None if price is None else {
                "input": price.input, "output": price.output,
                "cached_input": price.cached_input, "image": price.image},
            "budget": _budget(f"model:{model.name}", model.budget, spent, day, month),
        })
    keys = [{"name": k.name, "models": list(k.models),
             "budget": _budget(f"key:{k.name}", k.budget, spent, day, month)}
            for k in config.keys]
    return _json({"now": now, "generation": generation.number, "models": models,
                  "groups": {g: list(m) for g, m in router.groups.items()}, "keys": keys,
                  "ledger": ledger.status()})


def _budget(scope: str, budget: Any, spent: dict[tuple[str, str], tuple[float, int]],
            day: str, month: str) -> dict[str, Any] | None:
    if budget.unlimited:
        return None
    today, this_month = spent.get((scope, day), (0.0, 0)), spent.get((scope, month), (0.0, 0))
    return {"daily": budget.daily, "monthly": budget.monthly,
            "daily_tokens": budget.daily_tokens, "monthly_tokens": budget.monthly_tokens,
            "spent_today": today[0], "spent_month": this_month[0],
            "tokens_today": today[1], "tokens_month": this_month[1]}


async def live_traffic(request: web.Request) -> web.Response:
    """The last hour, per minute: requests, errors, latency percentiles, spend, tokens."""
    ledger = request.app[LEDGER]
    await ledger.flush_soon()
    now = time.time()
    start = (now // 60.0) * 60.0 - 59 * 60.0
    series = await _read(ledger, traffic(ledger.store, start, now + 1.0, 60.0))
    return _json({"start": start, "bucket_seconds": 60, "series": series})


async def last_requests(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ProxyError(400, "'limit' must be an integer from 1 to 500", param="limit")
    ledger = request.app[LEDGER]
    await ledger.flush_soon()
    return _json({"requests": await _read(ledger, recent(ledger.store, int(raw)))})


def add_routes(app: web.Application) -> None:
    app[REVOKED] = {}
    app.router.add_get(DASHBOARD, page)
    app.router.add_get(f"{DASHBOARD}/login", login_form)
    app.router.add_post(f"{DASHBOARD}/login", login)
    app.router.add_post(f"{DASHBOARD}/logout", logout)
    for name in _ASSETS:
        app.router.add_get(f"{DASHBOARD}/static/{name}", asset)
    app.router.add_get(f"{DASHBOARD}/api/overview", overview)
    app.router.add_get(f"{DASHBOARD}/api/traffic", live_traffic)
    app.router.add_get(f"{DASHBOARD}/api/usage", usage)
    app.router.add_get(f"{DASHBOARD}/api/recent", last_requests)
